"""The fast path (``app.web.fast``) answers every request exactly as Flask's views do.

Each variant goes to two apps on one Redis, one with the fast path and one with
``FAST_PATH=false``, each with keys and tasks of its own, one after the other. Both
must answer alike: status, every header in order (a generated request id apart),
the body, the Redis commands run (``INFO commandstats``) and the metrics counted.
The ids, times and ETags of each app's own tasks are named in the order they first
appear, and every ETag is checked against its body first. A variant marked fast
must have been answered by the fast path (Flask's ``request_started`` not sent).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import request_started

from app.metrics import REQUEST_SECONDS, SUBMITS
from app.store import apikeys, scripts
from tests.support import Api, errand_env, make_app

ECHO = {"task": "test.echo", "params": {"value": 1}}
# Windows of an hour, so that what is left of them is seconds, not a rounding of TTL.
ROOM = {
    "RATE_LIMIT_SUBMIT": "100000 per hour",
    "RATE_LIMIT_READ": "100000 per hour",
    "AUTH_FAILURE_LIMIT": "100000 per hour",
}
UNKNOWN = "/api/v1/tasks/8a0c1f0e-4b9e-4f5e-9d55-3c6f7f1e2b10"
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ETAG = re.compile(rb'"[0-9a-f]{16}"')
TIME = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z")
SETUP = {f"cmdstat_{name}" for name in ("info", "hello", "ping", "client|setinfo", "select")}
RESET = re.compile(rb"(t=|^)(\d{2,})$")  # seconds left of a window: timing, not content


class Names:
    """Names for one app's own ids, ETags and times, in the order they first appear."""

    def __init__(self) -> None:
        self.names: dict[bytes, bytes] = {}

    def header(self, header: str, value: str) -> str:
        if header == "X-Request-ID" and re.fullmatch(r"[0-9a-f]{32}", value):
            return "<generated>"
        if header in {"RateLimit", "Retry-After"}:
            value = RESET.sub(rb"\1<s>", value.encode()).decode()
        return self.body(value.encode()).decode()

    def body(self, data: bytes) -> bytes:
        def named(found: re.Match[bytes]) -> bytes:
            return self.names.setdefault(found[0], b"<%d>" % len(self.names))

        return TIME.sub(b"<time>", ETAG.sub(named, UUID.sub(named, data)))


class World:
    """One app (with or without the fast path), its keys, and what it answered so far."""

    def __init__(self, url: str, fast: bool, **env: str) -> None:
        settings = {"AUTH_DISABLED": "false", "KEY_CACHE_SECONDS": "3600", **ROOM, **env}
        self.app = make_app(url, FAST_PATH=str(fast).lower(), **settings)
        self.client = self.app.test_client()
        # Windows per client address (failed auth, AUTH_DISABLED) are each app's own too.
        self.client.environ_base["REMOTE_ADDR"] = "127.0.0.1" if fast else "127.0.0.2"
        self.redis = self.app.extensions["errand.redis"]
        self.keys = {name: apikeys.create_key(self.redis, name) for name in ("mine", "theirs")}
        self.keys["admin"] = apikeys.create_key(self.redis, "admin", admin=True)
        self.keys["revoked"] = apikeys.create_key(self.redis, "revoked")
        apikeys.revoke_key(self.redis, apikeys.key_id_of(self.keys["revoked"]) or "")
        self.made: list[str] = []  # the Location of every 202, in order
        self.etags: dict[str, str] = {}  # the last ETag seen of each task
        self.named = Names()
        self.wrong_key = f"erd_{secrets.token_hex(6)}_wrong"  # each app caches its own lookups
        for script in scripts.Script.made:  # loaded: both apps run EVALSHA alike
            self.redis.script_load(script.text)
        self.flask_requests = 0
        self.redis_up = True
        request_started.connect(self._count, self.app, weak=False)

    def _count(self, sender: Any, **extra: Any) -> None:
        self.flask_requests += 1

    def auth(self, name: str = "mine") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def task(self, index: int) -> str:
        return self.made[index]

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[Any, ...]:
        """The answer, normalised, with the Redis commands and metrics it cost."""
        commands, counted, flask = self._commands(), _metrics(), self.flask_requests
        response = self.client.open(path, method=method, **kwargs)
        commands = _delta(commands, self._commands())
        counted = _delta(counted, _metrics())
        body = response.get_data()
        headers = response.headers.to_wsgi_list()
        etag = response.headers.get("ETag")
        if etag and body:
            assert etag == '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'
        if "Location" in response.headers:
            self.made.append(response.headers["Location"])
        if etag and body and response.status_code in {200, 202}:
            self.etags[json.loads(body)["links"]["self"]] = etag
        named = self.named
        answer = (response.status, [(k, named.header(k, v)) for k, v in headers], named.body(body))
        return answer, commands, counted, self.flask_requests == flask

    def _commands(self) -> dict[str, int]:
        """Commands run so far, but INFO and what opening a connection runs (Celery's pools
        are the process's, opened by whichever app needs one first)."""
        if not self.redis_up:
            return {}
        stats = self.redis.info("commandstats")
        return {name: value["calls"] for name, value in stats.items() if name not in SETUP}


