"""Webhooks: a callback_url checked at submit, and the final task resource POSTed to a real
receiver on loopback by a real worker, signed, retried, refused where it must be."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from app import schemas
from app.store import webhooks as delivery_store
from app.webhooks import signature, url_problem
from app.worker.webhooks import NAME, backoff, queue_if_waiting, verdict
from devtools.devstack import free_port
from tests.support import ROOT, RedisServer, Worker, errand_env, make_app, settle, wait_for

SECRET = "webhook-test-secret-" + "s" * 16
TASKS = "/api/v1/tasks"
ECHO = {"task": "test.echo", "params": {"value": 7}}


# -- a receiver on loopback ---------------------------------------------------------------------


class Receiver:
    """A threaded HTTP server on loopback that keeps every request it gets.

    It answers with ``statuses`` in turn (then 200), each after ``delay`` seconds.
    """

    def __init__(
        self,
        statuses: tuple[int, ...] = (),
        delay: float = 0.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.statuses, self.delay = list(statuses), delay
        self.requests: list[dict[str, Any]] = []
        self.server_names: list[str | None] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                time.sleep(receiver.delay)
                with contextlib.suppress(OSError):  # a worker that gave up has gone
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda sock, name, context: self.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, host: str = "127.0.0.1", path: str = "/hook") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Dripper:
    """A receiver on loopback that answers a header line every 0.2 s, without end."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.accepted = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            threading.Thread(target=self.drip, args=(conn,), daemon=True).start()

    def drip(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for n in range(100):  # bounded: 20 s at most
                if self.stop.wait(0.2):
                    return
                conn.sendall(f"X-Drip-{n}: 1\r\n".encode())

    def __enter__(self) -> Dripper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


def verify(secret: str, header: str, body: bytes, tolerance: float = 300) -> bool:
    """The README's check of Errand-Signature: constant-time compare, timestamp tolerance."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    signed = f"{timestamp}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - timestamp) <= tolerance
    return fresh and hmac.compare_digest(expected, fields["v1"])


# -- submit: the callback_url's bad forms (fast, a private Redis, no worker) --------------------


@pytest.fixture(scope="module")
def strict(unread_redis: RedisServer) -> FlaskClient:
    """Production's rules: no private addresses, any public host (none is ever called here)."""
    return make_app(unread_redis.url, WEBHOOK_ALLOWED_HOSTS="").test_client()


LONG = "http://example.com/" + "a" * 2048


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/hook", "http or https"),
        ("javascript:alert(1)", "http or https"),
        ("example.com/hook", "http or https"),
        ("http://user:pw@example.com/hook", "no user name or password"),
        ("http://user@example.com/hook", "no user name or password"),
        (LONG, "at most 2048 characters"),
        ("http:///hook", "no host"),
        ("http://example.com:99999/", "not a URL"),
        ("http://exa mple.com/", "printable ASCII"),
        ("http://example.com/\r\nX-Evil: 1", "printable ASCII"),
        ("http://bücher.example/", "printable ASCII"),
        ("http://127.0.0.1:8000/hook", "loopback, private"),
        ("http://127.1/", "loopback, private"),
        ("http://2130706433/", "loopback, private"),
        ("http://10.1.2.3/", "loopback, private"),
        ("http://192.168.0.1/", "loopback, private"),
        ("http://169.254.169.254/latest/meta-data", "loopback, private"),
        ("http://0.0.0.0/", "loopback, private"),
        ("http://224.0.0.1/", "loopback, private"),
        ("http://240.0.0.1/", "loopback, private"),
        ("http://[::1]/", "loopback, private"),
        ("http://[::ffff:127.0.0.1]/", "loopback, private"),
        ("http://[fe80::1]/", "loopback, private"),
        ("http://[fc00::1]/", "loopback, private"),
    ],
)
def test_bad_callback_urls_are_refused(strict: FlaskClient, url: str, says: str) -> None:
    response = strict.post(TASKS, json={**ECHO, "callback_url": url})
    assert response.status_code == 422, response.json
    assert response.content_type == "application/problem+json"
    problem = response.json
    assert problem["errors"][0]["loc"] == ["callback_url"]
    assert says in problem["errors"][0]["msg"]
    assert "\r" not in response.get_data(as_text=True)


