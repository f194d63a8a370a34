"""Email task types, sent through Flask-Mail: ``email.send`` and ``email.bulk``.

Tasks carry only addresses, text and template context (JSON), never a
``Message`` object. SMTP failures are sorted: temporary ones (connection
refused or reset, a timeout, a 4xx answer) retry with exponential backoff and
jitter; permanent ones (5xx, every recipient refused, bad headers) fail at
once. A bulk job records its progress in Redis after every batch, so a retry
resumes where the last attempt stopped and no recipient gets the mail twice,
except those of a batch in flight when a worker died.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import smtplib
from collections import Counter
from typing import Annotated, Any

from celery import current_task
from email_validator import EmailNotValidError, validate_email
from flask import current_app, has_app_context
from flask_mail import BadHeaderError, Connection, Message
from jinja2 import StrictUndefined, Template, TemplateError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from pydantic import AfterValidator, Field, ValidationInfo

from app import store
from app.errors import MailUnavailable
from app.store import keys
from app.tasks.registry import Params, report_progress, task_type


class PermanentEmailError(Exception):
    """The SMTP server refused the message for good: retrying would not help."""


class TemporaryEmailError(MailUnavailable):
    """The SMTP server could not take the message now: a retry may succeed."""


# What may not stand in a mail header: C0 and C1 controls, DEL, and the
# Unicode line and paragraph separators. Python's email package splits header
# lines with str.splitlines, for which \x0b, \x0c, \x1c-\x1e, \x85, U+2028
# and U+2029 end a line as CR and LF do: any of them would start a new header.
_HEADER_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def header_safe(value: str) -> str:
    """``value`` unchanged, or ValueError naming the first character a header may not hold."""
    bad = _HEADER_UNSAFE.search(value)
    if bad is not None:
        raise ValueError(
            f"control character U+{ord(bad.group()):04X} is not allowed in a mail header"
        )
    return value


def _plain_address(value: str) -> str:
    header_safe(value)
    if any(c in value for c in '<>,;"()'):
        raise ValueError("not a plain email address (no display names)")
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not an email address: {exc}") from None


Address = Annotated[str, Field(max_length=254), AfterValidator(_plain_address)]
HeaderText = Annotated[str, Field(min_length=1, max_length=998), AfterValidator(header_safe)]
BodyText = Annotated[str, Field(max_length=500_000)]


class SendEmail(Params):
    to: list[Address] = Field(min_length=1, max_length=50)
    subject: HeaderText
    body: BodyText
    html: BodyText | None = None
    cc: list[Address] = Field(default_factory=list, max_length=50)
    bcc: list[Address] = Field(default_factory=list, max_length=50)
    reply_to: Address | None = None


class Recipient(Params):
    to: Address
    context: dict[str, Any] = Field(default_factory=dict)


def _template(value: str | None, info: ValidationInfo) -> str | None:
    """A bulk template field: within its size limit, and a template the sandbox accepts."""
    if value is None:
        return None
    limit = _setting("MAIL_TEMPLATE_LIMIT", 100_000)
    if len(value) > limit:
        raise ValueError(f"a template may hold at most {limit:,} characters")
    try:
        _compile(_html if info.field_name == "html" else _text, value)
    except TemplateError as exc:
        raise ValueError(f"not a template this API renders: {exc}") from None
    return value


class BulkEmail(Params):
    subject: Annotated[HeaderText, AfterValidator(_template)]
    body: Annotated[str, AfterValidator(_template)]
    html: Annotated[str | None, AfterValidator(_template)] = None
    recipients: list[Recipient] = Field(min_length=1, max_length=10_000)


def check_bulk(params: BulkEmail) -> list[dict[str, Any]]:
    """The templates render, and the job's mail stays within its render budget.

    Run at submit, before anything is queued. The templates are rendered for
    the first ``MAIL_CHECK_RECIPIENTS`` recipients (each error names the
    template's field and the recipient); for every recipient the size of what
    they would get is estimated from the templates' text and the context values
    they print, without rendering, so the check costs about as much as the
    request is long. A recipient past the sample whose mail cannot be made fails
    alone, in the worker (``failed`` in the result).
    """
    templates = Templates(params.subject, params.body, params.html)
    sample = _setting("MAIL_CHECK_RECIPIENTS", 100)
    for number, recipient in enumerate(params.recipients[:sample]):
        for field, template in templates.parts():
            try:
                rendered = _render(template, recipient.context)
                if field == "subject":
                    header_safe(rendered)
            except Exception as exc:  # any failure of a client's template is the client's 422
                message = f"recipient {number} ({recipient.to}): does not render: {exc}"
                return [{"loc": ["params", field], "msg": message}]
    budget = _setting("MAIL_RENDER_BUDGET", 20_000_000)
    if sum(templates.estimate(r.context) for r in params.recipients) > budget:
        message = f"the messages would hold more than {budget:,} characters in all"
        return [{"loc": ["params", "recipients"], "msg": message}]
    return []


def _setting(name: str, default: int) -> int:
    return int(current_app.config[name]) if has_app_context() else default


# A client's template may substitute, filter and choose, but not loop, call,
# define macros, concatenate or compute; it has at most MAX_NODES parts, nested
# at most MAX_DEPTH deep, and renders only strings and numbers; its output is cut
# off past RENDER_LIMIT characters. So compiling and rendering cost about as much
# as the template and the context are long, and no submit can make the API or a
# worker spin, fill its memory, or show a Python object's repr.
RENDER_LIMIT = 1_000_000
MAX_NODES = 2000  # Jinja compiles about 10,000 parts a second
MAX_DEPTH = 30
_ALLOWED_NODES = (
    nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name, nodes.Const,
    nodes.Getattr, nodes.Getitem, nodes.If, nodes.CondExpr, nodes.Compare, nodes.Operand,
    nodes.And, nodes.Or, nodes.Not, nodes.Filter, nodes.Test,
)  # fmt: skip
_ALLOWED_FILTERS = {
    "capitalize", "default", "d", "e", "escape", "first", "last", "length", "lower",
    "round", "string", "title", "trim", "truncate", "upper", "int", "float",
}  # fmt: skip


def _only_text(value: Any) -> Any:
    """What a template may print: strings and numbers (None prints nothing)."""
    if value is None:
        return ""
    if isinstance(value, str | int | float | Undefined):
        return value  # an Undefined raises when printed (StrictUndefined)
    raise SecurityError(f"a template prints only strings and numbers, not {type(value).__name__}")


# Templates come from clients: render them in Jinja's sandbox, where they can
# read only the recipient's context (no globals), and fail loudly on anything undefined.
_text = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, finalize=_only_text
)
_html = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=True, finalize=_only_text
)
for _env in (_text, _html):
    _env.globals.clear()


def _compile(env: ImmutableSandboxedEnvironment, source: str) -> Template:
    try:
        tree = env.parse(source)
        count, stack = 0, [(tree, 0)]
        while stack:
            node, depth = stack.pop()
            count += 1
            if count > MAX_NODES:
                raise TemplateError(f"a template may have at most {MAX_NODES:,} parts")
            if depth > MAX_DEPTH:
                raise TemplateError(f"a template may be nested at most {MAX_DEPTH} deep")
            if not isinstance(node, _ALLOWED_NODES):
                raise TemplateError(f"{type(node).__name__} is not allowed in a template")
            if isinstance(node, nodes.Filter) and node.name not in _ALLOWED_FILTERS:
                raise TemplateError(f"the filter {node.name!r} is not allowed in a template")
            stack.extend((child, depth + 1) for child in node.iter_child_nodes())
        return env.from_string(tree)
    except (RecursionError, SyntaxError, MemoryError) as exc:
        raise TemplateError(f"too deeply nested ({type(exc).__name__})") from None


class Shape:
    """What a template prints besides its context: its text, and which names, how often."""

    def __init__(self, env: ImmutableSandboxedEnvironment, source: str) -> None:
        tree = env.parse(source)
        self.text = sum(len(node.data) for node in tree.find_all(nodes.TemplateData))
        self.text += sum(
            len(str(node.value)) for node in tree.find_all(nodes.Const) if node.value is not None
        )
        self.names = Counter(node.name for node in tree.find_all(nodes.Name))

    def estimate(self, context: dict[str, Any]) -> int:
        """About how many characters it renders to (both branches of an ``if`` counted)."""
        printed = sum(n * len(str(context.get(name, ""))) for name, n in self.names.items())
        return self.text + printed


class Templates:
    """The subject, text and HTML templates of a bulk job, checked and compiled once."""

    def __init__(self, subject: str, body: str, html: str | None) -> None:
        self.subject = _compile(_text, subject)
        self.body = _compile(_text, body)
        self.html = _compile(_html, html) if html is not None else None
        sources = [(_text, subject), (_text, body)] + ([(_html, html)] if html else [])
        self.shapes = [Shape(env, source) for env, source in sources]

    def estimate(self, context: dict[str, Any]) -> int:
        """About how many characters one recipient's mail renders to."""
        return sum(shape.estimate(context) for shape in self.shapes)

    def parts(self) -> list[tuple[str, Template]]:
        """Each template with the name of its field."""
        found = [("subject", self.subject), ("body", self.body)]
        return found + ([("html", self.html)] if self.html is not None else [])

    def render(self, context: dict[str, Any]) -> tuple[str, str, str | None]:
        """Subject, text and HTML for one recipient; ValueError for a subject no header may hold."""
        subject = header_safe(_render(self.subject, context))
        html = _render(self.html, context) if self.html is not None else None
        return subject, _render(self.body, context), html


def _render(template: Template, context: dict[str, Any]) -> str:
    parts, size = [], 0
    try:
        for chunk in template.generate(context):
            size += len(chunk)
            if size > RENDER_LIMIT:
                raise ValueError(f"renders to more than {RENDER_LIMIT:,} characters")
            parts.append(chunk)
    except RecursionError:
        raise ValueError("too deeply nested to render") from None
    return "".join(parts)


def classify(exc: Exception) -> Exception:
    """Turn an SMTP or socket error into a temporary or permanent email error."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        kind = TemporaryEmailError if all(400 <= c < 500 for c in codes) else PermanentEmailError
        answers = "; ".join(
            f"{to}: {code} {text.decode(errors='replace')}"
            for to, (code, text) in exc.recipients.items()
        )
        return kind(f"recipients refused: {answers}")
    if isinstance(exc, smtplib.SMTPResponseException):
        kind = TemporaryEmailError if 400 <= exc.smtp_code < 500 else PermanentEmailError
        text = (
            exc.smtp_error.decode(errors="replace")
            if isinstance(exc.smtp_error, bytes)
            else exc.smtp_error
        )
        return kind(f"{exc.smtp_code} {text}")
    if isinstance(exc, BadHeaderError):
        return PermanentEmailError("bad header")
    return TemporaryEmailError(f"{type(exc).__name__}: {exc}")


SMTP_ERRORS = (smtplib.SMTPException, OSError, BadHeaderError)


class TimedConnection(Connection):
    """Flask-Mail's connection with a socket timeout, so a hung server is a temporary failure."""

    def configure_host(self) -> smtplib.SMTP | smtplib.SMTP_SSL:
        timeout = current_app.config["MAIL_TIMEOUT"]
        host: smtplib.SMTP | smtplib.SMTP_SSL
        if self.mail.use_ssl:
            host = smtplib.SMTP_SSL(self.mail.server, self.mail.port, timeout=timeout)
        else:
            host = smtplib.SMTP(self.mail.server, self.mail.port, timeout=timeout)
        if self.mail.use_tls:
            host.starttls()
        if self.mail.username and self.mail.password:
            host.login(self.mail.username, self.mail.password)
        return host

    def __exit__(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        # Once the server has accepted the messages, a failing QUIT changes
        # nothing: raising here would retry the job and send them all again.
        if self.host is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self.host.quit()


def smtp_connection() -> TimedConnection:
    """One SMTP connection, configured by the ``MAIL_*`` settings."""
    return TimedConnection(current_app.extensions["mail"])


def retry_with_backoff(error: TemporaryEmailError) -> None:
    """Retry the current task with exponential backoff and full jitter."""
    task = current_task
    limit = current_app.config["MAIL_MAX_RETRIES"]
    base = current_app.config["MAIL_RETRY_BACKOFF"]
    countdown = random.uniform(0, base * 2**task.request.retries)
    raise task.retry(exc=error, countdown=countdown, max_retries=limit)


def fail_or_retry(exc: Exception) -> None:
    """Retry a temporary failure later; raise a permanent one at once."""
    error = classify(exc)
    if isinstance(error, TemporaryEmailError):
        retry_with_backoff(error)
    raise error from None


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
        with smtp_connection() as connection:
            connection.send(message)
    except SMTP_ERRORS as exc:
        fail_or_retry(exc)
    return {"message_id": message.msgId, "accepted": len(params.to + params.cc + params.bcc)}


class BulkProgress:
    """Where a bulk job stands, kept in Redis: the next recipient, the count sent, failures.

    Written once per batch (and once more when an attempt stops on a temporary
    failure), in one transaction, so a retry never sends a recorded batch again.
    """

    def __init__(self, task_id: str) -> None:
        self.key = keys.bulk_progress(task_id)
        self.failed_key = keys.bulk_failed(task_id)

    def load(self) -> tuple[int, int]:
        """The index of the next recipient to send to, and how many were sent so far."""
        state = store.client().hgetall(self.key)
        return int(state.get(b"next", 0)), int(state.get(b"sent", 0))

    def save(self, next_index: int, sent: int, failed: list[dict[str, str]]) -> None:
        ttl = current_app.config["TASK_RETENTION"]
        pipe = store.client().pipeline(transaction=True)
        pipe.hset(self.key, mapping={"next": next_index, "sent": sent})
        if failed:
            pipe.rpush(self.failed_key, *(json.dumps(f) for f in failed))
        pipe.expire(self.key, ttl).expire(self.failed_key, ttl)
        pipe.execute()

    def failures(self) -> list[dict[str, str]]:
        return [json.loads(item) for item in store.client().lrange(self.failed_key, 0, -1)]


@task_type("email.bulk", BulkEmail, check=check_bulk)
def send_bulk(params: BulkEmail) -> dict[str, object]:
    """Send one templated message to each recipient, in batches, reporting PROGRESS."""
    templates = Templates(params.subject, params.body, params.html)
    progress = BulkProgress(current_task.request.id)
    size = current_app.config["MAIL_BATCH_SIZE"]
    total = len(params.recipients)
    batches = -(-total // size)
    index, sent = progress.load()
    budget, rendered = current_app.config["MAIL_RENDER_BUDGET"], 0
    while index < total:
        batch_number = index // size + 1
        end = min(batch_number * size, total)
        failed: list[dict[str, str]] = []
        try:
            with smtp_connection() as connection:  # one SMTP connection per batch
                while index < end:
                    recipient = params.recipients[index]
                    try:
                        if rendered > budget:  # the estimate at submit was beaten: stop here
                            raise ValueError(f"the job's render budget ({budget:,}) is spent")
                        subject, body, html = templates.render(recipient.context)
                        rendered += len(subject) + len(body) + len(html or "")
                    except (ValueError, TemplateError) as exc:  # no mail for this recipient
                        failed.append({"to": recipient.to, "error": f"not sent: {exc}"})
                        index += 1
                        continue
                    message = Message(
                        subject=subject, recipients=[recipient.to], body=body, html=html
                    )
                    try:
                        connection.send(message)
                        sent += 1
                    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError) as exc:
                        error = classify(exc)
                        if isinstance(error, TemporaryEmailError):
                            raise
                        failed.append({"to": recipient.to, "error": str(error)})
                    index += 1
        except SMTP_ERRORS as exc:
            progress.save(index, sent, failed)  # resume at the recipient that failed
            fail_or_retry(exc)
        progress.save(index, sent, failed)
        report_progress(index, total, f"sent batch {batch_number} of {batches}")
    return {"sent": sent, "failed": progress.failures()}


task_types = [send_email, send_bulk]
