"""Rate limits and the in-flight cap through the real API, two gunicorn workers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from app.store.apikeys import create_key
from tests.support import Api, errand_env


def secured(redis_url: str, log: Path, **env: str) -> Api:
    """The API under two gunicorn workers, with keys required."""
    return Api(errand_env(redis_url, AUTH_DISABLED="false", **env), log)


JOB = {"task": "test.echo", "params": {"value": 1}, "options": {"countdown": 300}}


def submit_job(api: Api, key: str) -> tuple[int, Any, Any]:
    return api.call("POST", "/api/v1/tasks", JOB, key)


def test_submit_rate_limit_holds_across_gunicorn_workers(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    key = create_key(server.client(), "limited")
    other = create_key(server.client(), "other")
    with secured(server.url, tmp_path / "g.log", RATE_LIMIT_SUBMIT="5 per minute") as api:
        with ThreadPoolExecutor(4) as pool:  # at once, so both gunicorn workers answer
            answers = list(
                pool.map(lambda _: api.call("POST", "/api/v1/tasks", JOB, key), range(12))
            )
        statuses = [status for status, _, _ in answers]
        assert statuses.count(202) == 5  # not 5 per gunicorn worker: the count is shared
        assert statuses.count(429) == 7
        _, headers, body = next(a for a in answers if a[0] == 429)
        assert body["status"] == 429
        assert headers["Content-Type"] == "application/problem+json"
        assert int(headers["Retry-After"]) >= 1
        assert headers["RateLimit-Policy"] == '"submit";q=5;w=60'
        assert headers["RateLimit"].startswith('"submit";r=0;t=')
        ok_headers = next(a for a in answers if a[0] == 202)[1]
        assert ok_headers["RateLimit-Policy"] == '"submit";q=5;w=60'
        assert api.call("POST", "/api/v1/tasks", JOB, other)[0] == 202  # per key
        assert api.call("GET", "/api/v1/tasks", None, key)[0] == 200  # reads: their own budget
    pids = {
        line.split("[")[2].split("]")[0]
        for line in (tmp_path / "g.log").read_text().splitlines()
        if "Booting worker" in line
    }
    assert len(pids) == 2
    assert server.client().zcard("errand:index") == 6  # nothing queued for a 429


def test_read_rate_limit(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    key = create_key(server.client(), "reader")
    with secured(server.url, tmp_path / "g.log", RATE_LIMIT_READ="4 per minute") as api:
        statuses = [api.call("GET", "/api/v1/task-types", None, key)[0] for _ in range(6)]
        assert statuses == [200] * 4 + [429] * 2
        assert api.call("GET", "/healthz")[0] == 200  # health is never limited


def test_in_flight_cap_per_key(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")  # no worker: tasks stay in flight until cancelled
    key = create_key(server.client(), "busy")
    other = create_key(server.client(), "calm")
    with secured(server.url, tmp_path / "g.log", IN_FLIGHT_LIMIT="3") as api:
        made = [api.call("POST", "/api/v1/tasks", JOB, key) for _ in range(3)]
        assert [status for status, _, _ in made] == [202, 202, 202]
        status, headers, body = api.call("POST", "/api/v1/tasks", JOB, key)
        assert status == 429
        assert body["detail"].startswith("this key has 3 tasks")
        assert headers["Retry-After"]
        assert headers["RateLimit-Policy"] == '"in-flight";q=3'
        assert api.call("POST", "/api/v1/tasks", JOB, other)[0] == 202
        assert server.client().zcard("errand:index") == 4  # nothing queued for the 429
        cancelled = made[0][2]["links"]["self"]
        assert api.call("DELETE", cancelled, None, key)[0] == 202  # a final task frees a place
        assert api.call("POST", "/api/v1/tasks", JOB, key)[0] == 202
        assert api.call("POST", "/api/v1/tasks", JOB, key)[0] == 429