@pytest.mark.parametrize("value", [123, ["http://example.com/"], {"url": "x"}, True])
def test_callback_url_of_another_type_is_refused(strict: FlaskClient, value: Any) -> None:
    response = strict.post(TASKS, json={**ECHO, "callback_url": value})
    assert response.status_code == 422
    assert response.json["errors"][0]["loc"][0] == "callback_url"


def test_a_public_callback_url_is_kept_and_shown(strict: FlaskClient) -> None:
    url = "https://hooks.example.com/errand?token=abc"
    response = strict.post(TASKS, json={**ECHO, "callback_url": url, "options": {"countdown": 60}})
    assert response.status_code == 202, response.json
    task = response.json
    expected = {
        "url": url,
        "state": "pending",
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "delivered_at": None,
    }
    assert task["callback"] == expected
    schemas.TaskResource.model_validate(task)
    assert strict.get(task["links"]["self"]).json["callback"] == expected
    listed = strict.get(TASKS, query_string={"limit": 5}).json["items"]
    assert next(t for t in listed if t["id"] == task["id"])["callback"] == expected
    without = strict.post(TASKS, json=ECHO).json
    assert without["callback"] is None


def test_allow_private_and_allowed_hosts(unread_redis: RedisServer) -> None:
    loopback = {**ECHO, "callback_url": "http://127.0.0.1:9/hook"}
    allowing = make_app(unread_redis.url, WEBHOOK_ALLOW_PRIVATE="true").test_client()
    assert allowing.post(TASKS, json=loopback).status_code == 202
    # The tests' own setting: only loopback names may be called.
    elsewhere = {**ECHO, "callback_url": "https://hooks.example.com/"}
    refused = allowing.post(TASKS, json=elsewhere)
    assert refused.status_code == 422
    assert "WEBHOOK_ALLOWED_HOSTS" in refused.json["errors"][0]["msg"]


def test_callback_url_is_part_of_the_idempotency_key(strict: FlaskClient) -> None:
    headers = {"Idempotency-Key": '"hook-4711"'}
    body = {**ECHO, "callback_url": "https://a.example.com/"}
    first = strict.post(TASKS, json=body, headers=headers)
    again = strict.post(TASKS, json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json["id"] == again.json["id"]
    other = strict.post(
        TASKS, json={**body, "callback_url": "https://b.example.com/"}, headers=headers
    )
    assert other.status_code == 422
    assert other.json["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    bare = strict.post(TASKS, json=ECHO, headers=headers)
    assert bare.status_code == 422


WORKFLOWS = "/api/v1/workflows"
CHAIN = {"chain": [{"task": "test.add", "params": {"value": 1}}]}
LATER = {"task": "test.add", "params": {"value": 1}, "options": {"countdown": 600}}
LATER_CHAIN = {"chain": [LATER, {"task": "test.add", "params": {"value": 2}}]}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/hook", "http or https"),
        ("http://user:pw@example.com/hook", "no user name or password"),
        (LONG, "at most 2048 characters"),
        ("http://example.com/\r\nX-Evil: 1", "printable ASCII"),
        ("http://169.254.169.254/latest/meta-data", "loopback, private"),
        ("http://[::ffff:127.0.0.1]/", "loopback, private"),
        (123, "valid string"),
        (["http://example.com/"], "valid string"),
    ],
)
def test_a_workflows_bad_callback_url_is_refused(strict: FlaskClient, url: Any, says: str) -> None:
    response = strict.post(WORKFLOWS, json={**CHAIN, "callback_url": url})
    assert response.status_code == 422, response.json
    assert response.content_type == "application/problem+json"
    assert response.json["errors"][0]["loc"] == ["callback_url"]
    assert says in response.json["errors"][0]["msg"]
    assert "\r" not in response.get_data(as_text=True)