def _metrics() -> dict[Any, float]:
    counts = {}
    for metric in (REQUEST_SECONDS, SUBMITS):
        for family in metric.collect():
            for sample in family.samples:
                if sample.name.endswith(("_count", "_total")):
                    counts[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return counts


def _delta(before: dict[Any, Any], after: dict[Any, Any]) -> dict[Any, Any]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


Variant = tuple[str, bool, Callable[[World], tuple[str, str, dict[str, Any]]]]


Header = Callable[[World], str] | str


def post(
    body: Any = ECHO, key: str = "mine", content_type: str = "application/json", **headers: Header
) -> Callable[[World], tuple[str, str, dict[str, Any]]]:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)

    def make(world: World) -> tuple[str, str, dict[str, Any]]:
        sent = {k: v(world) if callable(v) else v for k, v in headers.items()}
        sent = {**(world.auth(key) if key else {}), **sent}
        return (
            "POST",
            "/api/v1/tasks",
            {"data": data, "content_type": content_type, "headers": sent},
        )

    return make


def get(
    path: Callable[[World], str], key: str = "mine", **headers: Header
) -> Callable[[World], tuple[str, str, dict[str, Any]]]:
    def make(world: World) -> tuple[str, str, dict[str, Any]]:
        sent = {k: v(world) if callable(v) else v for k, v in headers.items()}
        return "GET", path(world), {"headers": {**(world.auth(key) if key else {}), **sent}}

    return make


def first(world: World) -> str:
    return world.task(0)


def first_etag(world: World) -> str:
    return world.etags[world.task(0)]


def chunked(world: World) -> tuple[str, str, dict[str, Any]]:
    stream = io.BytesIO(json.dumps(ECHO).encode())
    headers = {**world.auth(), "Transfer-Encoding": "chunked"}
    kwargs = {"input_stream": stream, "content_type": "application/json", "headers": headers}
    return "POST", "/api/v1/tasks", kwargs


def with_method(method: str, path: Callable[[World], str]) -> Callable[[World], Any]:
    return lambda world: (method, path(world), {"headers": world.auth()})


