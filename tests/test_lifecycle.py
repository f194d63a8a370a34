"""The life of a job against a real Redis and a real Celery worker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from kombu import Connection

from tests.support import (
    RedisServer,
    Worker,
    errand_env,
    make_app,
    runs,
    settle,
    submit,
    wait_for,
    wait_state,
)

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def broker_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Run every test here with Redis as the broker, then with the machine's RabbitMQ.

    On RabbitMQ the tests use a queue of their own, deleted afterwards; Redis
    stays the result store.
    """
    if request.param == "redis":
        yield {}
        return
    queue = f"errand-test-{uuid.uuid4().hex[:12]}"
    yield {"CELERY_BROKER_URL": RABBITMQ, "TASK_QUEUE": queue}
    delete_queue_and_exchange(queue)


def delete_queue_and_exchange(name: str) -> None:
    """Leave the shared RabbitMQ as it was: Celery declared both under the queue's name."""
    with Connection(RABBITMQ, connect_timeout=5) as connection:
        channel = connection.default_channel
        channel.queue_delete(name)
        channel.exchange_delete(name)


@pytest.fixture(scope="module")
def app(redis_server: RedisServer, broker_env: dict[str, str]) -> Flask:
    return make_app(redis_server.url, **broker_env)


@pytest.fixture(scope="module")
def worker(
    redis_server: RedisServer,
    broker_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with Worker(errand_env(redis_server.url, **broker_env), log, "lifecycle") as proc:
        yield proc


def test_progress_to_success(client: FlaskClient, worker: Worker) -> None:
    response = client.post(
        "/api/v1/tasks", json={"task": "demo.progress", "params": {"steps": 4, "delay": 0.4}}
    )
    assert response.status_code == 202
    assert response.headers["Retry-After"] == "1"
    task = response.json
    assert task["state"] == "PENDING"
    assert response.headers["Location"] == task["links"]["self"]
    url = task["links"]["self"]

    seen: list[str] = [task["state"]]
    currents: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = client.get(url)
        task = reply.json
        if not seen or seen[-1] != task["state"]:
            seen.append(task["state"])
        if task["state"] == "PROGRESS":
            currents.append(task["progress"]["current"])
            assert task["progress"]["total"] == 4
            assert reply.headers["Retry-After"] == "1"
        if task["state"] == "SUCCESS":
            break
        time.sleep(0.02)
    assert seen[0] == "PENDING"
    assert seen[-1] == "SUCCESS"
    assert "STARTED" in seen and "PROGRESS" in seen
    assert currents == sorted(currents) and len(set(currents)) >= 2
    assert task["result"] == {"steps": 4}
    assert task["error"] is None
    # The last progress stays, at 100 %: a bar that saw 3 of 4 ends at 4 of 4.
    assert task["progress"] == {
        "current": 4,
        "total": 4,
        "percent": 100.0,
        "message": "step 4 of 4",
    }
    assert task["created_at"] <= task["started_at"] <= task["finished_at"]
    assert task["finished_at"].endswith("Z")
    assert "Retry-After" not in client.get(url).headers


def test_failure_reports_type_and_message(client: FlaskClient, worker: Worker) -> None:
    task = wait_state(client, submit(client, "test.echo", {"value": 7, "fail": True}))
    assert task["state"] == "FAILURE"
    assert task["error"] == {"type": "ValueError", "message": "asked to fail with 7"}
    assert task["result"] is None
    assert "Traceback" not in str(task)
    assert task["finished_at"]


def test_retry_then_success(client: FlaskClient, worker: Worker, redis_server: RedisServer) -> None:
    url = submit(client, "test.flaky", {"failures": 1})
    retrying = wait_state(client, url, {"RETRY"})
    assert retrying["error"]["type"] == "ConnectionError"
    assert "temporary failure 1" in retrying["error"]["message"]
    task = wait_state(client, url)
    assert task["state"] == "SUCCESS"
    assert task["result"] == {"runs": 2}
    assert task["retries"] == 1
    assert task["error"] is None
    assert runs(redis_server.client(), url) == 2


def test_countdown_waits(client: FlaskClient, worker: Worker) -> None:
    before = time.time()
    url = submit(client, "test.echo", {"value": 1}, countdown=2)
    settle(1)
    assert client.get(url).json["state"] == "PENDING"
    task = wait_state(client, url)
    assert task["state"] == "SUCCESS"
    assert time.time() - before >= 2


def test_priority_is_accepted(client: FlaskClient, worker: Worker) -> None:
    for priority in (0, 9):
        url = submit(client, "test.echo", {"value": priority}, priority=priority)
        assert wait_state(client, url)["result"] == priority


def test_cancel_pending_never_runs(
    client: FlaskClient, worker: Worker, redis_server: RedisServer
) -> None:
    url = submit(client, "test.echo", {"value": 1}, countdown=2)
    response = client.delete(url)
    assert response.status_code == 202
    assert response.json["state"] == "REVOKED"
    assert response.json["finished_at"]
    settle(4)
    task = client.get(url).json
    assert task["state"] == "REVOKED"
    assert task["started_at"] is None
    assert runs(redis_server.client(), url) == 0
    again = client.delete(url)
    assert again.status_code == 409
    assert again.mimetype == "application/problem+json"


def test_cancel_running_stops_it(
    client: FlaskClient, worker: Worker, redis_server: RedisServer
) -> None:
    url = submit(client, "demo.progress", {"steps": 100, "delay": 0.1})
    wait_state(client, url, {"PROGRESS"})
    response = client.delete(url)
    assert response.status_code == 202
    assert response.json["state"] == "REVOKED"
    settle(1)
    stopped = client.get(url).json["progress"]
    settle(1)
    task = client.get(url).json
    assert task["state"] == "REVOKED"
    assert task["progress"] == stopped  # no further progress: the child was stopped
    # The worker lives on and takes new jobs.
    assert wait_state(client, submit(client, "test.echo", {"value": 2}))["state"] == "SUCCESS"


def test_success_is_final_for_cancel(client: FlaskClient, worker: Worker) -> None:
    url = submit(client, "test.echo", {"value": 3})
    assert wait_state(client, url)["state"] == "SUCCESS"
    response = client.delete(url)
    assert response.status_code == 409
    assert "SUCCESS" in response.json["detail"]


def test_list_filters_and_cursor(client: FlaskClient, worker: Worker) -> None:
    urls = [submit(client, "test.echo", {"value": i, "fail": i % 3 == 0}) for i in range(7)]
    for url in urls:
        wait_state(client, url)
    ids = [url.rsplit("/", 1)[-1] for url in urls]

    listing = client.get("/api/v1/tasks?task=test.echo&limit=200").json
    listed = [t["id"] for t in listing["items"] if t["id"] in ids]
    assert listed == ids[::-1]  # newest first

    failed = client.get("/api/v1/tasks?task=test.echo&state=FAILURE&limit=200").json["items"]
    assert {t["id"] for t in failed} >= {ids[0], ids[3], ids[6]}
    assert all(t["state"] == "FAILURE" and t["task"] == "test.echo" for t in failed)
    succeeded = client.get("/api/v1/tasks?state=SUCCESS&limit=200").json["items"]
    assert {ids[1], ids[2], ids[4], ids[5]} <= {t["id"] for t in succeeded}
    assert all(t["state"] == "SUCCESS" for t in succeeded)

    everything = client.get("/api/v1/tasks?limit=200").json["items"]
    assert [t["created_at"] for t in everything] == sorted(
        (t["created_at"] for t in everything), reverse=True
    )
    paged: list[str] = []
    cursor = None
    while True:
        query = "/api/v1/tasks?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page: dict[str, Any] = client.get(query).json
        assert len(page["items"]) <= 2
        paged += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == [t["id"] for t in everything]
    assert client.get("/api/v1/tasks?limit=3").json["items"] == everything[:3]


@pytest.mark.parametrize("limits", [{}, {"RATE_LIMIT_READ": "", "RATE_LIMIT_SUBMIT": ""}])
def test_submit_and_status_are_one_script_each(stack: Any, limits: dict[str, str]) -> None:
    server = stack("redis")  # a quiet server: no worker, so only our commands count
    quiet = make_app(server.url, **limits).test_client()
    url = submit(quiet, "test.echo", {"value": 4})  # loads the scripts
    quiet.get(url)
    sent = server.commands_during(lambda: submit(quiet, "test.echo", {"value": 5}))
    assert sent == ["evalsha"]
    sent = server.commands_during(lambda: quiet.get(url))
    assert sent == ["evalsha"]


def test_beat_job_prunes_expired_ids_from_the_index(
    app: Flask, client: FlaskClient, worker: Worker, redis_server: RedisServer
) -> None:
    store = redis_server.client()
    old = int((time.time() - app.config["TASK_RETENTION"] - 60) * 1_000_000)
    kept = submit(client, "test.echo", {"value": 5}).rsplit("/", 1)[-1]
    real_score = store.zscore("errand:index", kept)
    store.zadd("errand:index", {"expired-1": old, "expired-2": old + 1, kept: old})
    store.zadd("errand:index:test.echo", {"expired-3": old})
    result = app.extensions["celery"].send_task("errand.prune_index")
    wait_for(lambda: store.zscore("errand:index", "expired-1") is None, 20)
    assert store.zscore("errand:index", "expired-2") is None
    assert store.zscore("errand:index:test.echo", "expired-3") is None
    assert store.zscore("errand:index", kept) == old  # its record is alive
    store.zadd("errand:index", {kept: real_score})
    assert result.id


def test_ready_and_queues_on_this_broker(
    client: FlaskClient, worker: Worker, broker_env: dict[str, str]
) -> None:
    wait_for(lambda: client.get("/readyz").status_code == 200, 15)
    queues = client.get("/api/v1/queues").json["items"]
    assert [q["name"] for q in queues] == [broker_env.get("TASK_QUEUE", "celery")]
    assert isinstance(queues[0]["depth"], int)
