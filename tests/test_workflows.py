"""Workflows: a chain or a group (with a final step) of ordinary tasks.

The validation and ownership tests use the app in process against a private
Redis; the others run a real worker and watch real chains and chords.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from kombu import Connection

from app import schemas
from app.store import keys as names
from app.store.apikeys import create_key
from devtools.devstack import free_port
from tests.support import RedisServer, Worker, errand_env, make_app, runs, settle, wait_for

WORKFLOWS = "/api/v1/workflows"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
SECURED = {"AUTH_DISABLED": "false", "KEY_CACHE_SECONDS": "0"}


def add(value: int, **params: Any) -> dict[str, Any]:
    return {"task": "test.add", "params": {"value": value, **params}}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_workflow(
    client: FlaskClient, url: str, states: set[str] | None = None, timeout: float = 30
) -> dict[str, Any]:
    """Poll a workflow until it reaches one of ``states`` (default: any final state)."""
    wanted = states or {"SUCCESS", "FAILURE", "REVOKED"}

    def reached() -> dict[str, Any] | None:
        workflow = client.get(url).json
        schemas.WorkflowResource.model_validate(workflow)  # as the OpenAPI document says
        return workflow if workflow["state"] in wanted else None

    return wait_for(reached, timeout, 0.05)


def stored_keys(store: Any) -> set[bytes]:
    """The records and indexes a workflow could leave behind."""
    found = set(store.scan_iter("errand:workflow:*")) | set(store.scan_iter("errand:task:*"))
    return found | set(store.scan_iter("errand:index*")) | set(store.scan_iter("errand:bystate*"))


# -- validation, ownership, limits: no worker --------------------------------------------------


@pytest.fixture(scope="module")
def small(redis_server: RedisServer) -> Flask:
    return make_app(redis_server.url, WORKFLOW_MAX_STEPS="3")


@pytest.fixture(scope="module")
def unread(unread_redis: RedisServer) -> FlaskClient:
    return make_app(unread_redis.url).test_client()


def test_every_step_error_is_named_with_its_place(unread: FlaskClient) -> None:
    client = unread
    before = stored_keys(client.application.extensions["errand.redis"])
    body = {
        "chain": [
            {"task": "no.such"},
            {"task": "test.add", "params": {"value": "one"}},
            {"task": "test.add", "params": {"value": 1}, "options": {"countdown": -1}},
            {"task": "test.add", "params": {"value": 1}, "extra": 1},
            {
                "task": "email.send",
                "params": {"to": ["not an address"], "subject": "s", "body": "b"},
            },
        ]
    }
    response = client.post(WORKFLOWS, json=body)
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    places = [error["loc"] for error in response.json["errors"]]
    assert ["chain", 0, "task"] in places
    assert ["chain", 1, "params", "value"] in places
    assert ["chain", 2, "options", "countdown"] in places
    assert ["chain", 3, "extra"] in places
    assert any(place[:3] == ["chain", 4, "params"] for place in places)
    assert stored_keys(client.application.extensions["errand.redis"]) == before


def test_a_group_and_its_final_step_are_validated(client: FlaskClient) -> None:
    body = {"group": [add(1), {"task": "test.add"}], "then": {"task": "test.add", "params": {}}}
    response = client.post(WORKFLOWS, json=body)
    assert response.status_code == 422
    places = [error["loc"] for error in response.json["errors"]]
    assert places == [["group", 1, "params", "value"], ["then", "params", "value"]]


@pytest.mark.parametrize(
    ("body", "place"),
    [
        ({}, ["body"]),
        ({"chain": [add(1)], "group": [add(2)]}, ["body"]),
        ({"chain": []}, ["chain"]),
        ({"group": {"task": "test.add"}}, ["group"]),
        ({"chain": None}, ["chain"]),
        ({"chain": [add(1)], "then": add(2)}, ["then"]),
        ({"chain": [add(1)], "steps": []}, ["steps"]),
        ({"chain": [add(1), add(2), add(3), add(4)]}, ["chain"]),
        ({"group": [add(1), add(2), add(3)], "then": add(4)}, ["group"]),
        ({"chain": ["test.add"]}, ["chain", 0]),
    ],
)
def test_bad_shapes_are_422(small: Flask, body: dict[str, Any], place: list[Any]) -> None:
    response = small.test_client().post(WORKFLOWS, json=body)
    assert response.status_code == 422, response.json
    assert place in [error["loc"] for error in response.json["errors"]]


def test_bad_bodies(client: FlaskClient, app: Flask) -> None:
    assert client.post(WORKFLOWS, data="[1]", content_type="application/json").status_code == 400
    assert client.post(WORKFLOWS, data="{", content_type="application/json").status_code == 400
    assert client.post(WORKFLOWS, data="{}", content_type="text/plain").status_code == 415
    big = {"chain": [add(1, pad="x" * app.config["MAX_CONTENT_LENGTH"])]}
    response = client.post(WORKFLOWS, json=big)
    assert response.status_code == 413
    assert response.content_type == "application/problem+json"


def test_idempotency_key_gives_the_same_workflow_back(unread: FlaskClient) -> None:
    client = unread
    store = client.application.extensions["errand.redis"]
    headers = {"Idempotency-Key": f'"wf-{uuid.uuid4()}"'}
    body = {"chain": [add(1, seconds=0), add(2)]}
    first = client.post(WORKFLOWS, json=body, headers=headers)
    assert first.status_code == 202
    made = stored_keys(store)
    again = client.post(WORKFLOWS, json=body, headers=headers)
    assert again.status_code == 202
    assert again.json["id"] == first.json["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert stored_keys(store) == made  # nothing made twice
    other = client.post(WORKFLOWS, json={"chain": [add(1)]}, headers=headers)
    assert other.status_code == 422
    assert other.json["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    # A task submit with the same key is another request space: it makes its task.
    task = client.post("/api/v1/tasks", json=add(1), headers=headers)
    assert task.status_code == 202
    malformed = client.post(WORKFLOWS, json=body, headers={"Idempotency-Key": "x" * 300})
    assert malformed.status_code == 400


@pytest.mark.parametrize("workflow_id", [str(uuid.uuid4()), "not-an-id", "../tasks"])
def test_unknown_workflow_is_404(client: FlaskClient, workflow_id: str) -> None:
    for method in ("GET", "DELETE"):
        response = client.open(f"{WORKFLOWS}/{workflow_id}", method=method)
        assert response.status_code == 404
        assert response.content_type == "application/problem+json"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    # A Redis of its own that no worker reads: the cap's places must stay held, and
    # nothing but these tests may write keys while they count them.
    server = RedisServer(tmp_path_factory.mktemp("capped"))
    server.start()
    try:
        yield make_app(server.url, **SECURED, IN_FLIGHT_LIMIT="3")
    finally:
        server.stop()


def test_in_flight_cap_counts_every_step_and_refuses_whole(secured: Flask) -> None:
    store = secured.extensions["errand.redis"]
    key = create_key(store, "capped")
    client = secured.test_client()
    before = stored_keys(store)
    response = client.post(WORKFLOWS, json={"chain": [add(1)] * 4}, headers=bearer(key))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "5"
    assert response.headers["RateLimit-Policy"] == '"in-flight";q=3'
    assert stored_keys(store) == before  # nothing half-made
    assert store.zcard(names.in_flight(key.split("_")[1])) == 0

    response = client.post(
        WORKFLOWS, json={"group": [add(1)] * 2, "then": add(2)}, headers=bearer(key)
    )
    assert response.status_code == 202
    assert store.zcard(names.in_flight(key.split("_")[1])) == 3
    one_more = client.post("/api/v1/tasks", json=add(1), headers=bearer(key))
    assert one_more.status_code == 429  # the workflow's steps hold every place


def test_another_keys_workflow_is_404_and_admin_sees_it(secured: Flask) -> None:
    store = secured.extensions["errand.redis"]
    alice, bob = create_key(store, "alice"), create_key(store, "bob")
    admin = create_key(store, "ops", admin=True)
    client = secured.test_client()
    response = client.post(WORKFLOWS, json={"chain": [add(1), add(2)]}, headers=bearer(alice))
    assert response.status_code == 202
    url = response.headers["Location"]
    workflow = response.json
    assert url == workflow["links"]["self"] == f"{WORKFLOWS}/{workflow['id']}"
    assert workflow["state"] == "PENDING" and workflow["kind"] == "chain"
    assert [t["state"] for t in workflow["tasks"]] == ["PENDING", "PENDING"]

    unknown = client.get(f"{WORKFLOWS}/{uuid.uuid4()}", headers=bearer(bob))
    theirs = client.get(url, headers=bearer(bob))
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json["title"] == unknown.json["title"]
    assert client.delete(url, headers=bearer(bob)).status_code == 404
    step = workflow["tasks"][0]["links"]["self"]
    assert client.get(step, headers=bearer(bob)).status_code == 404

    seen = client.get(url, headers=bearer(admin))
    assert seen.status_code == 200 and seen.json["id"] == workflow["id"]
    mine = client.get(step, headers=bearer(alice)).json
    schemas.TaskResource.model_validate(mine)
    schemas.WorkflowResource.model_validate(seen.json)
    assert mine["links"]["workflow"] == url  # every step is an ordinary task, linked
    # A step is not retried alone (its place in the workflow is gone): 409.
    assert client.post(f"{step}/retry", headers=bearer(alice)).status_code == 409


def test_a_failed_publish_leaves_nothing(unread_redis: RedisServer) -> None:
    # The broker is a Redis nobody listens on: the records are written, the publish
    # fails, and the records are taken back.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = make_app(unread_redis.url, CELERY_BROKER_URL=dead, REDIS_TIMEOUT="0.3")
    store = app.extensions["errand.redis"]
    before = stored_keys(store)
    started = time.monotonic()
    response = app.test_client().post(WORKFLOWS, json={"chain": [add(1), add(2)]})
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert time.monotonic() - started < 5
    assert stored_keys(store) == before


def test_unknown_and_foreign_workflows_cost_the_same_redis_work(stack: Any) -> None:
    # Counted on a quiet server of its own (no worker), as test_auth does for tasks.
    server = stack("redis")
    app = make_app(server.url, **SECURED, RATE_LIMIT_READ="")
    store = app.extensions["errand.redis"]
    alice, bob = create_key(store, "alice"), create_key(store, "bob")
    client = app.test_client()
    url = client.post(WORKFLOWS, json={"chain": [add(1)]}, headers=bearer(alice)).headers[
        "Location"
    ]
    counter = server.client()

    def commands(path: str, method: str) -> dict[str, int]:
        client.open(path, method=method, headers=bearer(bob))  # warm the key cache equally
        counter.config_resetstat()
        assert client.open(path, method=method, headers=bearer(bob)).status_code == 404
        stats = counter.info("commandstats")
        return {k: v["calls"] for k, v in stats.items() if "resetstat" not in k}

    for method in ("GET", "DELETE"):
        assert commands(url, method) == commands(f"{WORKFLOWS}/{uuid.uuid4()}", method)


# -- with a real worker ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with Worker(errand_env(redis_server.url), log, "workflows", concurrency=3) as proc:
        yield proc


def create(client: FlaskClient, body: dict[str, Any]) -> str:
    response = client.post(WORKFLOWS, json=body)
    assert response.status_code == 202, response.json
    schemas.WorkflowResource.model_validate(response.json)
    return str(response.headers["Location"])


def test_a_chain_passes_each_result_on(client: FlaskClient, worker: Worker) -> None:
    url = create(client, {"chain": [add(1), add(2), add(3)]})
    workflow = wait_workflow(client, url)
    assert workflow["state"] == "SUCCESS"
    assert workflow["progress"] == {
        "current": 3,
        "total": 3,
        "percent": 100.0,
        "message": "3 of 3 steps finished",
    }
    steps = [client.get(t["links"]["self"]).json for t in workflow["tasks"]]
    for step in steps:
        schemas.TaskResource.model_validate(step)
    assert [s["result"]["total"] for s in steps] == [1, 3, 6]
    assert steps[1]["result"]["previous"] == steps[0]["result"]
    assert workflow["result"] == steps[2]["result"]
    assert all(s["links"]["workflow"] == url for s in steps)
    # The workflow and its steps expire together, once the last step is final.
    store = client.application.extensions["errand.redis"]
    ttls = [store.ttl(names.workflow(workflow["id"]))]
    ttls += [store.ttl(names.record(s["id"])) for s in steps]
    ttls += [store.ttl(names.result(s["id"])) for s in steps]
    assert all(ttl > 0 for ttl in ttls), ttls


def test_a_chain_step_without_accepts_previous_ignores_it(
    client: FlaskClient, worker: Worker
) -> None:
    echo = {"task": "test.echo", "params": {"value": 5}}
    workflow = wait_workflow(client, create(client, {"chain": [add(1), echo, add(2)]}))
    assert workflow["state"] == "SUCCESS"
    assert workflow["result"] == {"total": 2, "previous": 5}


def test_a_group_then_gets_every_result(client: FlaskClient, worker: Worker) -> None:
    url = create(client, {"group": [add(1), add(2), add(3)], "then": add(10)})
    workflow = wait_workflow(client, url)
    assert workflow["state"] == "SUCCESS", workflow
    assert workflow["kind"] == "group"
    assert workflow["result"]["total"] == 16
    assert [p["total"] for p in workflow["result"]["previous"]] == [1, 2, 3]

    plain = wait_workflow(client, create(client, {"group": [add(4), add(5)]}))
    assert plain["state"] == "SUCCESS"
    assert [r["total"] for r in plain["result"]] == [4, 5]


@pytest.fixture(scope="module")
def keyed(redis_server: RedisServer) -> FlaskClient:
    """A client with a key of its own (so its places in flight can be counted)."""
    app = make_app(redis_server.url, **SECURED)
    key = create_key(app.extensions["errand.redis"], "workflows")
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    client.key_id = key.split("_")[1]  # type: ignore[attr-defined]
    return client


def test_a_failing_chain_step_stops_the_rest(keyed: FlaskClient, worker: Worker) -> None:
    client = keyed
    url = create(client, {"chain": [add(1), add(2, fail=True), add(3), add(4)]})
    workflow = wait_workflow(client, url)
    assert workflow["state"] == "FAILURE"
    settle(1.0)
    workflow = client.get(url).json
    assert [t["state"] for t in workflow["tasks"]] == ["SUCCESS", "FAILURE", "REVOKED", "REVOKED"]
    failed = client.get(workflow["tasks"][1]["links"]["self"]).json
    assert failed["error"] == {"type": "ValueError", "message": "asked to fail with 2"}
    store = client.application.extensions["errand.redis"]
    for task in workflow["tasks"][2:]:
        assert runs(store, task["links"]["self"]) == 0  # never ran
        step = client.get(task["links"]["self"]).json
        assert step["finished_at"] and step["result"] is None
    assert workflow["progress"]["current"] == 4
    assert client.delete(url).status_code == 409  # every step is final
    assert store.zcard(names.in_flight(client.key_id)) == 0  # type: ignore[attr-defined]


def test_a_failing_group_step_stops_the_final_step(client: FlaskClient, worker: Worker) -> None:
    body = {"group": [add(1), add(2, fail=True), add(3, seconds=0.5)], "then": add(10)}
    url = create(client, body)
    workflow = wait_workflow(client, url, {"FAILURE"})
    final = workflow["tasks"][-1]
    wait_for(lambda: client.get(final["links"]["self"]).json["state"] == "REVOKED", 15)
    workflow = client.get(url).json
    assert workflow["state"] == "FAILURE"
    assert [t["state"] for t in workflow["tasks"]] == ["SUCCESS", "FAILURE", "SUCCESS", "REVOKED"]
    assert runs(client.application.extensions["errand.redis"], final["links"]["self"]) == 0


def test_cancel_stops_every_unfinished_step(keyed: FlaskClient, worker: Worker) -> None:
    client = keyed
    url = create(client, {"chain": [add(1), add(2, seconds=20), add(3), add(4)]})
    second = wait_workflow(client, url, {"STARTED", "PROGRESS"})["tasks"][1]
    wait_for(lambda: client.get(second["links"]["self"]).json["state"] == "STARTED", 15)
    started = time.monotonic()
    response = client.delete(url)
    assert response.status_code == 202
    workflow = response.json
    assert workflow["state"] == "REVOKED" and workflow["cancelled_at"]
    assert [t["state"] for t in workflow["tasks"]] == ["SUCCESS", "REVOKED", "REVOKED", "REVOKED"]
    settle(1.5)
    workflow = client.get(url).json
    assert workflow["state"] == "REVOKED"
    assert [t["state"] for t in workflow["tasks"]] == ["SUCCESS", "REVOKED", "REVOKED", "REVOKED"]
    store = client.application.extensions["errand.redis"]
    assert [runs(store, t["links"]["self"]) for t in workflow["tasks"]] == [1, 1, 0, 0]
    assert time.monotonic() - started < 15  # the running step was stopped, not waited for
    assert client.delete(url).status_code == 409
    assert store.zcard(names.in_flight(client.key_id)) == 0  # type: ignore[attr-defined]


def test_chain_and_chord_on_rabbitmq(redis_server: RedisServer, stack: Any, tmp_path: Any) -> None:
    # The machine's RabbitMQ as the broker, with a queue of its own (deleted afterwards);
    # Redis stays the result store, where the chord is counted.
    queue = f"errand-test-{uuid.uuid4().hex[:12]}"
    env = {"CELERY_BROKER_URL": RABBITMQ, "TASK_QUEUE": queue}
    try:
        stack("worker", errand_env(redis_server.url, **env), tmp_path / "worker.log", "rabbit")
        client = make_app(redis_server.url, **env).test_client()
        chained = wait_workflow(client, create(client, {"chain": [add(1), add(2), add(3)]}))
        assert chained["state"] == "SUCCESS" and chained["result"]["total"] == 6
        body = {"group": [add(1), add(2, fail=True)], "then": add(10)}
        failed = wait_workflow(client, create(client, body))
        assert failed["state"] == "FAILURE"
        final = failed["tasks"][-1]["links"]["self"]
        wait_for(lambda: client.get(final).json["state"] == "REVOKED", 15)
    finally:
        with Connection(RABBITMQ, connect_timeout=5) as connection:
            connection.default_channel.queue_delete(queue)
            connection.default_channel.exchange_delete(queue)


def test_cancelling_one_running_step_stops_the_rest(client: FlaskClient, worker: Worker) -> None:
    url = create(client, {"chain": [add(1, seconds=20), add(2), add(3)]})
    first = client.get(url).json["tasks"][0]["links"]["self"]
    wait_for(lambda: client.get(first).json["state"] == "STARTED", 15)
    assert client.delete(first).status_code == 202
    workflow = wait_workflow(client, url)
    assert workflow["state"] == "REVOKED" and workflow["cancelled_at"] is None
    wait_for(lambda: [t["state"] for t in client.get(url).json["tasks"]] == ["REVOKED"] * 3, 15)
    store = client.application.extensions["errand.redis"]
    settle(1.0)
    assert [runs(store, t["links"]["self"]) for t in workflow["tasks"]] == [1, 0, 0]


def test_cancel_of_a_group_stops_its_steps_and_the_final_one(
    client: FlaskClient, worker: Worker
) -> None:
    body = {"group": [add(1, seconds=20), add(2, seconds=20)], "then": add(3)}
    url = create(client, body)
    wait_workflow(client, url, {"STARTED", "PROGRESS"})
    started = time.monotonic()
    workflow = client.delete(url).json
    assert workflow["state"] == "REVOKED"
    assert [t["state"] for t in workflow["tasks"]] == ["REVOKED"] * 3
    settle(1.5)
    workflow = client.get(url).json
    assert [t["state"] for t in workflow["tasks"]] == ["REVOKED"] * 3
    store = client.application.extensions["errand.redis"]
    assert runs(store, workflow["tasks"][2]["links"]["self"]) == 0
    assert time.monotonic() - started < 15
