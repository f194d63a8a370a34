"""The OpenAPI document: valid, complete, true to every real answer, and fuzzed by schemathesis.

The real answers come from the API under gunicorn, against a private Redis and a real
worker; each is checked against the document (its status, media type, headers and body
schema) and against the pydantic model the document names for it.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any, get_args

import jsonschema_rs
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import sync_playwright
from pydantic import BaseModel

from app import schemas
from app.jobs.resource import FINAL_STATES, STATES
from app.store.apikeys import create_key
from app.web import openapi
from devtools.devstack import free_port
from tests.support import BIN, Api, RedisServer, Worker, errand_env, make_app, wait_for

SPEC = "/api/v1/openapi.json"
TASKS = "/api/v1/tasks"
JSON_MEDIA = {"application/json", "application/problem+json"}
# Routes the lead is landing; their checks skip until app.url_map has them.
LIVE_ROUTES = {"/api/v1/tasks/{task_id}/events", "/api/v1/tasks/{task_id}/stream-token"}
NO_SUCH_TASK = "00000000-0000-4000-8000-000000000000"


# -- the document and the routes ----------------------------------------------------------------


def routes(app: Flask) -> set[tuple[str, str]]:
    """(path, method) of every route but Flask's static files and the page, in OpenAPI's form."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("page."):
            continue
        path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
        found |= {(path, m) for m in rule.methods or () if m not in {"HEAD", "OPTIONS"}}
    return found


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }


def live_routes_missing(app: Flask) -> set[str]:
    present = {path for path, _ in routes(app)}
    return LIVE_ROUTES - present


