"""Idempotency-Key on submits, and resubmitting a failed task."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.support import Api, Worker, errand_env, runs, settle, submit, wait_for, wait_state

JOB = {"task": "test.echo", "params": {"value": 11}}


def index_size(app: Flask) -> int:
    return int(app.extensions["errand.redis"].zcard("errand:index"))


def test_same_key_and_body_give_the_same_task(app: Flask, client: FlaskClient) -> None:
    before = index_size(app)
    first = client.post("/api/v1/tasks", json=JOB, headers={"Idempotency-Key": '"order-1"'})
    again = client.post("/api/v1/tasks", json=JOB, headers={"Idempotency-Key": "order-1"})
    assert first.status_code == again.status_code == 202
    assert first.json["id"] == again.json["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert index_size(app) == before + 1
    name = "errand:idem:" + hashlib.sha256(b"\0order-1").hexdigest()  # no owner: AUTH_DISABLED
    assert app.extensions["errand.redis"].ttl(name) > 24 * 3600 - 60


def test_same_key_with_another_body_is_422(client: FlaskClient) -> None:
    headers = {"Idempotency-Key": "order-2"}
    assert client.post("/api/v1/tasks", json=JOB, headers=headers).status_code == 202
    other = {"task": "test.echo", "params": {"value": 12}}
    response = client.post("/api/v1/tasks", json=other, headers=headers)
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.json["errors"][0]["loc"] == ["header", "Idempotency-Key"]


@pytest.mark.parametrize("key", ["", '""', "x" * 256, "caf\u00e9"])
def test_malformed_keys_are_400(app: Flask, client: FlaskClient, key: str) -> None:
    before = index_size(app)
    response = client.post("/api/v1/tasks", json=JOB, headers={"Idempotency-Key": key})
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert index_size(app) == before


def test_concurrent_clients_with_one_key_get_one_task(
    redis_server: Any, worker: Worker, tmp_path: Path
) -> None:
    job = {"task": "test.sleep", "params": {"seconds": 0}}
    headers = {"Idempotency-Key": "concurrent-1"}
    with (
        Api(errand_env(redis_server.url), tmp_path / "g.log") as api,
        ThreadPoolExecutor(8) as pool,
    ):
        answers = list(
            pool.map(lambda _: api.call("POST", "/api/v1/tasks", job, headers=headers), range(8))
        )
    assert [status for status, _, _ in answers] == [202] * 8
    ids = {body["id"] for _, _, body in answers}
    assert len(ids) == 1
    settle(1)
    assert int(redis_server.client().get(f"test:runs:{ids.pop()}") or 0) == 1


def test_retry_resubmits_and_links_both_ways(client: FlaskClient, worker: Worker) -> None:
    failed_url = submit(client, "test.echo", {"value": 9, "fail": True})
    assert wait_state(client, failed_url)["state"] == "FAILURE"
    response = client.post(failed_url + "/retry")
    assert response.status_code == 202
    retried = response.json
    assert retried["id"] != failed_url.rsplit("/", 1)[-1]
    assert retried["links"]["retry_of"] == failed_url
    assert response.headers["Location"] == retried["links"]["self"]
    assert client.get(failed_url).json["links"]["retried_by"] == retried["links"]["self"]
    again = wait_state(client, retried["links"]["self"])
    assert again["error"] == {"type": "ValueError", "message": "asked to fail with 9"}


def test_retry_of_a_cancelled_task_keeps_its_options(client: FlaskClient, worker: Worker) -> None:
    url = submit(client, "test.echo", {"value": 21}, countdown=2, priority=7)
    cancelled = client.delete(url).json
    assert cancelled["eta"] is not None and cancelled["eta"] > cancelled["created_at"]
    before = time.time()
    retried = client.post(url + "/retry").json
    assert retried["eta"] is not None  # the countdown again, from the retry on
    settle(1)
    assert client.get(retried["links"]["self"]).json["state"] == "PENDING"
    done = wait_state(client, retried["links"]["self"])
    assert done["result"] == 21 and time.time() - before >= 2
    assert done["started_at"] >= done["eta"]


def test_a_task_is_retried_once(app: Flask, client: FlaskClient, worker: Worker) -> None:
    failed_url = submit(client, "test.echo", {"value": 3, "fail": True})
    wait_state(client, failed_url)
    first, second = client.post(failed_url + "/retry"), client.post(failed_url + "/retry")
    assert first.status_code == second.status_code == 202
    assert second.json["id"] == first.json["id"]  # the first retry's task, not a new one
    assert client.get(failed_url).json["links"]["retried_by"] == first.json["links"]["self"]
    wait_state(client, first.json["links"]["self"])
    settle(0.5)
    assert runs(app.extensions["errand.redis"], first.json["links"]["self"]) == 1


def test_retry_needs_a_failed_task(client: FlaskClient, worker: Worker) -> None:
    url = submit(client, "test.echo", {"value": 1})
    wait_state(client, url)
    response = client.post(url + "/retry")
    assert response.status_code == 409
    assert response.mimetype == "application/problem+json"
    assert (
        client.post("/api/v1/tasks/00000000-0000-0000-0000-000000000000/retry").status_code == 404
    )


def test_workers_and_queues_are_listed(client: FlaskClient, worker: Worker) -> None:
    items = wait_for(lambda: client.get("/api/v1/workers").json["items"], 10)
    (main,) = [w for w in items if w["name"].startswith("main@")]
    assert main["pool"] == "prefork"
    assert main["concurrency"] == 2
    assert main["heartbeat_at"].endswith("Z")
    url = submit(client, "test.sleep", {"seconds": 3})
    wait_state(client, url, {"STARTED"})
    busy = wait_for(
        lambda: [w for w in client.get("/api/v1/workers").json["items"] if w["active"]], 10
    )
    assert busy[0]["name"] == main["name"]
    queues = client.get("/api/v1/queues").json["items"]
    assert [q["name"] for q in queues] == ["celery"]
    assert queues[0]["depth"] >= 0


def test_queue_depth_counts_waiting_messages(stack: Any) -> None:
    server = stack("redis")  # no worker: messages stay queued
    from tests.support import make_app

    quiet = make_app(server.url).test_client()
    for value in range(3):
        submit(quiet, "test.echo", {"value": value})
    submit(quiet, "test.echo", {"value": 9}, priority=9)
    [queue] = quiet.get("/api/v1/queues").json["items"]
    assert (queue["name"], queue["depth"], queue["workers"]) == ("celery", 4, 0)
    assert "test.echo" in queue["task_types"]
    assert quiet.get("/api/v1/workers").json["items"] == []
