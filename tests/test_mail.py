"""email.send through Flask-Mail to a real SMTP server on loopback."""

from __future__ import annotations

import email
from email import policy
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import make_app, settle, submit, wait_state
from tests.support import SmtpSink, Worker, errand_env

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
    assert message["To"] == "ada@example.com, bob@example.org"
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
    sink = SmtpSink()  # its port is chosen but nothing listens yet: connection refused
    env = errand_env(server.url, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(sink.port))
    stack("worker", env, tmp_path / "w.log", "mailer", concurrency=1)
    client = make_app(server.url).test_client()
    url = submit(client, "email.send", {**BASE, "subject": "Comes back"})
    retrying = wait_state(client, url, {"RETRY"})
    assert retrying["error"]["type"] == "TemporaryEmailError"
    assert "ConnectionRefusedError" in retrying["error"]["message"]
    sink.start()
    try:
        task = wait_state(client, url, timeout=60)
    finally:
        sink.stop()
    assert task["state"] == "SUCCESS"
    assert task["retries"] >= 1
    assert len(received(sink, "Comes back")) == 1
