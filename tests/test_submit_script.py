"""The one-script submit on a Redis broker: all or nothing, and a message any Celery reads."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from app.store.apikeys import create_key
from tests.support import BIN, errand_env, make_app, submit, wait_for, wait_state
from tests.test_lifecycle import RABBITMQ, delete_queue_and_exchange

JOB = {"task": "test.echo", "params": {"value": 1}}


def everything(server: Any) -> dict[bytes, Any]:
    """Every key in the server with its value (a refused submit must change none)."""
    client = server.client()
    dump = {}
    for key in client.scan_iter():
        kind = client.type(key)
        if kind == b"string":
            dump[key] = client.get(key)
        elif kind == b"hash":
            dump[key] = client.hgetall(key)
        elif kind == b"list":
            dump[key] = client.lrange(key, 0, -1)
        elif kind == b"zset":
            dump[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            dump[key] = client.smembers(key)
    return dump


def bearer(key: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **more}


def test_a_refused_submit_changes_nothing(stack: Any) -> None:
    server = stack("redis")  # no worker: what is queued stays queued
    key = create_key(server.client(), "refused")
    app = make_app(
        server.url, AUTH_DISABLED="false", RATE_LIMIT_SUBMIT="3 per minute", IN_FLIGHT_LIMIT="2"
    )
    client = app.test_client()
    headers = bearer(key, **{"Idempotency-Key": '"once"'})
    first = client.post("/api/v1/tasks", json=JOB, headers=headers)
    assert first.status_code == 202
    assert first.headers["RateLimit"] == '"submit";r=2;t=60'
    assert client.post("/api/v1/tasks", json=JOB, headers=bearer(key)).status_code == 202

    refusals = [
        ({**JOB, "params": {"value": 2}}, headers, 422),  # the key, another body
        (JOB, bearer(key), 429),  # both places in flight are taken
    ]
    for body, sent_headers, status in refusals:
        before = everything(server)
        response = client.post("/api/v1/tasks", json=body, headers=sent_headers)
        assert response.status_code == status, response.json
        assert everything(server) == before, response.json
    # A repeat with the key answers the first task and spends a request of the window...
    again = client.post("/api/v1/tasks", json=JOB, headers=headers)
    assert again.status_code == 202 and again.json["id"] == first.json["id"]
    # ...so the window is spent now: refused, and nothing changes.
    before = everything(server)
    response = client.post("/api/v1/tasks", json=JOB, headers=bearer(key))
    assert response.status_code == 429
    assert response.headers["RateLimit-Policy"] == '"submit";q=3;w=60'
    assert everything(server) == before
    queued = [k for k in before if k.startswith(b"celery")]
    assert sum(len(before[k]) for k in queued) == 2  # one message per task


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Nothing more for Redis; for RabbitMQ a queue of the test's own, deleted afterwards."""
    if request.param == "redis":
        yield {}
        return
    queue = f"errand-test-{uuid.uuid4().hex[:12]}"
    yield {"CELERY_BROKER_URL": RABBITMQ, "TASK_QUEUE": queue}
    delete_queue_and_exchange(queue)


def test_priorities_run_highest_first(stack: Any, tmp_path: Path, broker: dict[str, str]) -> None:
    server = stack("redis")
    env = errand_env(server.url, **broker)
    client = make_app(server.url, **broker).test_client()
    if broker:  # RabbitMQ: the queue (with x-max-priority) exists once a worker declared it
        first = stack("worker", env, tmp_path / "first.log", "declare", concurrency=1)
        first.stop()
    urls = [submit(client, "test.echo", {"value": p}, priority=p) for p in (0, 5, 9, 2, 7)]
    urls.append(submit(client, "test.echo", {"value": -1}))  # no priority: as 0, the lowest
    stack("worker", env, tmp_path / "w.log", "order", concurrency=1)
    tasks = [wait_state(client, url) for url in urls]
    order = [t["result"] for t in sorted(tasks, key=lambda t: t["started_at"])]
    # RabbitMQ keeps each priority apart; kombu's Redis transport has four lists (9-7,
    # 6-4, 3-1, 0), each in submit order: with these priorities both give this order.
    assert order == [9, 7, 5, 2, 0, -1]


def test_a_plain_celery_worker_runs_what_the_script_queued(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    client = make_app(server.url).test_client()
    now = submit(client, "test.echo", {"value": 1})
    later = submit(client, "test.echo", {"value": 2}, countdown=2, priority=9)
    env = errand_env(server.url)
    command = [str(BIN / "celery"), "-A", "tests.plain_celery", "worker", "-c", "1", "-l", "INFO"]
    started = time.time()
    stack("process", [*command, "--without-gossip", "--without-mingle"], tmp_path / "p.log", env)
    store = server.client()
    wait_for(lambda: store.llen("plain:ran") == 2, 30)
    ran = [entry.decode().split("|") for entry in store.lrange("plain:ran", 0, -1)]
    assert [(task_id, value) for task_id, value, _ in ran] == [
        (now.rsplit("/", 1)[-1], "1"),
        (later.rsplit("/", 1)[-1], "2"),
    ]
    eta = datetime.fromisoformat(ran[1][2]).timestamp()
    assert started - 1 < eta - 2 < time.time()
