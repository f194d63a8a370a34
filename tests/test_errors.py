"""Every error status of the contract, with its problem+json body."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.support import make_app


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/problem+json"
    body = response.json
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert body["title"] and body["detail"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def index_size(app: Flask) -> int:
    return int(app.extensions["errand.redis"].zcard("errand:index"))


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ("{not json", "application/json", 400),
        ('{"task": "demo.progress",', "application/json", 400),
        ("[1, 2]", "application/json", 400),
        ('"a string"', "application/json", 400),
        ("null", "application/json", 400),
        ('{"a": NaN}', "application/json", 400),
        ("\xff\xfe", "application/json", 400),
        ("[" * 100_000 + "]" * 100_000, "application/json", 400),
        ('{"task": "demo.progress"}', "text/plain", 415),
        ("task=demo.progress", "application/x-www-form-urlencoded", 415),
        ("", None, 415),
    ],
)
def test_bad_bodies(
    app: Flask, client: FlaskClient, data: str, content_type: str | None, status: int
) -> None:
    before = index_size(app)
    response = client.post("/api/v1/tasks", data=data.encode("latin-1"), content_type=content_type)
    assert_problem(response, status)
    assert index_size(app) == before


def test_body_over_the_limit_is_413(app: Flask, client: FlaskClient) -> None:
    steps = " " * (app.config["MAX_CONTENT_LENGTH"] + 1)
    body = '{"task": "demo.progress", "params": {"steps": 1, "delay": 0}}' + steps
    response = client.post("/api/v1/tasks", data=body, content_type="application/json")
    assert_problem(response, 413)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"task": "no.such.type", "params": {}}, ["task"]),
        ({"task": "celery.backend_cleanup"}, ["task"]),
        ({"task": "errand.prune_index"}, ["task"]),
        ({"params": {"steps": 1, "delay": 0}}, ["task"]),
        ({"task": 5}, ["task"]),
        ({"task": "demo.progress", "params": {"steps": 0, "delay": 0}}, ["params", "steps"]),
        ({"task": "demo.progress", "params": {"steps": 1001, "delay": 0}}, ["params", "steps"]),
        ({"task": "demo.progress", "params": {"steps": "5", "delay": 0}}, ["params", "steps"]),
        ({"task": "demo.progress", "params": {"steps": True, "delay": 0}}, ["params", "steps"]),
        ({"task": "demo.progress", "params": {"steps": 1, "delay": 11}}, ["params", "delay"]),
        ({"task": "demo.progress", "params": {"steps": 1}}, ["params", "delay"]),
        ({"task": "demo.progress", "params": {"steps": 1, "delay": 0, "x": 1}}, ["params", "x"]),
        ({"task": "demo.progress", "params": [1]}, ["params"]),
        ({"task": "demo.progress", "params": {}, "queue": "celery"}, ["queue"]),
        (
            {"task": "demo.progress", "params": {"steps": 1, "delay": 0}, "options": {"eta": 1}},
            ["options", "eta"],
        ),
        (
            {
                "task": "demo.progress",
                "params": {"steps": 1, "delay": 0},
                "options": {"countdown": 3601},
            },
            ["options", "countdown"],
        ),
        (
            {
                "task": "demo.progress",
                "params": {"steps": 1, "delay": 0},
                "options": {"priority": 10},
            },
            ["options", "priority"],
        ),
        (
            {
                "task": "demo.progress",
                "params": {"steps": 1, "delay": 0},
                "options": {"countdown": 1.5},
            },
            ["options", "countdown"],
        ),
    ],
)
def test_invalid_submissions_are_422(
    app: Flask, client: FlaskClient, body: dict[str, Any], loc: list[Any]
) -> None:
    before = index_size(app)
    problem = assert_problem(client.post("/api/v1/tasks", json=body), 422)
    assert loc in [error["loc"] for error in problem["errors"]]
    assert all(error["msg"] for error in problem["errors"])
    assert index_size(app) == before


@pytest.mark.parametrize(
    "task_id", [str(uuid.uuid4()), "not-a-uuid", "1" * 5000, str(uuid.uuid4()).upper()]
)
def test_unknown_ids_are_404(client: FlaskClient, task_id: str) -> None:
    assert_problem(client.get(f"/api/v1/tasks/{task_id}"), 404)
    assert_problem(client.delete(f"/api/v1/tasks/{task_id}"), 404)


def test_unknown_route_and_method(client: FlaskClient) -> None:
    assert_problem(client.get("/api/v1/nothing-here"), 404)
    response = client.put("/api/v1/tasks")
    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]
    assert_problem(client.patch(f"/api/v1/tasks/{uuid.uuid4()}"), 405)


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("state=DONE", ["query", "state"]),
        ("task=no.such.type", ["query", "task"]),
        ("limit=0", ["query", "limit"]),
        ("limit=201", ["query", "limit"]),
        ("limit=ten", ["query", "limit"]),
        ("cursor=%%%", ["query", "cursor"]),
        ("cursor=bm90LWEtY3Vyc29y", ["query", "cursor"]),
    ],
)
def test_bad_filters_are_422(client: FlaskClient, query: str, loc: list[str]) -> None:
    problem = assert_problem(client.get(f"/api/v1/tasks?{query}"), 422)
    assert loc in [error["loc"] for error in problem["errors"]]


def test_every_bad_filter_is_named_at_once(client: FlaskClient) -> None:
    problem = assert_problem(client.get("/api/v1/tasks?state=DONE&limit=500&task=x"), 422)
    by_loc = {tuple(e["loc"]): e["msg"] for e in problem["errors"]}
    assert set(by_loc) == {("query", "state"), ("query", "limit"), ("query", "task")}
    assert by_loc[("query", "state")] == (
        "not a task state: one of FAILURE, PENDING, PROGRESS, RETRY, REVOKED, STARTED, SUCCESS"
    )
    assert "demo.progress" in by_loc[("query", "task")]


def test_validation_messages_are_plain(client: FlaskClient) -> None:
    body = {"task": "email.send", "params": {"to": ["nope"], "subject": "s", "body": "b"}}
    problem = assert_problem(client.post("/api/v1/tasks", json=body), 422)
    assert problem["errors"][0]["msg"].startswith("not an email address")


def test_unexpected_exception_is_500_without_traceback(redis_server: Any) -> None:
    app = make_app(redis_server.url)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom", headers={"X-Request-ID": "req-123"})
    body = assert_problem(response, 500)
    assert "secret internals" not in json.dumps(body)
    assert "req-123" in body["detail"]
    assert response.headers["X-Request-ID"] == "req-123"


def test_task_types_lists_schemas(client: FlaskClient) -> None:
    items = {item["name"]: item for item in client.get("/api/v1/task-types").json["items"]}
    schema = items["demo.progress"]["params_schema"]
    assert schema["properties"]["steps"]["maximum"] == 1000
    assert schema["additionalProperties"] is False
    assert items["demo.progress"]["description"]
    assert "errand.prune_index" not in items


def test_healthz(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_names_the_missing_worker(stack: Any) -> None:
    server = stack("redis")
    app = make_app(server.url)
    problem = assert_problem(app.test_client().get("/readyz"), 503)
    assert "workers" in problem["detail"]
    assert "broker" not in problem["detail"]