def test_a_workflows_callback_is_shown_and_part_of_its_idempotency_key(
    strict: FlaskClient,
) -> None:
    url = "https://hooks.example.com/workflows?token=abc"
    headers = {"Idempotency-Key": '"workflow-hook-1"'}
    first = strict.post(WORKFLOWS, json={**LATER_CHAIN, "callback_url": url}, headers=headers)
    assert first.status_code == 202, first.json
    workflow = first.json
    schemas.WorkflowResource.model_validate(workflow)
    expected = {"url": url, "state": "pending", "attempts": 0, "last_status": None,
                "last_error": None, "delivered_at": None}  # fmt: skip
    assert workflow["callback"] == expected
    assert strict.get(workflow["links"]["self"]).json["callback"] == expected
    again = strict.post(WORKFLOWS, json={**LATER_CHAIN, "callback_url": url}, headers=headers)
    assert again.json["id"] == workflow["id"]
    other = {**LATER_CHAIN, "callback_url": "https://other.example.com/"}
    assert strict.post(WORKFLOWS, json=other, headers=headers).status_code == 422
    assert strict.post(WORKFLOWS, json=LATER_CHAIN, headers=headers).status_code == 422
    assert strict.post(WORKFLOWS, json=LATER_CHAIN).json["callback"] is None
    strict.delete(workflow["links"]["self"])


def queued_deliveries(server: RedisServer) -> list[list[Any]]:
    """The args of every webhook delivery message waiting in the queue's lists."""
    client = server.client()
    found = []
    for key in client.keys("celery*"):
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            if message["headers"]["task"] == NAME:
                body = json.loads(base64.b64decode(message["body"]))
                found.append(body[0])
    return found


def test_a_final_state_stored_twice_queues_one_delivery(
    strict: FlaskClient, unread_redis: RedisServer
) -> None:
    body = {**ECHO, "callback_url": "https://c.example.com/", "options": {"countdown": 600}}
    task = strict.post(TASKS, json=body).json
    before = queued_deliveries(unread_redis)
    assert strict.delete(task["links"]["self"]).status_code == 202
    # The worker that meets the cancelled message at its ETA stores REVOKED again.
    backend = strict.application.extensions["celery"].backend
    backend.mark_as_revoked(task["id"], "cancelled")
    backend.mark_as_revoked(task["id"], "cancelled")
    new = [args for args in queued_deliveries(unread_redis) if args not in before]
    assert new == [[task["id"], 0]]


def test_a_redelivered_final_task_queues_its_webhook_again_until_it_started(
    strict: FlaskClient, unread_redis: RedisServer
) -> None:
    # A worker that died between storing the final state and queueing the webhook.
    task = strict.post(TASKS, json={**ECHO, "callback_url": "https://e.example.com/"}).json
    app = strict.application
    with app.app_context():
        before = queued_deliveries(unread_redis)
        queue_if_waiting(app.extensions["celery"], task["id"])
        assert [a for a in queued_deliveries(unread_redis) if a not in before] == [[task["id"], 0]]
        delivery_store.start_attempt(unread_redis.client(), task["id"], 0, 10_000)
        queue_if_waiting(app.extensions["celery"], task["id"])
        assert len(queued_deliveries(unread_redis)) == len(before) + 1


def test_a_workflow_closed_by_a_cancel_queues_one_delivery(
    strict: FlaskClient, unread_redis: RedisServer
) -> None:
    body = {**LATER_CHAIN, "callback_url": "https://w.example.com/"}
    workflow = strict.post(WORKFLOWS, json=body).json
    before = queued_deliveries(unread_redis)
    assert strict.delete(workflow["links"]["self"]).status_code == 202
    # The worker that meets the cancelled first step at its ETA stores REVOKED again.
    backend = strict.application.extensions["celery"].backend
    for task in workflow["tasks"]:
        backend.mark_as_revoked(task["id"], "cancelled")
    new = [args for args in queued_deliveries(unread_redis) if args not in before]
    assert new == [[workflow["id"], 0, "workflow"]]
    # A redelivered step of the closed workflow queues it again until an attempt started.
    app = strict.application
    with app.app_context():
        queue_if_waiting(app.extensions["celery"], workflow["tasks"][0]["id"])
        assert len(queued_deliveries(unread_redis)) == len(before) + 2
        client = unread_redis.client()
        assert delivery_store.start_attempt(client, workflow["id"], 0, 10_000, "workflow") == 1
        assert delivery_store.start_attempt(client, workflow["id"], 0, 10_000, "workflow") == 0
        queue_if_waiting(app.extensions["celery"], workflow["tasks"][0]["id"])
        assert len(queued_deliveries(unread_redis)) == len(before) + 2
    callback = strict.get(workflow["links"]["self"]).json["callback"]
    assert callback["state"] == "delivering" and callback["attempts"] == 1


