"""email.send through Flask-Mail to a real SMTP server on loopback."""

from __future__ import annotations

import email
import time
from collections import Counter
from email import policy
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.support import (
    SmtpSink,
    Worker,
    errand_env,
    make_app,
    settle,
    submit,
    wait_for,
    wait_state,
)

BASE = {"to": ["ada@example.com"], "subject": "Welcome", "body": "Hello Ada"}


def received(sink: SmtpSink, subject: str) -> list[Any]:
    found = []
    for envelope in sink.envelopes:
        message = email.message_from_bytes(envelope.content, policy=policy.default)
        if message["Subject"] == subject:
            found.append((envelope, message))
    return found


def test_send_delivers_exactly_what_was_asked(
    client: FlaskClient, worker: Worker, smtp_server: SmtpSink
) -> None:
    params = {
        "to": ["ada@example.com", "bob@example.org"],
        "subject": "Quarterly report",
        "body": "Plain text part",
        "html": "<p>HTML part</p>",
        "cc": ["carol@example.com"],
        "bcc": ["dave@example.net"],
        "reply_to": "replies@example.com",
    }
    task = wait_state(client, submit(client, "email.send", params))
    assert task["state"] == "SUCCESS", task
    assert task["result"]["accepted"] == 4
    ((envelope, message),) = received(smtp_server, "Quarterly report")
    assert sorted(envelope.rcpt_tos) == sorted(
        ["ada@example.com", "bob@example.org", "carol@example.com", "dave@example.net"]
    )
    # Flask-Mail removes duplicates through a set, so the order of To is not kept.
    assert sorted(message["To"].split(", ")) == ["ada@example.com", "bob@example.org"]
    assert message["Cc"] == "carol@example.com"
    assert message["Bcc"] is None  # bcc reaches the envelope, never the headers
    assert message["Reply-To"] == "replies@example.com"
    assert message["Message-ID"] == task["result"]["message_id"]
    assert message.get_body(("plain",)).get_content().strip() == "Plain text part"
    assert message.get_body(("html",)).get_content().strip() == "<p>HTML part</p>"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Hi\r\nBcc: victim@example.com"),
        ("subject", "Hi\nX-Injected: 1"),
        ("to", ["ada@example.com\r\nBcc: victim@example.com"]),
        ("cc", ["carol@example.com\nBcc: victim@example.com"]),
        ("bcc", ["dave@example.net\r"]),
        ("reply_to", "x@example.com\r\nBcc: victim@example.com"),
        ("to", ["Ada <ada@example.com>"]),
        ("to", ["ada@example.com, eve@example.com"]),
        ("to", ["not-an-address"]),
        ("to", []),
        ("to", [f"u{i}@example.com" for i in range(51)]),
        ("subject", ""),
    ],
)
def test_bad_headers_are_422_and_nothing_is_sent(
    client: FlaskClient, worker: Worker, smtp_server: SmtpSink, field: str, value: Any
) -> None:
    before = len(smtp_server.envelopes)
    response = client.post(
        "/api/v1/tasks", json={"task": "email.send", "params": {**BASE, field: value}}
    )
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.json["errors"][0]["loc"][:2] == ["params", field]
    settle(0.2)
    assert len(smtp_server.envelopes) == before


def test_refused_recipient_fails_at_once(
    client: FlaskClient, worker: Worker, smtp_server: SmtpSink
) -> None:
    smtp_server.refuse.add("nobody@example.com")
    params = {**BASE, "to": ["nobody@example.com"], "subject": "Refused"}
    task = wait_state(client, submit(client, "email.send", params))
    assert task["state"] == "FAILURE"
    assert task["error"]["type"] == "PermanentEmailError"
    assert "550" in task["error"]["message"]
    assert task["retries"] == 0


def test_smtp_down_then_up_retries_then_succeeds_once(stack: Any, tmp_path: Any) -> None:
    server = stack("redis")
    # Its port is chosen but nothing listens yet: connection refused.
    sink = stack("smtp", started_now=False)
    env = errand_env(server.url, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(sink.port))
    stack("worker", env, tmp_path / "w.log", "mailer", concurrency=1)
    client = make_app(server.url).test_client()
    url = submit(client, "email.send", {**BASE, "subject": "Comes back"})
    retrying = wait_state(client, url, {"RETRY"})
    assert retrying["error"]["type"] == "TemporaryEmailError"
    assert "ConnectionRefusedError" in retrying["error"]["message"]
    sink.start()
    task = wait_state(client, url, timeout=60)
    assert task["state"] == "SUCCESS"
    assert task["retries"] >= 1
    assert len(received(sink, "Comes back")) == 1