ROOMY: list[Variant] = [
    ("submit", True, post()),
    ("submit with options", True, post({**ECHO, "options": {"priority": 7, "countdown": 60}})),
    ("status", True, get(first)),
    ("status again", True, get(first)),
    ("If-None-Match: its ETag", True, get(first, **{"If-None-Match": first_etag})),
    ("If-None-Match: *", True, get(first, **{"If-None-Match": "*"})),
    ("If-None-Match: weak", True, get(first, **{"If-None-Match": lambda w: "W/" + first_etag(w)})),
    (
        "If-None-Match: a list",
        True,
        get(first, **{"If-None-Match": lambda w: '"x", ' + first_etag(w)}),
    ),
    ("If-None-Match: another", True, get(first, **{"If-None-Match": '"0123456789abcdef"'})),
    ("Idempotency-Key", True, post(**{"Idempotency-Key": "order-1"})),
    ("Idempotency-Key replayed", True, post(**{"Idempotency-Key": "order-1"})),
    (
        "Idempotency-Key, another body",
        True,
        post({**ECHO, "params": {"value": 2}}, **{"Idempotency-Key": "order-1"}),
    ),
    ("Idempotency-Key quoted", True, post(**{"Idempotency-Key": '"order-2"'})),
    ("Idempotency-Key quoted, replayed bare", True, post(**{"Idempotency-Key": "order-2"})),
    ("Idempotency-Key too long", False, post(**{"Idempotency-Key": "k" * 256})),
    ("Idempotency-Key not ASCII", False, post(**{"Idempotency-Key": "caf\xe9"})),
    ("malformed JSON", False, post("{not json")),
    ("JSON cut short", False, post('{"task": "test.echo",')),
    ("a JSON array", False, post("[1, 2]")),
    ("NaN", False, post('{"task": "test.echo", "params": {"value": NaN}}')),
    ("an integer past 64 bits", False, post({"task": "test.echo", "params": {"value": 2**70}})),
    ("not UTF-8", False, post(b"\xff\xfe")),
    ("task of the wrong type", False, post({"task": 5})),
    ("unknown task type", False, post({"task": "no.such.type"})),
    ("a field too many", False, post({**ECHO, "queue": "celery"})),
    ("bad options", False, post({**ECHO, "options": {"priority": 10}})),
    ("bad params", False, post({"task": "test.echo", "params": {"nope": 1}})),
    ("callback_url", False, post({**ECHO, "callback_url": "http://127.0.0.1:9/hook"})),
    ("bad callback_url", False, post({**ECHO, "callback_url": "ftp://example.com/"})),
    ("text/plain", False, post(content_type="text/plain")),
    ("JSON with a charset", False, post(content_type="application/json; charset=utf-8")),
    ("no body", False, post(b"")),
    ("a body past 64 KiB", False, post(json.dumps(ECHO) + " " * 70_000)),
    ("a body past the limit", False, post(json.dumps(ECHO) + " " * 1_100_000)),
    ("chunked, no Content-Length", False, chunked),
    ("no key", False, post(key="")),
    ("a wrong key", False, post(key="", Authorization=lambda w: f"Bearer {w.wrong_key}")),
    ("a revoked key", False, post(key="revoked")),
    ("Basic auth", False, post(key="", Authorization="Basic dXNlcjpwYXNz")),
    ("Bearer and nothing", False, post(key="", Authorization="Bearer   ")),
    ("status, no key", False, get(first, key="")),
    ("status, a revoked key", False, get(first, key="revoked")),
    ("their submit", True, post(key="theirs")),
    ("their task, read by me", True, get(lambda w: w.task(-1))),
    ("my task, read by them", True, get(first, key="theirs")),
    ("my task, read by an admin", True, get(first, key="admin")),
    ("an unknown id", True, get(lambda w: UNKNOWN)),
    (
        "an id in capitals",
        False,
        get(lambda w: UNKNOWN.upper().replace("/API/V1/TASKS", "/api/v1/tasks")),
    ),
    ("not an id", False, get(lambda w: "/api/v1/tasks/not-an-id")),
    ("a trailing slash", False, get(lambda w: first(w) + "/")),
    ("?wait=0", False, get(lambda w: first(w) + "?wait=0")),
    ("?wait=x", False, get(lambda w: first(w) + "?wait=x")),
    ("a query on a submit", False, lambda w: (*post()(w)[:1], "/api/v1/tasks?x=1", post()(w)[2])),
    ("X-Request-ID given", True, get(first, **{"X-Request-ID": "trace-42"})),
    ("X-Request-ID not sane", True, get(first, **{"X-Request-ID": "no spaces allowed"})),
    ("submit, X-Request-ID given", True, post(**{"X-Request-ID": "trace-43"})),
    ("HEAD", False, with_method("HEAD", first)),
    ("OPTIONS", False, with_method("OPTIONS", first)),
    ("POST to a task", False, with_method("POST", first)),
    ("the events route", False, get(lambda w: first(w) + "/events?token=x", key="")),
    ("the list", False, get(lambda w: "/api/v1/tasks")),
    ("cancel", False, with_method("DELETE", first)),
    ("a cancelled task", True, get(first)),
]

TIGHT: list[Variant] = [
    ("submit 1", True, post()),
    ("submit 2", True, post(**{"Idempotency-Key": "k"})),
    ("submit 3: in flight cap", True, post({**ECHO, "params": {"value": 3}})),
    ("submit 4: the window is spent", True, post()),
    ("a replay once spent", True, post(**{"Idempotency-Key": "k"})),
    ("read 1", True, get(first)),
    ("read 2", True, get(first)),
    ("read 3: the window is spent", True, get(first)),
    ("an unknown id once spent", True, get(lambda w: UNKNOWN)),
    ("no key 1", False, post(key="")),
    ("no key 2", False, post(key="")),
    ("no key 3: too many failures", False, post(key="")),
    ("a wrong key once failures are spent", False, get(first, key="", Authorization="Bearer x")),
]

OPEN: list[Variant] = [
    ("submit without keys", True, post(key="")),
    ("status without keys", True, get(first, key="")),
    ("If-None-Match without keys", True, get(first, key="", **{"If-None-Match": first_etag})),
    ("an unknown id without keys", True, get(lambda w: UNKNOWN, key="")),
]