def test_one_attempt_at_a_time_and_never_twice(
    strict: FlaskClient, unread_redis: RedisServer
) -> None:
    task = strict.post(TASKS, json={**ECHO, "callback_url": "https://d.example.com/"}).json
    client, task_id = unread_redis.client(), task["id"]
    assert delivery_store.start_attempt(client, task_id, 0, 10_000) == 1
    assert delivery_store.start_attempt(client, task_id, 0, 10_000) == 0  # held
    delivery_store.finish(client, task_id, "pending", 500, "the receiver answered 500")
    assert delivery_store.start_attempt(client, task_id, 0, 10_000) == 0  # a stale duplicate
    assert delivery_store.start_attempt(client, task_id, 1, 50) == 2
    time.sleep(0.1)  # its worker died mid-attempt: the lock ran out
    assert delivery_store.start_attempt(client, task_id, 1, 10_000) == 2  # taken over
    delivery_store.finish(client, task_id, "delivered", 200, None, "2026-12-01T12:00:00.000Z")
    assert delivery_store.start_attempt(client, task_id, 2, 10_000) == 0  # done
    callback = strict.get(task["links"]["self"]).json["callback"]
    assert callback["state"] == "delivered" and callback["attempts"] == 2
    assert callback["last_status"] == 200 and callback["last_error"] is None


