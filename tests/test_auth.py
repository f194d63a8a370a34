"""API keys and ownership: every route against no key, a wrong, a revoked,
another owner's and an admin key; the CLI; headers; production refusals."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

import config
from app.store.apikeys import create_key, revoke_key
from tests.support import BIN, ROOT, RedisServer, Worker, errand_env, make_app, submit, wait_for

SECURED = {"AUTH_DISABLED": "false", "KEY_CACHE_SECONDS": "0"}
OPEN = {
    "health.healthz",
    "health.readyz",
    "page.index",
    "openapi.spec",
    "openapi.docs",
    "openapi.docs_asset",
}
SECRET = "s" * 32


@pytest.fixture(scope="module")
def secured(redis_server: RedisServer) -> Flask:
    return make_app(redis_server.url, **SECURED)


@pytest.fixture(scope="module")
def keys(secured: Flask) -> dict[str, str]:
    client = secured.extensions["errand.redis"]
    made = {
        "alice": create_key(client, "alice"),
        "bob": create_key(client, "bob"),
        "admin": create_key(client, "ops", admin=True),
        "revoked": create_key(client, "gone"),
    }
    revoke_key(client, made["revoked"].split("_", 2)[1])
    return made


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def alices_task(secured: Flask, keys: dict[str, str], worker: Worker) -> str:
    client = secured.test_client()
    response = client.post(
        "/api/v1/tasks",
        json={"task": "test.echo", "params": {"value": 1, "fail": True}},
        headers=bearer(keys["alice"]),
    )
    assert response.status_code == 202
    return str(response.headers["Location"])


# Every route, how to call it, and whether it is open, for any key, or admin only.
def routes(task_url: str) -> list[tuple[str, str, str, Any]]:
    return [
        ("tasks.submit", "POST", "/api/v1/tasks", {"task": "test.echo", "params": {"value": 2}}),
        ("tasks.status", "GET", task_url, None),
        ("tasks.cancel", "DELETE", task_url, None),
        ("tasks.retry_task", "POST", task_url + "/retry", None),
        ("tasks.events", "GET", task_url + "/events", None),
        ("tasks.stream_token", "POST", task_url + "/stream-token", None),
        ("tasks.list_tasks", "GET", "/api/v1/tasks", None),
        ("tasks.list_task_types", "GET", "/api/v1/task-types", None),
        ("schedules.create", "POST", "/api/v1/schedules", {"task": "test.echo", "interval": 60}),
        ("schedules.list_schedules", "GET", "/api/v1/schedules", None),
        ("schedules.get", "GET", "/api/v1/schedules/x", None),
        ("schedules.update", "PATCH", "/api/v1/schedules/x", {"paused": True}),
        ("schedules.delete", "DELETE", "/api/v1/schedules/x", None),
        ("workflows.create", "POST", "/api/v1/workflows", {"chain": [{"task": "test.echo"}]}),
        ("workflows.status", "GET", task_url.replace("/tasks/", "/workflows/"), None),
        ("workflows.cancel", "DELETE", task_url.replace("/tasks/", "/workflows/"), None),
        ("operations.workers", "GET", "/api/v1/workers", None),
        ("operations.queues", "GET", "/api/v1/queues", None),
        ("operations.metrics", "GET", "/metrics", None),
        ("health.healthz", "GET", "/healthz", None),
        ("health.readyz", "GET", "/readyz", None),
        ("page.index", "GET", "/", None),
        ("openapi.spec", "GET", "/api/v1/openapi.json", None),
        ("openapi.docs", "GET", "/docs", None),
        ("openapi.docs_asset", "GET", "/docs/swagger-ui.css", None),
    ]


def test_every_route_is_in_the_table(secured: Flask) -> None:
    endpoints = {rule.endpoint for rule in secured.url_map.iter_rules()} - {"static"}
    assert endpoints == {endpoint for endpoint, *_ in routes("/x")}


def call(client: FlaskClient, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    response = client.open(path, method=method, json=body, headers=headers)
    response.get_data()  # read, so that a file answer (the docs' assets) is closed
    response.close()
    return response


@pytest.mark.parametrize("who", ["none", "wrong", "revoked", "malformed", "basic"])
def test_without_a_valid_key_every_route_is_401(
    secured: Flask, keys: dict[str, str], who: str
) -> None:
    headers = {
        "none": {},
        "wrong": bearer(keys["alice"][:-4] + "abcd"),
        "revoked": bearer(keys["revoked"]),
        "malformed": bearer("not-a-key"),
        "basic": {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    }[who]
    client = secured.test_client()
    task_url = f"/api/v1/tasks/{uuid.uuid4()}"
    for endpoint, method, path, body in routes(task_url):
        response = call(client, method, path, body, headers)
        if endpoint in OPEN:
            assert response.status_code in {200, 503}, endpoint
            continue
        assert response.status_code == 401, (endpoint, response.status_code)
        assert response.mimetype == "application/problem+json"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert call(client, "GET", "/api/v1/no-such-route", None, headers).status_code == 401


def test_another_owners_task_is_exactly_like_an_unknown_id(
    secured: Flask, keys: dict[str, str], alices_task: str
) -> None:
    client = secured.test_client()
    alices_id = alices_task.rsplit("/", 1)[-1]
    unknown_id = str(uuid.uuid4())
    for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/retry")):
        theirs = client.open(alices_task + suffix, method=method, headers=bearer(keys["bob"]))
        unknown = client.open(
            f"/api/v1/tasks/{unknown_id}{suffix}", method=method, headers=bearer(keys["bob"])
        )
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.get_data(as_text=True).replace(alices_id, "ID") == unknown.get_data(
            as_text=True
        ).replace(unknown_id, "ID")
        skip = {"X-Request-ID", "Content-Length"}
        assert {k for k, _ in theirs.headers.items() if k not in skip} == {
            k for k, _ in unknown.headers.items() if k not in skip
        }
    listing = client.get("/api/v1/tasks?limit=200", headers=bearer(keys["bob"])).json["items"]
    assert alices_id not in {t["id"] for t in listing}
    mine = client.get("/api/v1/tasks?limit=200", headers=bearer(keys["alice"])).json["items"]
    assert alices_id in {t["id"] for t in mine}
    assert client.get(alices_task, headers=bearer(keys["alice"])).status_code == 200


def test_unknown_and_foreign_ids_cost_the_same_redis_work(stack: Callable[..., Any]) -> None:
    # Timing within reason: both answers run the same Redis commands, counted on a
    # quiet server (no worker), which wall-clock timings on a shared machine cannot show.
    server = stack("redis")
    app = make_app(server.url, **SECURED, RATE_LIMIT_READ="")
    store = app.extensions["errand.redis"]
    alice, bob = create_key(store, "alice"), create_key(store, "bob")
    client = app.test_client()
    url = client.post(
        "/api/v1/tasks", json={"task": "test.echo", "params": {"value": 1}}, headers=bearer(alice)
    ).headers["Location"]
    counter = server.client()

    def commands(path: str) -> dict[str, int]:
        client.get(path, headers=bearer(bob))  # warm the key cache path equally
        counter.config_resetstat()
        assert client.get(path, headers=bearer(bob)).status_code == 404
        stats = counter.info("commandstats")
        return {k: v["calls"] for k, v in stats.items() if "resetstat" not in k}

    assert commands(url) == commands(f"/api/v1/tasks/{uuid.uuid4()}")


def test_admin_sees_every_task_and_the_operator_routes(
    secured: Flask, keys: dict[str, str], alices_task: str, worker: Worker
) -> None:
    client = secured.test_client()
    admin = bearer(keys["admin"])
    assert client.get(alices_task, headers=admin).status_code == 200
    listing = client.get("/api/v1/tasks?limit=200", headers=admin).json["items"]
    (alices,) = [t for t in listing if t["id"] == alices_task.rsplit("/", 1)[-1]]
    assert alices["owner"] == {"id": keys["alice"].split("_")[1], "name": "alice"}
    mine = client.get("/api/v1/tasks?limit=200", headers=bearer(keys["alice"])).json["items"]
    assert all("owner" not in t for t in mine)  # only admins see owners
    for path in ("/api/v1/workers", "/api/v1/queues", "/metrics"):
        assert client.get(path, headers=admin).status_code == 200
        forbidden = client.get(path, headers=bearer(keys["alice"]))
        assert forbidden.status_code == 403
        assert forbidden.mimetype == "application/problem+json"


def test_owner_can_use_every_task_route(
    secured: Flask, keys: dict[str, str], worker: Worker
) -> None:
    client = secured.test_client()
    alice = bearer(keys["alice"])
    response = client.post(
        "/api/v1/tasks", json={"task": "test.echo", "params": {"value": 3}}, headers=alice
    )
    url = response.headers["Location"]
    deadline_task = client.get(url, headers=alice).json
    assert deadline_task["id"] in url
    cancelled = client.post(
        "/api/v1/tasks",
        json={"task": "test.echo", "params": {"value": 4}, "options": {"countdown": 30}},
        headers=alice,
    ).headers["Location"]
    assert client.delete(cancelled, headers=alice).status_code == 202
    retried = client.post(cancelled + "/retry", headers=alice)
    assert retried.status_code == 202
    assert client.get(retried.headers["Location"], headers=alice).status_code == 200
    assert client.get(retried.headers["Location"], headers=bearer(keys["bob"])).status_code == 404


def test_idempotency_keys_of_two_owners_never_meet(secured: Flask, keys: dict[str, str]) -> None:
    client = secured.test_client()
    body = {"task": "test.echo", "params": {"value": 5}, "options": {"countdown": 60}}
    first = client.post(
        "/api/v1/tasks", json=body, headers={**bearer(keys["alice"]), "Idempotency-Key": "k1"}
    )
    second = client.post(
        "/api/v1/tasks", json=body, headers={**bearer(keys["bob"]), "Idempotency-Key": "k1"}
    )
    assert first.status_code == second.status_code == 202
    assert first.json["id"] != second.json["id"]


def test_keys_are_stored_as_hashes_only(secured: Flask, keys: dict[str, str]) -> None:
    store = secured.extensions["errand.redis"]
    for key in keys.values():
        for name in store.keys("errand:apikey*"):
            if store.type(name) == b"hash":
                assert key.encode() not in b"".join(store.hvals(name))
    assert len(keys["alice"]) > 50


def test_security_headers_on_every_answer(secured: Flask, keys: dict[str, str]) -> None:
    client = secured.test_client()
    for response in (
        client.get("/healthz"),
        client.get("/api/v1/task-types"),
        client.get("/api/v1/tasks", headers=bearer(keys["alice"])),
        client.get("/api/v1/nothing", headers=bearer(keys["alice"])),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert "no-store" in response.headers["Cache-Control"]
        assert "Access-Control-Allow-Origin" not in response.headers  # CORS is off


def test_cors_only_for_configured_origins(redis_server: RedisServer) -> None:
    app = make_app(redis_server.url, **SECURED, CORS_ORIGINS="https://app.example.com")
    client = app.test_client()
    preflight = client.options(
        "/api/v1/tasks",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    other = client.options(
        "/api/v1/tasks",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in other.headers


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ERRAND_ENV": "production"}, "SECRET_KEY"),
        (
            {"ERRAND_ENV": "production", "SECRET_KEY": "s" * 32, "AUTH_DISABLED": "1"},
            "AUTH_DISABLED",
        ),
        ({"ERRAND_ENV": "production", "SECRET_KEY": "s" * 32, "FLASK_DEBUG": "1"}, "FLASK_DEBUG"),
    ],
)
def test_production_refuses_unsafe_settings(env: dict[str, str], named: str) -> None:
    with pytest.raises(config.ConfigError, match=named):
        config.load(env)
    result = subprocess.run(
        [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0", "wsgi:app"],
        cwd=ROOT,
        env={"PATH": str(BIN), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert named in result.stdout + result.stderr


def test_production_refuses_debug_set_in_code(redis_server: RedisServer) -> None:
    from app import create_app

    with pytest.MonkeyPatch.context() as patch:
        for name, value in errand_env(redis_server.url, ERRAND_ENV="production").items():
            patch.setenv(name, value)
        patch.setenv("SECRET_KEY", "s" * 32)
        patch.setenv("WEBHOOK_SECRET", "w" * 32)
        patch.setenv("AUTH_DISABLED", "false")
        with pytest.raises(config.ConfigError, match="debug"):
            create_app({"DEBUG": True})


def test_development_without_keys_warns_at_every_start(
    redis_server: RedisServer, capfd: pytest.CaptureFixture[str]
) -> None:
    make_app(redis_server.url)
    assert "AUTH_DISABLED is set" in capfd.readouterr().err
    assert submit(make_app(redis_server.url).test_client(), "test.echo", {"value": 1})


def test_workers_accept_json_only(app: Flask, worker: Worker) -> None:
    offset = worker.log.stat().st_size
    celery_app = app.extensions["celery"]
    result = celery_app.send_task("test.echo", args=[{"value": 1}], serializer="pickle")
    wait_for(lambda: b"untrusted content" in worker.log.read_bytes()[offset:], 20)
    store = app.extensions["errand.redis"]
    assert store.get(f"test:runs:{result.id}") is None


def test_a_revoked_key_is_refused_once_its_cached_record_expires(
    redis_server: RedisServer,
) -> None:
    """A key that verified is not hashed again, but for no longer than its record is cached."""
    app = make_app(redis_server.url, AUTH_DISABLED="false", KEY_CACHE_SECONDS="1")
    store, client = app.extensions["errand.redis"], app.test_client()
    key = create_key(store, "soon-gone")
    path = f"/api/v1/tasks/{uuid.uuid4()}"
    assert client.get(path, headers=bearer(key)).status_code == 404  # known: verified, cached
    revoke_key(store, key.split("_", 2)[1])
    # Until the record read at the first request is a second old, the cache answers.
    wait_for(lambda: client.get(path, headers=bearer(key)).status_code == 401, timeout=1.6)
    wrong = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    assert client.get(path, headers=bearer(wrong)).status_code == 401