def test_document_is_valid_openapi_31(client: FlaskClient) -> None:
    doc = client.get(SPEC).json
    assert doc["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(doc).validate()  # OpenAPI 3.1's own JSON Schema
    for name, schema in doc["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name  # each a JSON Schema 2020-12
    broken = json.loads(json.dumps(doc))
    del broken["paths"]["/healthz"]["get"]["responses"]["200"]["description"]
    with pytest.raises(jsonschema_rs.ValidationError):  # the validator does validate
        schemathesis.openapi.from_dict(broken).validate()


def test_document_lists_every_route(app: Flask, client: FlaskClient) -> None:
    doc = client.get(SPEC).json
    missing = live_routes_missing(app)
    assert routes(app) == {(path, m) for path, m in documented(doc) if path not in missing}
    ids = [
        op["operationId"]
        for item in doc["paths"].values()
        for op in item.values()
        if "operationId" in op
    ]
    assert len(ids) == len(set(ids)) == len(documented(doc))


def test_document_is_made_from_the_code(app: Flask, client: FlaskClient) -> None:
    doc = client.get(SPEC).json
    components = doc["components"]["schemas"]
    assert set(get_args(schemas.State)) == STATES
    assert components["TaskResource"]["properties"]["state"]["enum"] == list(
        get_args(schemas.State)
    )
    registry = app.extensions["errand.task_types"]
    listing = {
        t["name"]: t["params_schema"] for t in client.get("/api/v1/task-types").json["items"]
    }
    assert set(listing) == set(registry)
    for name, task_type in registry.items():
        variant = components[f"Submission.{name}"]
        assert variant["properties"]["task"] == {"const": name}
        params = variant["properties"]["params"]["$ref"].rsplit("/", 1)[-1]
        expected = task_type.params.model_json_schema(ref_template="#/components/schemas/{model}")
        expected.pop("$defs", None)
        assert components[params] == expected
        assert listing[name]["properties"] == task_type.params.model_json_schema()["properties"]
    query = {p["name"]: p for p in doc["paths"][TASKS]["get"]["parameters"] if "name" in p}
    assert set(query) == set(schemas.Filters.model_fields)
    assert query["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 200,
        "default": 50,
    }
    assert query["task"]["schema"]["enum"] == sorted(registry)


def test_metrics_public_is_documented_so(redis_server: RedisServer) -> None:
    doc = make_app(redis_server.url, METRICS_PUBLIC="true").test_client().get(SPEC).json
    metrics = doc["paths"]["/metrics"]["get"]
    assert metrics["security"] == [] and "401" not in metrics["responses"]
    assert "401" in doc["paths"]["/api/v1/workers"]["get"]["responses"]


def test_document_is_made_once(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = client.get(SPEC)
    monkeypatch.setattr(openapi, "document", lambda app: pytest.fail("made again"))
    again = client.get(SPEC)
    assert again.status_code == 200 and again.data == first.data


class Links(HTMLParser):
    """Every src and href of a page, and whether any script is inline."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_script = False
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value or "" for name, value in attrs if name in {"src", "href"}]
        self.in_script = tag == "script"
        if tag == "style" or any(name == "style" or name.startswith("on") for name, _ in attrs):
            self.inline_script = True

    def handle_data(self, data: str) -> None:
        if self.in_script and data.strip():
            self.inline_script = True

    def handle_endtag(self, tag: str) -> None:
        self.in_script = False


def test_docs_page_uses_only_its_own_files(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "style-src 'self';" in policy
    assert "unsafe" not in policy and "http" not in policy
    links = Links()
    links.feed(page.get_data(as_text=True))
    assert not links.inline_script
    assert len(links.urls) >= 4
    for url in links.urls:
        assert url.startswith("/docs/"), url  # no CDN, no other host
        with client.get(url) as asset:  # a file's answer holds it open until closed
            assert asset.status_code == 200, url
            assert asset.mimetype == openapi.ASSETS[url.removeprefix("/docs/")]
            assert len(asset.data) > 100
    assert client.get("/docs/index.html").status_code == 404  # only the files the page uses


# -- checking an answer against the document ----------------------------------------------------


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        kind, name = node["$ref"].split("/")[-2:]
        node = doc["components"][kind][name]
    return node


def validate(doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str) -> None:
    root = {**schema, "components": doc["components"]}
    validator = jsonschema_rs.Draft202012Validator(root, validate_formats=True)
    errors = [error.message for error in validator.iter_errors(value)]
    assert not errors, (where, errors, value)


def header_value(raw: str, schema: dict[str, Any]) -> Any:
    return int(raw) if schema.get("type") == "integer" and raw.isdigit() else raw


Answer = tuple[int, Any, Any]


def conform(doc: dict[str, Any], path: str, method: str, answer: Answer) -> Any:
    """Check one real answer against the document; the body as the model it names, if JSON.

    ``path`` is the document's (``/api/v1/tasks/{task_id}``).
    """
    status, headers, body = answer
    where = f"{method} {path} {status}"
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{where}: the status is not documented ({body})"
    response = resolve(doc, responses[str(status)])
    for name, header in response.get("headers", {}).items():
        header = resolve(doc, header)
        raw = headers.get(name)
        if raw is None:
            assert not header.get("required"), f"{where}: no {name} header"
            continue
        validate(doc, header["schema"], header_value(raw, header["schema"]), f"{where} {name}")
    content = response.get("content")
    if not content:
        assert not body, f"{where}: a body where none is documented"
        return None
    media = headers.get("Content-Type", "").split(";")[0].strip()
    assert media in content, f"{where}: {media} is not documented"
    schema = content[media].get("schema")
    if media not in JSON_MEDIA or schema is None:
        return body
    validate(doc, schema, body, where)
    if "$ref" not in schema:
        return body
    model: type[BaseModel] = getattr(schemas, schema["$ref"].rsplit("/", 1)[-1])
    return model.model_validate(body, strict=True)


# -- the running stack ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A private Redis and a real worker; each test starts its API with the settings it needs."""
    work = tmp_path_factory.mktemp("openapi")
    server = RedisServer(work / "redis")
    server.start()
    try:
        with Worker(errand_env(server.url), work / "worker.log", "openapi") as worker:
            yield {"server": server, "worker": worker, "work": work}
    finally:
        server.stop()


def api_env(running: dict[str, Any], **extra: str) -> dict[str, str]:
    return errand_env(running["server"].url, AUTH_DISABLED="false", **extra)


class Caller:
    """Calls the API with a key and checks every answer against the document."""

    def __init__(self, api: Api, doc: dict[str, Any], key: str) -> None:
        self.api, self.doc, self.key = api, doc, key
        self.checked: set[tuple[str, str, int]] = set()

    def __call__(
        self,
        method: str,
        path: str,
        route: str,
        body: Any = None,
        key: str | None = None,
        **headers: str,
    ) -> tuple[int, Any, Any]:
        status, answer_headers, answer = self.api.call(
            method, path, body, key=self.key if key is None else key, headers=headers
        )
        assert status, f"{method} {path}: no answer"
        self.checked.add((route, method, status))
        return (
            status,
            answer_headers,
            conform(self.doc, route, method, (status, answer_headers, answer)),
        )


JOB = {"task": "demo.progress", "params": {"steps": 3, "delay": 0.3}}
SLOW = {"task": "demo.progress", "params": {"steps": 4, "delay": 0.5}}
LATER = {"task": "demo.progress", "params": {"steps": 1, "delay": 0}, "options": {"countdown": 600}}
TASK = TASKS + "/{task_id}"


def follow(call: Caller, url: str, until: set[str]) -> set[str]:
    """Poll a task (each answer checked) until one of ``until``; every state seen."""
    seen: set[str] = set()

    def reached() -> bool:
        status, _, task = call("GET", url, TASK)
        assert status == 200
        seen.add(task.state)
        return task.state in until

    wait_for(reached, 30, 0.02)
    return seen


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_real_answers_conform(running: dict[str, Any]) -> None:
    client = running["server"].client()
    user, busy, admin = (
        create_key(client, "alice"),
        create_key(client, "busy"),
        create_key(client, "ops", admin=True),
    )
    env = api_env(running, IN_FLIGHT_LIMIT="3")
    with Api(env, running["work"] / "api.log", workers=1) as api:
        doc = api.call("GET", SPEC)[2]
        call = Caller(api, doc, user)
        as_admin = Caller(api, doc, admin)

        assert call("GET", "/healthz", "/healthz", key="")[2].status == "ok"
        wait_for(lambda: call("GET", "/readyz", "/readyz", key="")[0] == 200, 20)
        call("GET", SPEC, SPEC, key="")
        call("GET", "/docs", "/docs", key="")
        call("GET", "/docs/swagger-ui.css", "/docs/{filename}", key="")
        assert call("GET", "/docs/app.py", "/docs/{filename}", key="")[0] == 404

        types = call("GET", "/api/v1/task-types", "/api/v1/task-types")[2]
        assert {"demo.progress", "email.send", "email.bulk"} <= {t.name for t in types.items}

        # Who may call: 401 without a key or with a wrong one, 403 for operator routes.
        assert call("GET", TASKS, TASKS, key="")[0] == 401
        assert call("GET", TASKS, TASKS, key="erd_0_wrong")[0] == 401
        for path in ("/api/v1/workers", "/api/v1/queues", "/metrics"):
            assert call("GET", path, path)[0] == 403

        # Submits, and each way a submit is refused.
        status, headers, task = call("POST", TASKS, TASKS, JOB, **{"X-Request-ID": "trace-42"})
        assert status == 202 and task.state == "PENDING" and headers["X-Request-ID"] == "trace-42"
        assert headers["Location"] == task.links.self and headers["Retry-After"] == "1"
        assert headers["RateLimit-Policy"].startswith('"submit";')
        assert (
            call("GET", task.links.self, TASK, **{"X-Request-ID": "no spaces"})[1]["X-Request-ID"]
            != "no spaces"
        )
        once = {"Idempotency-Key": '"openapi-1"'}
        first = call("POST", TASKS, TASKS, LATER, **once)[2]
        again = call("POST", TASKS, TASKS, LATER, **once)
        assert again[0] == 202 and again[2].id == first.id
        assert first.eta and first.eta > first.created_at and task.eta is None
        assert call("POST", TASKS, TASKS, JOB, **once)[0] == 422
        assert call("POST", TASKS, TASKS, JOB, **{"Idempotency-Key": '""'})[0] == 400
        assert call("POST", TASKS, TASKS, [JOB])[0] == 400
        assert call("POST", TASKS, TASKS, JOB, **{"Content-Type": "text/plain"})[0] == 415
        refused = call("POST", TASKS, TASKS, {"task": "demo.progress", "params": {"steps": 0}})
        assert refused[0] == 422 and refused[2].errors[0].loc[0] == "params"
        assert call("POST", TASKS, TASKS, {"task": "no.such"})[0] == 422

        # Every state a task reaches, each answer checked.
        seen = {task.state} | follow(call, task.links.self, {"SUCCESS"})
        assert {"PENDING", "PROGRESS", "SUCCESS"} <= seen
        done = call("GET", task.links.self, TASK)[2]
        assert done.result == {"steps": 3} and done.finished_at
        retrying = call("POST", TASKS, TASKS, {"task": "demo.progress",
                        "params": {"steps": 2, "delay": 0.5, "retry_at": 1}})[2]  # fmt: skip
        failing = call("POST", TASKS, TASKS, {"task": "demo.progress",
                       "params": {"steps": 2, "delay": 0, "fail_at": 2}})[2]  # fmt: skip
        assert "RETRY" in follow(call, retrying.links.self, {"RETRY"})
        follow(call, failing.links.self, {"FAILURE"})
        failed = call("GET", failing.links.self, TASK)[2]
        assert failed.error.type == "DemoError" and failed.finished_at

        # Cancel and retry.
        cancelled = call("DELETE", first.links.self, TASK)
        assert cancelled[0] == 202 and cancelled[2].state == "REVOKED"
        assert call("DELETE", first.links.self, TASK)[0] == 409
        status, headers, retried = call("POST", failing.links.self + "/retry", TASK + "/retry")
        assert status == 202 and retried.links.retry_of == failing.links.self
        assert headers["Location"] == retried.links.self
        assert call("GET", failing.links.self, TASK)[2].links.retried_by == retried.links.self
        again = call("POST", failing.links.self + "/retry", TASK + "/retry")
        assert again[0] == 202 and again[2].id == retried.id  # retried once
        assert call("POST", task.links.self + "/retry", TASK + "/retry")[0] == 409
        for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/retry")):
            for task_id in (NO_SUCH_TASK, "not-a-task"):
                assert call(method, f"{TASKS}/{task_id}{suffix}", TASK + suffix)[0] == 404
        # Another key's task is not found, as if unknown.
        assert as_admin("GET", task.links.self, TASK)[0] == 200
        other = create_key(client, "bob")
        assert call("GET", task.links.self, TASK, key=other)[0] == 404

        # Listings.
        page = call("GET", TASKS + "?limit=2", TASKS)[2]
        assert len(page.items) == 2 and page.next_cursor
        assert "owner" not in page.items[0].model_fields_set  # for admin keys only
        owners = {t.owner.name for t in as_admin("GET", TASKS, TASKS)[2].items if t.owner}
        assert "alice" in owners
        rest = call("GET", f"{TASKS}?limit=200&cursor={page.next_cursor}", TASKS)[2]
        assert rest.next_cursor is None
        assert call("GET", TASKS + "?state=SUCCESS&task=demo.progress", TASKS)[2].items
        for query in ("state=DONE", "task=no.such", "limit=0", "limit=many", "cursor=zzz"):
            assert call("GET", f"{TASKS}?{query}", TASKS)[0] == 422, query

        # What operators see.
        workers = as_admin("GET", "/api/v1/workers", "/api/v1/workers")[2]
        assert [w.name for w in workers.items if w.name.startswith("openapi@")]
        queues = as_admin("GET", "/api/v1/queues", "/api/v1/queues")[2]
        assert [q.name for q in queues.items] == ["celery"]
        metrics = as_admin("GET", "/metrics", "/metrics")
        assert metrics[0] == 200 and "errand_submits_total" in metrics[2]
        assert metrics[1]["Content-Type"] == openapi.METRICS_TYPE  # as the document says

        # The in-flight cap.
        for _ in range(3):
            assert call("POST", TASKS, TASKS, LATER, key=busy)[0] == 202
        status, headers, _ = call("POST", TASKS, TASKS, LATER, key=busy)
        assert status == 429 and headers["RateLimit-Policy"] == '"in-flight";q=3'
        assert int(headers["Retry-After"]) >= 1

    checked = call.checked | as_admin.checked
    expected = {(TASKS, "POST", s) for s in (202, 400, 415, 422, 429)} | {(TASKS, "GET", 401)}
    expected |= {(TASK, "GET", 200), (TASK, "GET", 404), (TASK, "DELETE", 409)}
    assert expected <= checked, expected - checked


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_live_answers_conform(running: dict[str, Any]) -> None:
    app = make_app(running["server"].url)
    missing = live_routes_missing(app)
    if missing:
        pytest.skip(f"the live routes are not there yet: {sorted(missing)}")
    key = create_key(running["server"].client(), "carol")
    env = api_env(running, WAIT_LIMIT="2", SSE_HEARTBEAT="1")
    with Api(env, running["work"] / "live-api.log", workers=1) as api:
        doc = api.call("GET", SPEC)[2]
        call = Caller(api, doc, key)
        task = call("POST", TASKS, TASKS, SLOW)[2]
        url = task.links.self
        etag = call("GET", url, TASK)[1]["ETag"]
        assert call("GET", url, TASK, **{"If-None-Match": etag})[0] in {200, 304}
        changed = call("GET", url + "?wait=10", TASK, **{"If-None-Match": etag})
        assert changed[0] == 200 and changed[1]["ETag"] != etag
        assert call("GET", url + "?wait=31", TASK)[0] == 422
        follow(call, url, FINAL_STATES)
        final_etag = call("GET", url, TASK)[1]["ETag"]
        assert call("GET", url, TASK, **{"If-None-Match": final_etag})[0] == 304

        later = call("POST", TASKS, TASKS, LATER)[2]
        minted = call("POST", later.links.self + "/stream-token", TASK + "/stream-token")[2]
        assert minted.events.startswith(later.links.self + "/events?token=")
        assert (
            call("POST", f"{TASKS}/{NO_SUCH_TASK}/stream-token", TASK + "/stream-token")[0] == 404
        )

        # The event stream of a task from submit to its end, with a stream token (no header).
        watched = call("POST", TASKS, TASKS, JOB)[2]
        token = call("POST", watched.links.self + "/stream-token", TASK + "/stream-token")[2]
        received = list(read_events(api, token.events))
        assert received and received[-1][1].state == "SUCCESS"
        assert all(event == "state" for event, _, _ in received)
        for _, task_seen, event_id in received:
            validate(doc, doc["components"]["headers"]["ETag"]["schema"], f'"{event_id}"', "id")
            assert isinstance(task_seen, schemas.TaskResource)

        events = TASK + "/events"
        assert call("GET", f"{later.links.self}/events?token=forged", events, key="")[0] == 401
        assert call("GET", f"{TASKS}/{NO_SUCH_TASK}/events", events)[0] == 404
        # The cap on open waits: two streams held open, the third is refused.
        held = [open_stream(api, later.links.self + "/events", key) for _ in range(2)]
        try:
            status, headers, _ = call("GET", later.links.self + "/events", events)
            assert status == 429 and headers["RateLimit-Policy"] == '"waits";q=2'
        finally:
            for connection in held:
                connection.close()


def open_stream(api: Api, path: str, key: str) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=20)
    connection.request("GET", path, headers={"Authorization": f"Bearer {key}"})
    reply = connection.getresponse()
    assert reply.status == 200
    reply.readline()  # the stream is open: its first line came
    return connection


def read_events(api: Api, path: str) -> Iterator[tuple[str, schemas.TaskResource, str]]:
    """(event, task, id) of every event until the server ends the stream; data checked strictly."""
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=20)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        assert reply.status == 200
        assert reply.getheader("Content-Type", "").startswith("text/event-stream")
        fields: dict[str, str] = {}
        for raw in reply:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                continue  # a heartbeat
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            elif "data" in fields:
                task = schemas.TaskResource.model_validate_json(fields["data"], strict=True)
                yield fields.get("event", "message"), task, fields["id"]
                fields = {}
            else:
                fields = {}
    finally:
        connection.close()


def in_process(client: FlaskClient, method: str, path: str, **kwargs: Any) -> Answer:
    response = client.open(path, method=method, **kwargs)
    return response.status_code, response.headers, response.get_json(silent=True) or response.text


def test_too_large_conforms(client: FlaskClient) -> None:
    """In process: over a socket, the server may close before the client has sent it all."""
    doc = client.get(SPEC).json
    huge = {"task": "demo.progress", "params": {"pad": "x" * (1024 * 1024)}}
    assert conform(doc, TASKS, "POST", in_process(client, "POST", TASKS, json=huge)).status == 413


def test_unavailable_answers_conform() -> None:
    """With Redis away: 503 problems with Retry-After, from the key check and from /readyz."""
    app = make_app(f"redis://127.0.0.1:{free_port()}/0", AUTH_DISABLED="false", REDIS_TIMEOUT="0.2")
    client = app.test_client()
    doc = client.get(SPEC).json
    ready = conform(doc, "/readyz", "GET", in_process(client, "GET", "/readyz"))
    assert ready.status == 503 and "result_store" in ready.detail
    key = {"Authorization": "Bearer erd_abc_secret"}
    listing = conform(doc, TASKS, "GET", in_process(client, "GET", TASKS, headers=key))
    assert listing.status == 503


# -- /docs in a browser, and schemathesis --------------------------------------------------------


@pytest.mark.slow
def test_docs_render_in_a_browser(running: dict[str, Any]) -> None:
    """Chromium renders every operation and calls the API, with no policy violation."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: apt-get install chromium (scripts/test does)")
    env = api_env(running)
    with Api(env, running["work"] / "docs-api.log", workers=1) as api, sync_playwright() as p:
        here = f"http://127.0.0.1:{api.port}/"
        operations = len(documented(api.call("GET", SPEC)[2]))
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on(
                "request",
                lambda r: None if r.url.startswith((here, "data:")) else problems.append(r.url),
            )
            page.add_init_script(
                "document.addEventListener('securitypolicyviolation', e => console.error("
                "'CSP: ' + e.violatedDirective + ' ' + e.blockedURI))"
            )
            page.goto(here + "docs")
            page.wait_for_selector("#operations-tasks-submitTask", timeout=20_000)
            assert page.locator(".opblock").count() == operations
            page.click("#operations-tasks-submitTask .opblock-summary")
            page.wait_for_selector("#operations-tasks-submitTask .responses-table", timeout=10_000)
            healthz = "#operations-health-healthz"
            page.click(f"{healthz} .opblock-summary")
            page.click(f"{healthz} .try-out__btn")
            page.click(f"{healthz} .execute")
            status = page.locator(f"{healthz} .live-responses-table tbody .response-col_status")
            status.first.wait_for(timeout=10_000)
            assert status.first.inner_text().strip() == "200"
            assert not problems, problems
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_schemathesis_finds_nothing(running: dict[str, Any]) -> None:
    """Every route but the event stream, fuzzed: no 500, every answer as the document says."""
    key = create_key(running["server"].client(), "fuzz", admin=True)
    work = running["work"] / "schemathesis"
    work.mkdir()
    config = work / "schemathesis.toml"
    # A body past MAX_CONTENT_LENGTH is refused with 413, which this check does not expect.
    config.write_text(
        "[checks.negative_data_rejection]\nexpected-statuses = "
        + json.dumps(["400", "401", "403", "404", "405", "406", "409", "413", "415", "422"])
        + "\n"
    )
    with Api(api_env(running), running["work"] / "fuzz-api.log") as api:
        command = [
            *(str(BIN / "schemathesis"), "--config-file", str(config), "run"),
            f"http://127.0.0.1:{api.port}{SPEC}",
            *("--header", f"Authorization: Bearer {key}"),
            *("--checks", "all"),
            # Valid params can still be refused (an email address, fail_at past steps): 422.
            # A cancelled task is still there (REVOKED): what use_after_free takes for a bug.
            *("--exclude-checks", "positive_data_acceptance,use_after_free"),
            # A stream answers until the task ends: read in test_live_answers_conform.
            *("--exclude-path", "/api/v1/tasks/{task_id}/events"),
            # One worker: Python 3.11's ast.parse is not thread-safe (CPython gh-106905), and
            # hypothesis parses its own source while it generates.
            *("--max-examples", "30", "--seed", "7", "--workers", "1"),
            # A long-poll may take its whole wait (30 s at most) when nothing changes, so the
            # run has a time budget rather than an unknown sum of waits.
            *("--max-time", "60", "--request-timeout", "40", "--max-response-time", "35"),
            *("--generation-database", "none", "--no-color"),
        ]
        result = subprocess.run(
            command, cwd=work, capture_output=True, text=True, timeout=360, check=False
        )
    log = running["work"] / "schemathesis.log"
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"{log}:\n{result.stdout[-6000:]}{result.stderr[-2000:]}"
