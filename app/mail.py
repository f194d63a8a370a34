"""Email task types, sent through Flask-Mail: ``email.send`` (one message).

Tasks carry only addresses and text (JSON), never a ``Message`` object.
SMTP failures are sorted: temporary ones (connection refused or reset, a
timeout, a 4xx answer) retry with exponential backoff and jitter; permanent
ones (5xx, every recipient refused, bad headers) fail at once.
"""

from __future__ import annotations

import random
import smtplib
from typing import Annotated

from celery import current_task
from email_validator import EmailNotValidError, validate_email
from flask import current_app
from flask_mail import BadHeaderError, Message
from pydantic import AfterValidator, Field

from app.extensions import mail
from app.tasktypes import Params, task_type


class PermanentEmailError(Exception):
    """The SMTP server refused the message for good: retrying would not help."""


class TemporaryEmailError(Exception):
    """The SMTP server could not take the message now: a retry may succeed."""


def _plain_address(value: str) -> str:
    if any(c in value for c in '<>\r\n,;"()'):
        raise ValueError("not a plain email address (no display names, one line)")
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not an email address: {exc}") from None


def _one_line(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must be one line: CR and LF are not allowed in headers")
    return value


Address = Annotated[str, Field(max_length=254), AfterValidator(_plain_address)]
HeaderText = Annotated[str, Field(min_length=1, max_length=998), AfterValidator(_one_line)]


class SendEmail(Params):
    to: list[Address] = Field(min_length=1, max_length=50)
    subject: HeaderText
    body: str = Field(max_length=500_000)
    html: str | None = Field(None, max_length=500_000)
    cc: list[Address] = Field(default_factory=list, max_length=50)
    bcc: list[Address] = Field(default_factory=list, max_length=50)
    reply_to: Address | None = None


def classify(exc: Exception) -> Exception:
    """Turn an SMTP or socket error into a temporary or permanent email error."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        kind = TemporaryEmailError if all(400 <= c < 500 for c in codes) else PermanentEmailError
        return kind(f"recipients refused: {exc.recipients}")
    if isinstance(exc, smtplib.SMTPResponseException):
        kind = TemporaryEmailError if 400 <= exc.smtp_code < 500 else PermanentEmailError
        return kind(f"{exc.smtp_code} {exc.smtp_error!r}")
    if isinstance(exc, BadHeaderError):
        return PermanentEmailError(f"bad header: {exc}")
    return TemporaryEmailError(f"{type(exc).__name__}: {exc}")


def retry_later(error: TemporaryEmailError) -> None:
    """Retry the current task with exponential backoff and full jitter."""
    task = current_task
    limit = current_app.config["MAIL_MAX_RETRIES"]
    base = current_app.config["MAIL_RETRY_BACKOFF"]
    countdown = random.uniform(0, base * 2**task.request.retries)
    raise task.retry(exc=error, countdown=countdown, max_retries=limit)


@task_type("email.send", SendEmail)
def send_email(params: SendEmail) -> dict[str, object]:
    """Send one email message, with text and optional HTML parts."""
    message = Message(
        subject=params.subject,
        recipients=params.to,
        body=params.body,
        html=params.html,
        cc=params.cc,
        bcc=params.bcc,
        reply_to=params.reply_to,
    )
    try:
        mail.send(message)
    except (smtplib.SMTPException, OSError, BadHeaderError) as exc:
        error = classify(exc)
        if isinstance(error, TemporaryEmailError):
            retry_later(error)
        raise error from None
    return {"message_id": message.msgId, "accepted": len(params.to + params.cc + params.bcc)}