def test_what_each_status_means() -> None:
    assert verdict(200)[0] == verdict(204)[0] == "delivered"
    assert {verdict(s)[0] for s in (408, 429, 500, 502, 503, 599)} == {"retry"}
    assert {verdict(s)[0] for s in (301, 302, 400, 401, 404, 410)} == {"failed"}
    assert "redirects are not followed" in (verdict(302)[1] or "")
    delays = [backoff(n, 1.0, 300.0) for n in range(1, 12)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0
    assert all(d <= 300.0 for d in delays) and delays[-1] >= 150.0


def test_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    header = signature(SECRET, 1_700_000_000, b'{"id":"x"}')
    expected = hmac.new(SECRET.encode(), b'1700000000.{"id":"x"}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert not verify(SECRET, header, b'{"id":"x"}')  # too old
    now = int(time.time())
    assert verify(SECRET, signature(SECRET, now, b"{}"), b"{}")
    assert not verify(SECRET, signature("another-secret", now, b"{}"), b"{}")
    assert url_problem("http://localhost:8000/", allow_private=False) is None  # a name


def test_the_document_describes_webhooks(strict: FlaskClient) -> None:
    doc = strict.get("/api/v1/openapi.json").json
    found = doc["components"]["schemas"]
    assert "callback_url" in found["Submission"]["properties"]
    assert "callback_url" in found["Submission.test.echo"]["properties"]
    assert "callback" in found["TaskResource"]["required"]
    callbacks = doc["paths"][TASKS]["post"]["callbacks"]
    hook = callbacks["taskFinished"]["{$request.body#/callback_url}"]["post"]
    names = {p["name"] for p in hook["parameters"]}
    assert names == {"Errand-Signature", "Errand-Task-Id", "Errand-Delivery-Id", "Errand-Attempt"}
    assert "callback_url" in found["WorkflowSubmission"]["properties"]
    assert "callback" in found["WorkflowResource"]["required"]
    assert "callback_url" in found["ScheduleCreate"]["properties"]
    assert "callback_url" in found["SchedulePatch"]["properties"]
    assert "callback_url" in found["ScheduleResource"]["required"]
    flows = doc["paths"][WORKFLOWS]["post"]["callbacks"]
    flow = flows["workflowFinished"]["{$request.body#/callback_url}"]["post"]
    assert {p["name"] for p in flow["parameters"]} == names - {"Errand-Task-Id"} | {
        "Errand-Workflow-Id"
    }
    body = flow["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/WorkflowResource"}
    assert "runFinished" in doc["paths"]["/api/v1/schedules"]["post"]["callbacks"]


def test_the_readme_snippet_verifies_a_signature() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Webhooks") :]
    code = section[section.index("```python") + len("```python") : section.index("```\n\n")]
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)  # the README's own snippet, as written
    body, now = b'{"id": "x"}', int(time.time())
    assert scope["verify"](SECRET, signature(SECRET, now, body), body)
    assert not scope["verify"](SECRET, signature(SECRET, now, body), body + b" ")
    assert not scope["verify"](SECRET, signature(SECRET, now - 3600, body), body)
    assert not scope["verify"](SECRET, "garbage", body)


# -- delivery: a real worker, a real receiver ---------------------------------------------------


def hook_env(redis_url: str, **extra: str) -> dict[str, str]:
    settings = {
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "WEBHOOK_TIMEOUT": "1",
        "WEBHOOK_BACKOFF": "0.2",
        "WEBHOOK_MAX_ATTEMPTS": "3",
    }
    return errand_env(redis_url, **{**settings, **extra})


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A private Redis, a worker that may call loopback, and an app on the same settings."""
    work = tmp_path_factory.mktemp("webhooks")
    server = RedisServer(work / "redis")
    server.start()
    try:
        log = work / "worker.log"
        with Worker(hook_env(server.url), log, "webhooks"):
            app = make_app(server.url, **hook_env(server.url))
            yield {"client": app.test_client(), "log": log, "app": app}
    finally:
        server.stop()


def final_callback(client: FlaskClient, url: str, timeout: float = 20) -> dict[str, Any]:
    """The task once its webhook is delivered or failed."""

    def done() -> dict[str, Any] | None:
        task = client.get(url).json
        state = (task["callback"] or {}).get("state")
        return task if state in {"delivered", "failed"} else None

    found: dict[str, Any] = wait_for(done, timeout, 0.05)
    return found


def submit_hooked(client: FlaskClient, url: str, body: dict[str, Any] = ECHO) -> dict[str, Any]:
    response = client.post(TASKS, json={**body, "callback_url": url})
    assert response.status_code == 202, response.json
    task: dict[str, Any] = response.json
    return task


@pytest.mark.slow
def test_success_is_delivered_once_signed_with_the_resource(hooked: dict[str, Any]) -> None:
    client = hooked["client"]
    with Receiver() as receiver:
        hook = receiver.url(path="/hook?token=s3cret-in-query")
        task = final_callback(client, submit_hooked(client, hook)["links"]["self"])
        settle(0.5)  # nothing more comes
        assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request["path"] == "/hook?token=s3cret-in-query"
    headers, body = request["headers"], request["body"]
    assert verify(SECRET, headers["Errand-Signature"], body)
    assert headers["Errand-Task-Id"] == task["id"]
    assert headers["Errand-Attempt"] == "1" and len(headers["Errand-Delivery-Id"]) == 36
    assert headers["Content-Type"] == "application/json"
    assert headers["Host"] == f"127.0.0.1:{receiver.port}"
    sent = json.loads(body)
    schemas.TaskResource.model_validate(sent)
    # What GET answered as it was sent: the same task, its webhook then being delivered.
    assert sent["callback"] == {**task["callback"], "state": "delivering", "delivered_at": None,
                                "last_status": None}  # fmt: skip
    assert {**sent, "callback": None} == {**task, "callback": None}
    assert sent["state"] == "SUCCESS" and sent["result"] == 7
    callback = task["callback"]
    assert callback["state"] == "delivered" and callback["attempts"] == 1
    assert callback["last_status"] == 200 and callback["last_error"] is None
    assert callback["delivered_at"] >= task["finished_at"]
    assert b"s3cret-in-query" not in hooked["log"].read_bytes()  # logs show no query
    assert f"127.0.0.1:{receiver.port}/hook".encode() in hooked["log"].read_bytes()


@pytest.mark.slow
def test_failure_is_delivered_and_a_resubmit_keeps_the_callback(hooked: dict[str, Any]) -> None:
    client = hooked["client"]
    with Receiver() as receiver:
        failing = {"task": "test.echo", "params": {"value": 3, "fail": True}}
        task = final_callback(
            client, submit_hooked(client, receiver.url(), failing)["links"]["self"]
        )
        assert task["state"] == "FAILURE" and task["callback"]["state"] == "delivered"
        retried = client.post(task["links"]["self"] + "/retry").json
        assert retried["callback"]["url"] == receiver.url()
        assert retried["callback"]["state"] == "pending"
        retried = final_callback(client, retried["links"]["self"])
        assert retried["callback"]["state"] == "delivered"
    sent = [json.loads(r["body"]) for r in receiver.requests]
    assert [(s["id"], s["state"]) for s in sent] == [
        (task["id"], "FAILURE"),
        (retried["id"], "FAILURE"),
    ]
    assert sent[0]["error"] == {"type": "ValueError", "message": "asked to fail with 3"}


@pytest.mark.slow
def test_a_retry_is_not_final_only_its_end_is_delivered(hooked: dict[str, Any]) -> None:
    client = hooked["client"]
    with Receiver() as receiver:
        flaky = {"task": "test.flaky", "params": {"failures": 1}}
        task = final_callback(client, submit_hooked(client, receiver.url(), flaky)["links"]["self"])
        settle(0.5)
        assert len(receiver.requests) == 1
    sent = json.loads(receiver.requests[0]["body"])
    assert sent["state"] == "SUCCESS" and sent["retries"] == 1
    assert task["callback"]["state"] == "delivered"


@pytest.mark.slow
def test_a_cancel_of_a_queued_task_is_delivered(hooked: dict[str, Any]) -> None:
    client = hooked["client"]
    with Receiver() as receiver:
        later = {**ECHO, "options": {"countdown": 30}}
        task = submit_hooked(client, receiver.url(), later)
        assert client.delete(task["links"]["self"]).status_code == 202
        task = final_callback(client, task["links"]["self"])
        settle(0.5)
        assert len(receiver.requests) == 1
    assert task["state"] == "REVOKED" and task["callback"]["state"] == "delivered"
    assert json.loads(receiver.requests[0]["body"])["state"] == "REVOKED"


@pytest.mark.slow
def test_500s_are_retried_until_delivered(hooked: dict[str, Any]) -> None:
    client = hooked["client"]
    with Receiver(statuses=(500, 500)) as receiver:
        task = final_callback(client, submit_hooked(client, receiver.url())["links"]["self"])
        settle(0.5)
        assert len(receiver.requests) == 3
    callback = task["callback"]
    assert callback["state"] == "delivered" and callback["attempts"] == 3
    assert callback["last_status"] == 200 and callback["last_error"] is None
    headers = [r["headers"] for r in receiver.requests]
    assert [h["Errand-Attempt"] for h in headers] == ["1", "2", "3"]
    assert len({h["Errand-Delivery-Id"] for h in headers}) == 3
    assert all(verify(SECRET, h["Errand-Signature"], r["body"]) for h, r in
               zip(headers, receiver.requests, strict=True))  # fmt: skip


@pytest.mark.slow
def test_a_404_fails_at_once(hooked: dict[str, Any]) -> None:
    client = hooked["client"]
    with Receiver(statuses=(404,)) as receiver:
        task = final_callback(client, submit_hooked(client, receiver.url())["links"]["self"])
        settle(1.0)  # no second attempt comes
        assert len(receiver.requests) == 1
    callback = task["callback"]
    assert callback["state"] == "failed" and callback["attempts"] == 1
    assert callback["last_status"] == 404
    assert callback["last_error"] == "the receiver answered 404"


@pytest.mark.slow
def test_a_slow_receiver_times_out(hooked: dict[str, Any]) -> None:
    client = hooked["client"]
    with Receiver(delay=3.0) as receiver:
        task = submit_hooked(client, receiver.url())
        started = time.monotonic()
        task = final_callback(client, task["links"]["self"], timeout=30)
        took = time.monotonic() - started
    callback = task["callback"]
    assert callback["state"] == "failed" and callback["attempts"] == 3  # WEBHOOK_MAX_ATTEMPTS
    assert callback["last_error"] == "no answer within 1 s" and callback["last_status"] is None
    assert len(receiver.requests) == 3
    assert took < 3 * 1.0 + 0.2 + 0.4 + 4  # three 1 s timeouts, two backoffs, the task itself


@pytest.mark.slow
def test_a_receiver_that_drips_its_answer_is_cut_off(hooked: dict[str, Any]) -> None:
    client = hooked["client"]
    with Dripper() as dripper:
        task = submit_hooked(client, f"http://127.0.0.1:{dripper.port}/")
        started = time.monotonic()
        task = final_callback(client, task["links"]["self"], timeout=30)
        took = time.monotonic() - started
        assert dripper.accepted == 3
    assert task["callback"]["state"] == "failed"
    assert task["callback"]["last_error"] == "no answer within 1 s"
    assert took < 3 * 1.0 + 0.2 + 0.4 + 4  # as a silent receiver: the whole exchange is bounded


@pytest.mark.slow
def test_a_name_that_resolves_to_loopback_is_refused_at_delivery(
    stack: Any, tmp_path: Path
) -> None:
    server = stack("redis")
    env = hook_env(server.url, WEBHOOK_ALLOW_PRIVATE="false")
    stack("worker", env, tmp_path / "worker.log", "strict")
    client = make_app(server.url, **env).test_client()
    with Receiver() as receiver:
        task = submit_hooked(client, receiver.url(host="localhost"))  # a name: passes the submit
        task = final_callback(client, task["links"]["self"])
        settle(0.5)
        assert receiver.requests == []
    callback = task["callback"]
    assert callback["state"] == "failed" and callback["attempts"] == 1
    assert callback["last_status"] is None
    assert callback["last_error"].startswith("localhost resolves to a loopback, private")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.mark.slow
def test_https_connects_to_the_checked_address_and_checks_the_name(
    stack: Any, tmp_path: Path
) -> None:
    """A receiver whose certificate (from a CA of the test's own) names localhost only."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "1", "-subj", "/CN=webhook-test-ca", cwd=tmp_path)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=localhost", cwd=tmp_path)  # fmt: skip
    (tmp_path / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "ext.cnf",
            cwd=tmp_path)  # fmt: skip
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    server = stack("redis")
    env = hook_env(server.url, SSL_CERT_FILE=str(tmp_path / "ca.crt"))  # the worker trusts it
    stack("worker", env, tmp_path / "worker.log", "tls")
    client = make_app(server.url, **env).test_client()
    with Receiver(tls=tls) as receiver:
        named = submit_hooked(client, f"https://localhost:{receiver.port}/hook")
        named = final_callback(client, named["links"]["self"])
        assert named["callback"]["state"] == "delivered", named["callback"]
        assert receiver.server_names == ["localhost"]  # SNI carried the name
        assert receiver.requests[0]["headers"]["Host"] == f"localhost:{receiver.port}"
        # The same receiver by its address: the certificate does not name it.
        by_address = submit_hooked(client, f"https://127.0.0.1:{receiver.port}/hook")
        by_address = final_callback(client, by_address["links"]["self"])
        assert len(receiver.requests) == 1
    callback = by_address["callback"]
    assert callback["state"] == "failed" and callback["attempts"] == 3
    assert "certificate" in callback["last_error"].lower()


# -- a workflow's webhook: the final workflow resource, once ------------------------------------


def final_workflow_callback(client: FlaskClient, url: str, timeout: float = 30) -> dict[str, Any]:
    """The workflow once its webhook is delivered or failed."""

    def done() -> dict[str, Any] | None:
        workflow = client.get(url).json
        state = (workflow["callback"] or {}).get("state")
        return workflow if state in {"delivered", "failed"} else None

    found: dict[str, Any] = wait_for(done, timeout, 0.05)
    return found


def add_step(value: int, **params: Any) -> dict[str, Any]:
    return {"task": "test.add", "params": {"value": value, **params}}


@pytest.mark.slow
def test_a_chains_final_workflow_resource_is_delivered_once_signed(
    hooked: dict[str, Any],
) -> None:
    client = hooked["client"]
    with Receiver() as receiver:
        body = {"chain": [add_step(1), add_step(2), add_step(3)], "callback_url": receiver.url()}
        response = client.post(WORKFLOWS, json=body)
        assert response.status_code == 202, response.json
        workflow = final_workflow_callback(client, response.headers["Location"])
        settle(0.5)  # nothing more comes
        assert len(receiver.requests) == 1
    headers, sent = receiver.requests[0]["headers"], receiver.requests[0]["body"]
    assert verify(SECRET, headers["Errand-Signature"], sent)
    assert headers["Errand-Workflow-Id"] == workflow["id"] and "Errand-Task-Id" not in headers
    assert headers["Errand-Attempt"] == "1"
    resource = json.loads(sent)
    schemas.WorkflowResource.model_validate(resource)
    assert resource["state"] == "SUCCESS" and resource["result"]["total"] == 6
    assert [t["state"] for t in resource["tasks"]] == ["SUCCESS"] * 3
    assert {**resource, "callback": None} == {**workflow, "callback": None}
    assert workflow["callback"]["state"] == "delivered" and workflow["callback"]["attempts"] == 1
    assert workflow["callback"]["last_status"] == 200
    for task in workflow["tasks"]:  # the steps have no webhook of their own
        assert client.get(task["links"]["self"]).json["callback"] is None


@pytest.mark.slow
def test_a_workflow_with_a_failing_step_delivers_failure_once(hooked: dict[str, Any]) -> None:
    client = hooked["client"]
    with Receiver(statuses=(503,)) as receiver:  # and a retry after a 503
        steps = [add_step(1), add_step(2, fail=True), add_step(3), add_step(4)]
        response = client.post(WORKFLOWS, json={"chain": steps, "callback_url": receiver.url()})
        assert response.status_code == 202, response.json
        workflow = final_workflow_callback(client, response.headers["Location"])
        settle(1.0)
        assert len(receiver.requests) == 2
    bodies = [json.loads(r["body"]) for r in receiver.requests]
    assert all(
        verify(SECRET, r["headers"]["Errand-Signature"], r["body"]) for r in receiver.requests
    )
    assert [r["headers"]["Errand-Attempt"] for r in receiver.requests] == ["1", "2"]
    assert bodies[0]["state"] == bodies[1]["state"] == "FAILURE"
    assert [t["state"] for t in bodies[1]["tasks"]] == ["SUCCESS", "FAILURE", "REVOKED", "REVOKED"]
    callback = workflow["callback"]
    assert callback["state"] == "delivered" and callback["attempts"] == 2


@pytest.mark.slow
def test_a_cancelled_workflow_delivers_revoked_once(hooked: dict[str, Any]) -> None:
    client = hooked["client"]
    with Receiver() as receiver:
        steps = [add_step(1, seconds=20), add_step(2)]
        response = client.post(WORKFLOWS, json={"chain": steps, "callback_url": receiver.url()})
        url = response.headers["Location"]
        first = response.json["tasks"][0]["links"]["self"]
        wait_for(lambda: client.get(first).json["state"] == "STARTED", 15)
        assert client.delete(url).status_code == 202
        workflow = final_workflow_callback(client, url)
        settle(1.0)
        assert len(receiver.requests) == 1
    sent = json.loads(receiver.requests[0]["body"])
    assert sent["state"] == "REVOKED" and sent["cancelled_at"]
    assert [t["state"] for t in sent["tasks"]] == ["REVOKED", "REVOKED"]
    assert workflow["callback"]["state"] == "delivered"