def campaign(tag: str, count: int, **extra: Any) -> dict[str, Any]:
    return {
        "subject": f"[{tag}] Hello {{{{ name }}}}",
        "body": "Dear {{ name }}, your code is {{ code }}.",
        "html": "<p>Dear {{ name }}</p>",
        "recipients": [
            {"to": f"user{i}@example.com", "context": {"name": f"User {i}", "code": i}}
            for i in range(count)
        ],
        **extra,
    }


def deliveries(sink: SmtpSink, tag: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for envelope in sink.envelopes:
        if f"[{tag}]".encode() in envelope.content:
            counts.update(envelope.rcpt_tos)
    return counts


def test_bulk_delivers_each_recipient_once_with_progress(
    client: FlaskClient, worker: Worker, smtp_server: SmtpSink
) -> None:
    params = campaign("bulk2000", 2000)
    params["recipients"][7]["context"]["name"] = "<b>Eve</b>"
    url = submit(client, "email.bulk", params)
    messages: set[str] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        task = client.get(url).json
        if task["state"] == "PROGRESS":
            messages.add(task["progress"]["message"])
        if task["state"] in {"SUCCESS", "FAILURE"}:
            break
        time.sleep(0.05)
    assert task["state"] == "SUCCESS", task
    assert task["result"] == {"sent": 2000, "failed": []}
    assert len(messages) > 1
    assert all(m.startswith("sent batch ") and m.endswith(" of 20") for m in messages)
    counts = deliveries(smtp_server, "bulk2000")
    assert len(counts) == 2000 and set(counts.values()) == {1}
    ((_, eve),) = received(smtp_server, "[bulk2000] Hello <b>Eve</b>")
    assert "Dear <b>Eve</b>, your code is 7." in eve.get_body(("plain",)).get_content()
    assert "&lt;b&gt;Eve&lt;/b&gt;" in eve.get_body(("html",)).get_content()  # autoescaped


def test_bulk_refused_recipients_are_reported_and_the_rest_arrive(
    client: FlaskClient, worker: Worker, smtp_server: SmtpSink
) -> None:
    smtp_server.refuse.update({"user3@example.com", "user150@example.com"})
    task = wait_state(client, submit(client, "email.bulk", campaign("refusals", 200)), timeout=60)
    assert task["state"] == "SUCCESS", task
    assert task["result"]["sent"] == 198
    failed = {f["to"]: f["error"] for f in task["result"]["failed"]}
    assert set(failed) == {"user3@example.com", "user150@example.com"}
    assert all("550" in error for error in failed.values())
    counts = deliveries(smtp_server, "refusals")
    assert len(counts) == 198 and set(counts.values()) == {1}


@pytest.mark.parametrize(
    ("change", "loc", "named"),
    [
        ({"body": "Dear {{ name }} {{ missing }}"}, "body", "recipient 0 (user0@example.com)"),
        ({"subject": "{{ name }", "body": "x"}, "subject", "not a template this API renders"),
        ({"html": "<p>{{ name }"}, "html", "not a template this API renders"),
        ({"body": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}, "body", "Call is not"),
        ({"body": "{{ cycler.__init__.__globals__ }}"}, "body", "recipient 0"),  # no globals
        ({"body": "{{ name.__class__ }}"}, "body", "recipient 0"),
        ({"subject": "Hi {{ name }}"}, "subject", "recipient 2 (user2@example.com)"),
        # Templates cannot make the API spin or fill its memory:
        ({"body": "{% for i in range(99999) %}{{ name }}{% endfor %}"}, "body", "For is not"),
        ({"body": "{{ 9 ** 9 ** 9 }}"}, "body", "Pow is not allowed"),
        ({"body": "{{ name * 100000000 }}"}, "body", "Mul is not allowed"),
        ({"body": "{{ name ~ name }}"}, "body", "Concat is not allowed"),
        ({"body": "{{ name|center(100000000) }}"}, "body", "filter 'center' is not allowed"),
        ({"body": "{% macro m() %}x{% endmacro %}"}, "body", "Macro is not allowed"),
        ({"body": "{{ code }}" * 10 + "{{ name }}" * 1900}, "body", "renders to more than"),
        ({"body": "{{ name }}" * 2001}, "body", "at most 2,000 parts"),
        ({"body": "{% if name %}" * 40 + "x" + "{% endif %}" * 40}, "body", "nested at most"),
        ({"body": "{% if name %}" * 400 + "x" + "{% endif %}" * 400}, "body", "nested"),
        ({"body": "x" * 100_001}, "body", "at most 100,000 characters"),
        # Only strings and numbers print: no reprs, no heap addresses.
        ({"body": "{{ name.upper }}"}, "body", "only strings and numbers"),
        ({"body": "{{ lipsum }}"}, "body", "'lipsum' is undefined"),
    ],
)
def test_bulk_templates_that_do_not_render_are_422(
    app: Any,
    client: FlaskClient,
    worker: Worker,
    smtp_server: SmtpSink,
    change: Any,
    loc: str,
    named: str,
) -> None:
    params = {**campaign("never", 3), **change}
    params["recipients"][0]["context"]["name"] = "n" * 600
    params["recipients"][2]["context"]["name"] = "x\r\nBcc: victim@example.com"
    before = (len(smtp_server.envelopes), app.extensions["errand.redis"].zcard("errand:index"))
    response = client.post("/api/v1/tasks", json={"task": "email.bulk", "params": params})
    assert response.status_code == 422, response.json
    (error,) = response.json["errors"]
    assert error["loc"] == ["params", loc], error
    assert named in error["msg"]
    assert not error["msg"].startswith("Value error")
    settle(0.2)
    after = (len(smtp_server.envelopes), app.extensions["errand.redis"].zcard("errand:index"))
    assert after == before


def test_bulk_render_budget(redis_server: Any) -> None:
    client = make_app(redis_server.url, MAIL_RENDER_BUDGET="10000").test_client()
    params = {**campaign("budget", 100), "body": "x" * 200 + "{{ name }}"}
    response = client.post("/api/v1/tasks", json={"task": "email.bulk", "params": params})
    assert response.status_code == 422
    assert response.json["errors"] == [
        {"loc": ["params", "recipients"], "msg": "the messages would hold more than 10,000 "
         "characters in all"}
    ]  # fmt: skip
    params["recipients"] = params["recipients"][:20]
    response = client.post("/api/v1/tasks", json={"task": "email.bulk", "params": params})
    assert response.status_code == 202


@pytest.mark.parametrize(("count", "status"), [(0, 422), (10_001, 422)])
def test_bulk_recipient_limits(client: FlaskClient, count: int, status: int) -> None:
    response = client.post(
        "/api/v1/tasks", json={"task": "email.bulk", "params": campaign("n", count)}
    )
    assert response.status_code == status


def test_bulk_resumes_after_smtp_outage_without_duplicates(stack: Any, tmp_path: Any) -> None:
    server = stack("redis")
    sink = stack("smtp", started_now=False)
    env = errand_env(
        server.url, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(sink.port), MAIL_BATCH_SIZE="10"
    )
    stack("worker", env, tmp_path / "w.log", "bulk-outage", concurrency=1)
    client = make_app(server.url).test_client()
    url = submit(client, "email.bulk", campaign("outage", 50))
    assert wait_state(client, url, {"RETRY"})["error"]["type"] == "TemporaryEmailError"
    sink.start()
    task = wait_state(client, url, timeout=60)
    assert task["state"] == "SUCCESS"
    counts = deliveries(sink, "outage")
    assert len(counts) == 50 and set(counts.values()) == {1}


def test_bulk_survives_a_killed_worker(stack: Any, tmp_path: Any) -> None:
    server = stack("redis")
    sink = stack("smtp", delay=0.004)
    env = errand_env(
        server.url, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(sink.port), MAIL_BATCH_SIZE="50"
    )
    first = stack("worker", env, tmp_path / "first.log", "first", concurrency=1)
    client = make_app(server.url).test_client()
    url = submit(client, "email.bulk", campaign("killed", 1000))
    wait_for(lambda: (client.get(url).json["progress"] or {}).get("current", 0) >= 200, 60)
    first.kill()
    stack("worker", env, tmp_path / "second.log", "second", concurrency=1)
    task = wait_state(client, url, timeout=120)
    assert task["state"] == "SUCCESS"
    counts = deliveries(sink, "killed")
    assert len(counts) == 1000
    twice = [int(to[4:].split("@")[0]) for to, n in counts.items() if n > 1]
    assert all(n <= 2 for n in counts.values())
    # Only the batch in flight when the worker died can be sent again.
    assert len({i // 50 for i in twice}) <= 1


# Line boundaries for str.splitlines (and so for Python's email package) beyond CR and
# LF, the other C0 and C1 controls, DEL, and NUL: none may reach a mail header.
UNSAFE = ["\x00", "\t", "\x0b", "\x0c", "\x1b", "\x1c", "\x1d", "\x1e", "\x7f", "\x85"]
UNSAFE += ["\x9f", "\u2028", "\u2029"]
EXPECTED_HEADERS = {  # of a multipart message; a text-only one has Content-Transfer-Encoding
    "Content-Type",
    "Date",
    "From",
    "MIME-Version",
    "Message-ID",
    "Subject",
    "To",
}


@pytest.mark.parametrize("char", UNSAFE, ids=lambda c: f"U+{ord(c):04X}")
def test_control_characters_in_headers_are_422(
    client: FlaskClient, worker: Worker, smtp_server: SmtpSink, char: str
) -> None:
    injected = f"Hi{char}Bcc: victim@example.com"
    bodies = [
        ("email.send", {**BASE, "subject": injected}, ["params", "subject"]),
        ("email.send", {**BASE, "to": [f"ada{char}@example.com"]}, ["params", "to", 0]),
        ("email.send", {**BASE, "reply_to": f"x@exa{char}mple.com"}, ["params", "reply_to"]),
        ("email.bulk", {**campaign("inject", 1), "subject": injected}, ["params", "subject"]),
    ]
    rendered = campaign("inject", 2)
    rendered["recipients"][1]["context"]["name"] = injected
    bodies.append(("email.bulk", rendered, ["params", "subject"]))  # the template's field
    before = len(smtp_server.envelopes)
    for task, params, loc in bodies:
        response = client.post("/api/v1/tasks", json={"task": task, "params": params})
        assert response.status_code == 422, (task, params)
        error = response.json["errors"][0]
        assert error["loc"] == loc
        assert f"U+{ord(char):04X}" in error["msg"] or "not an email address" in error["msg"]
    settle(0.2)
    assert len(smtp_server.envelopes) == before


def test_a_worker_sends_no_header_a_template_breaks(
    app: Any, client: FlaskClient, worker: Worker, smtp_server: SmtpSink
) -> None:
    # The API refuses these at submit (above); this job goes to the broker past that
    # check, as a message from another Celery client would, to test the worker's own.
    from app.jobs.service import OPEN_ACCESS

    params = campaign("worker-check", len(UNSAFE) + 1)
    for number, char in enumerate(UNSAFE, start=1):
        params["recipients"][number]["context"]["name"] = f"x{char}Bcc: victim@example.com"
    bulk = app.extensions["errand.task_types"]["email.bulk"]
    task, _ = app.extensions["errand.jobs"].submit(OPEN_ACCESS, bulk, params, {})
    url = task["links"]["self"]
    task = wait_state(client, url)
    assert task["state"] == "SUCCESS", task
    assert task["result"]["sent"] == 1
    failed = task["result"]["failed"]
    assert [f["to"] for f in failed] == [f"user{n}@example.com" for n in range(1, len(UNSAFE) + 1)]
    assert all("not allowed in a mail header" in f["error"] for f in failed)
    arrived = [e for e in smtp_server.envelopes if b"[worker-check]" in e.content]
    assert [e.rcpt_tos for e in arrived] == [["user0@example.com"]]
    message = email.message_from_bytes(arrived[0].content, policy=policy.default)
    assert set(message.keys()) == EXPECTED_HEADERS
    assert message["Subject"] == "[worker-check] Hello User 0"


def test_an_accepted_message_carries_exactly_its_headers(
    client: FlaskClient, worker: Worker, smtp_server: SmtpSink
) -> None:
    params = {**BASE, "subject": "Headers exactly", "cc": ["carol@example.com"]}
    params["reply_to"] = "replies@example.com"
    assert wait_state(client, submit(client, "email.send", params))["state"] == "SUCCESS"
    ((_, message),) = received(smtp_server, "Headers exactly")
    assert set(message.keys()) == EXPECTED_HEADERS | {"Content-Transfer-Encoding", "Cc", "Reply-To"}