DOWN: list[Variant] = [
    ("submit, Redis down", True, post(**{"X-Request-ID": "trace-down"})),
    ("status, Redis down", True, get(first)),
    ("a key not checked yet, Redis down", True, get(first, key="theirs")),
]


def run(worlds: tuple[World, World], variants: list[Variant]) -> None:
    fast, plain = worlds
    for name, by_fast_path, make in variants:
        method, path, kwargs = make(fast)
        got_fast = fast.call(method, path, **kwargs)
        method, path, kwargs = make(plain)
        got_plain = plain.call(method, path, **kwargs)
        assert got_fast[0] == got_plain[0], name
        assert got_fast[1] == got_plain[1], f"{name}: Redis commands"
        assert got_fast[2] == got_plain[2], f"{name}: metrics"
        assert not got_plain[3], f"{name}: FAST_PATH=false answered without Flask"
        assert got_fast[3] is by_fast_path, f"{name}: answered by the fast path: {got_fast[3]}"


def worlds(url: str, **env: str) -> tuple[World, World]:
    return World(url, True, **env), World(url, False, **env)


@pytest.mark.parametrize(
    ("variants", "env"),
    [
        (ROOMY, {}),
        (TIGHT, {"RATE_LIMIT_SUBMIT": "3 per hour", "RATE_LIMIT_READ": "2 per hour",
                 "IN_FLIGHT_LIMIT": "2", "AUTH_FAILURE_LIMIT": "2 per hour"}),
        (OPEN, {"AUTH_DISABLED": "true"}),
    ],
    ids=["roomy", "tight", "no-keys"],
)  # fmt: skip
def test_fast_and_flask_answer_alike(
    stack: Any, variants: list[Variant], env: dict[str, str]
) -> None:
    run(worlds(stack("redis").url, **env), variants)  # a Redis of its own: no worker on it


def test_fast_and_flask_answer_alike_with_redis_down(
    stack: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    server = stack("redis")
    pair = worlds(server.url, REDIS_TIMEOUT="0.2")
    for world in pair:
        method, path, kwargs = post()(world)
        world.call(method, path, **kwargs)  # a task to read, and the key checked
    server.stop()
    for world in pair:
        world.redis_up = False
    run(pair, DOWN)
    # The job service's warning carries the request's id on either path (app.log).
    assert capfd.readouterr().err.count("[trace-down -] submit") == 2


def over_http(env: dict[str, str], key: str, log: Path) -> tuple[list[Any], str]:
    """A few answers of one gunicorn server, normalised, and the task URL they read."""
    names, got = Names(), []
    with Api(env, log, workers=1) as api:
        connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

        def call(method: str, path: str, body: Any = None, **headers: str) -> dict[str, str]:
            chunked = isinstance(body, list)
            connection.request(method, path, body, {**auth, **headers}, encode_chunked=chunked)
            reply = connection.getresponse()
            data = reply.read()
            sent = [(k, names.header(k, v)) for k, v in reply.getheaders() if k != "Date"]
            got.append((reply.status, sent, names.body(data)))
            return dict(reply.getheaders())

        url = call("POST", "/api/v1/tasks", json.dumps(ECHO))["Location"]
        call("POST", "/api/v1/tasks", [json.dumps(ECHO).encode()])  # chunked
        call("POST", "/api/v1/tasks", "{not json")
        etag = call("GET", url)["ETag"]
        call("GET", url, **{"If-None-Match": etag})
        call("GET", url + "?wait=0")
        connection.close()
    return got, url


def test_under_gunicorn_too(stack: Any, tmp_path: Path) -> None:
    """Over HTTP, from gunicorn's gevent worker: the same answers and access lines."""
    server = stack("redis")
    env = errand_env(server.url, AUTH_DISABLED="false", KEY_CACHE_SECONDS="3600", **ROOM)
    answers = {}
    for fast in (True, False):
        key = apikeys.create_key(server.client(), "mine")
        log = tmp_path / f"{fast}.log"
        answers[fast], url = over_http({**env, "FAST_PATH": str(fast).lower()}, key, log)
        assert log.read_text().count('"POST /api/v1/tasks HTTP/1.1" 202') == 2
        assert log.read_text().count(f'"GET {url} HTTP/1.1" 304') == 1
    assert [status for status, _, _ in answers[True]] == [202, 202, 400, 200, 304, 200]
    assert answers[True] == answers[False]
