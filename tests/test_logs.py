"""JSON logs, with one request id from the HTTP request into the worker's lines."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from app.store.apikeys import create_key
from tests.support import Api, errand_env, make_app, submit, wait_state


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_request_id_follows_the_job_into_the_worker(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    env = errand_env(server.url, LOG_FORMAT="json")
    log = tmp_path / "w.log"
    stack("worker", env, log, "json", concurrency=1)
    client = make_app(server.url, LOG_FORMAT="json").test_client()
    response = client.post(
        "/api/v1/tasks",
        json={"task": "test.echo", "params": {"value": 1}},
        headers={"X-Request-ID": "trace-42"},
    )
    assert response.headers["X-Request-ID"] == "trace-42"
    task = wait_state(client, response.headers["Location"])
    lines = json_lines(log.read_text())
    assert lines, "the worker logged no JSON"
    traced = [line for line in lines if line.get("request_id") == "trace-42"]
    assert traced, "no worker line carries the request id"
    assert all(line["task_id"] == task["id"] for line in traced)
    assert {"asctime", "level", "logger", "message"} <= traced[0].keys()
    assert any("started" in line["message"] for line in traced)


def test_api_logs_json_with_the_request_id(
    redis_server: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    app = make_app(redis_server.url, LOG_FORMAT="json")

    @app.get("/fails")
    def fails() -> str:
        raise RuntimeError("kaput")

    client = app.test_client()
    assert client.get("/fails", headers={"X-Request-ID": "req-7"}).status_code == 500
    submit(client, "test.echo", {"value": 1})
    lines = json_lines(capfd.readouterr().err)
    (error,) = [line for line in lines if line.get("request_id") == "req-7"]
    assert error["level"] == "ERROR"
    assert "kaput" in error["exc_info"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_credential_reaches_the_access_log(stack: Any, tmp_path: Path, log_format: str) -> None:
    server = stack("redis")
    key = create_key(server.client(), "logged")
    secret = key.split("_", 2)[2]  # erd_<id>_<secret>: the secret may hold "_" itself
    env = errand_env(server.url, AUTH_DISABLED="false", LOG_FORMAT=log_format)
    with Api(env, tmp_path / "g.log", workers=1) as api:
        assert api.call("GET", f"/api/v1/tasks?api_key={key}&token={secret}", key=key)[0] == 200
        assert api.call("GET", f"/api/v1/tasks?key={key}")[0] == 401
        assert api.call("GET", "/api/v1/task-types", key=key + "x")[0] == 401
    log = (tmp_path / "g.log").read_text()
    assert log.count("/api/v1/tasks") >= 2
    assert secret not in log
    if log_format == "json":
        access = [line for line in json_lines(log) if "path" in line]
        assert {line["path"] for line in access} >= {"/api/v1/tasks", "/api/v1/task-types"}


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_path_cannot_forge_an_access_line(stack: Any, tmp_path: Path, log_format: str) -> None:
    server = stack("redis")
    env = errand_env(server.url, LOG_FORMAT=log_format)
    path = b"/api/v1/tasks/%0a127.0.0.1%20%22GET%20/x%22%5c%85?token=secret"
    with (
        Api(env, tmp_path / "g.log", workers=1) as api,
        socket.create_connection(("127.0.0.1", api.port), timeout=10) as client,
    ):
        client.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b" 404 " in client.recv(65536).split(b"\r\n", 1)[0]
    lines = [line for line in (tmp_path / "g.log").read_text().splitlines() if "/x" in line]
    assert len(lines) == 1, lines  # one line: the newline in the path did not start another
    escaped = r"/api/v1/tasks/\x0a127.0.0.1 \x22GET /x\x22\x5c\x85"
    if log_format == "json":
        assert json.loads(lines[0])["path"] == escaped
    else:
        assert f'"GET {escaped} HTTP/1.1" 404' in lines[0]
    assert "secret" not in lines[0]
