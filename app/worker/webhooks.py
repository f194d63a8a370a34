"""Webhook delivery: a task's or a workflow's final resource POSTed to its ``callback_url``.

The trigger is the one place every final state is stored: ``store_result.lua`` answers
2 the first time a task with a callback reaches SUCCESS, FAILURE or REVOKED (a cancel
of a queued task included, which the API stores), and 3 when the last open step of a
workflow with a callback becomes final (a failed step's followers and a cancel's steps
are stored REVOKED, so every workflow closes there, once); ``ResultStore`` then queues
``errand.deliver_webhook`` (``queue_delivery``) for the task or the workflow. That
task is Errand's own, like the prune job: no task type, no record check. Each run is one attempt
(``webhook_attempt.lua`` lets one run per attempt, whatever the broker redelivers);
connection errors, timeouts, 408, 429 and 5xx are retried with exponential backoff
and jitter up to ``WEBHOOK_MAX_ATTEMPTS``; a 2xx is delivered; anything else fails.

The worker resolves the host itself, refuses it when any address is not public (unless
``WEBHOOK_ALLOW_PRIVATE``), and connects to the address it checked, sending the name in
``Host`` and, for https, in SNI and the certificate check: a name cannot be made to point
elsewhere between the check and the connection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import socket
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis
from celery import Celery, Task, shared_task
from celery.exceptions import Retry
from flask import current_app
from urllib3.connection import HTTPConnection, HTTPSConnection

from app import store
from app.clock import isotime
from app.jobs import workflow_resource
from app.jobs.resource import resource
from app.store import keys, records, workflows
from app.store import webhooks as delivery_store
from app.webhooks import PRIVATE, for_logs, forbidden, signature, url_problem
from app.worker import messages

log = logging.getLogger(__name__)

NAME = "errand.deliver_webhook"
RESPONSE_LIMIT = 1024  # bytes of a receiver's answer read at most (it is not kept)
USER_AGENT = "Errand-Webhooks/1"


class DeliveryError(Exception):
    """An attempt failed; ``retry`` says whether a later one may go better."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def queue_delivery(celery_app: Celery, task_id: str, kind: str = "task") -> None:
    """Queue the first attempt to deliver a task's (or a workflow's) webhook, once per one."""
    options: dict[str, Any] = {}
    if celery_app.conf.broker_url.startswith(store.SCHEMES):
        options["priority"] = messages.redis_priority(None)  # as a job without a priority
    args = [task_id, 0] if kind == "task" else [task_id, 0, kind]
    try:
        celery_app.send_task(NAME, args=args, **options)
    except Exception as exc:  # the final state is stored; say why no webhook will come
        log.error("%s %s: could not queue its webhook: %r", kind, task_id, exc)
        with contextlib.suppress(redis.RedisError):
            delivery_store.finish(
                store.client(), task_id, "failed", None, "could not queue the delivery",
                kind=kind,
            )  # fmt: skip


def queue_if_waiting(celery_app: Celery, task_id: str) -> None:
    """Queue a final task's webhook again if no attempt has started.

    For a redelivered message of a task that is final already: the worker that
    stored its final state may have died before it queued the webhook. A second
    delivery message is harmless (``webhook_attempt.lua`` lets one through).
    The same for the workflow the task is a step of, once that is closed.
    """
    client = store.client()
    fields = ["callback_state", "callback_attempts", "workflow"]
    try:
        state, attempts, workflow = client.hmget(keys.record(task_id), fields)
        if workflow:
            found = client.hmget(keys.workflow(workflow.decode()), ["open", *fields[:2]])
    except redis.RedisError as exc:  # the task's own outcome must not suffer for it
        log.warning("task %s: could not check its webhook: %r", task_id, exc)
        return
    if state == b"pending" and attempts in (None, b"0"):
        queue_delivery(celery_app, task_id)
    if workflow and found[0] == b"0" and found[1] == b"pending" and found[2] in (None, b"0"):
        queue_delivery(celery_app, workflow.decode(), "workflow")


def resolve(host: str, port: int, allow_private: bool) -> str:
    """The address to connect to: every address of ``host`` checked, the first one used."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DeliveryError(f"could not resolve {host}: {exc}", retry=True) from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not addresses:
        raise DeliveryError(f"{host} has no address", retry=True)
    if not allow_private:
        for address in addresses:
            if forbidden(ipaddress.ip_address(address)):
                raise DeliveryError(f"{host} resolves to {PRIVATE} ({address}): refused", False)
    return addresses[0]


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    allow_private: bool,
    allowed_hosts: frozenset[str] = frozenset(),
) -> int:
    """POST ``body`` to ``url`` and return the answer's status; no redirect is followed.

    The URL is checked again (the settings may have changed since the submit).
    ``timeout`` bounds the whole exchange (a watchdog closes a connection that a
    receiver keeps dripping), and at most ``RESPONSE_LIMIT`` bytes of the body are read.
    """
    problem = url_problem(url, allow_private, allowed_hosts)
    if problem:
        raise DeliveryError(f"callback_url refused: {problem}", retry=False)
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    address = resolve(host, port, allow_private)
    name = f"[{host}]" if ":" in host else host
    authority = name if parts.port in (None, 443 if https else 80) else f"{name}:{parts.port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection: HTTPConnection
    if https:
        connection = HTTPSConnection(
            address, port, timeout=timeout, server_hostname=host, assert_hostname=host,
            cert_reqs="CERT_REQUIRED",
        )  # fmt: skip
    else:
        connection = HTTPConnection(address, port, timeout=timeout)
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        with contextlib.suppress(OSError, AttributeError):
            connection.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]

    watchdog = threading.Timer(timeout, cut)
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.request(
            "POST", target, body=body, headers={**headers, "Host": authority},
            preload_content=False,
        )  # fmt: skip
        response = connection.getresponse()
        response.read(RESPONSE_LIMIT)
        if expired.is_set():  # cut off mid-answer: what was read may end anywhere
            raise TimeoutError
        return int(response.status)
    except Exception as exc:  # sockets, TLS, urllib3 and http.client raise many kinds
        if expired.is_set() or isinstance(exc, TimeoutError | socket.timeout):
            raise DeliveryError(f"no answer within {timeout:g} s", retry=True) from exc
        raise DeliveryError(f"could not deliver: {type(exc).__name__}: {exc}"[:300], True) from exc
    finally:
        watchdog.cancel()
        connection.close()


def verdict(status: int) -> tuple[str, str | None]:
    """What a receiver's status means: ('delivered'|'retry'|'failed', the error to keep)."""
    if 200 <= status < 300:
        return "delivered", None
    error = f"the receiver answered {status}"
    if status in (408, 429) or 500 <= status < 600:
        return "retry", error
    if 300 <= status < 400:
        return "failed", error + " (redirects are not followed)"
    return "failed", error


def backoff(attempt: int, first: float, cap: float) -> float:
    """Seconds before the attempt after ``attempt``: doubling from ``first``, equal jitter."""
    delay = min(cap, first * 2 ** (attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)


def current_resource(kind: str, subject_id: str) -> dict[str, Any] | None:
    """What ``GET /api/v1/tasks/<id>`` (or ``/workflows/<id>``) answers now; None when gone."""
    client = store.client()
    if kind == "workflow":
        read = workflows.read(client, subject_id, "")
        if read is None:
            return None
        record, steps = read
        task_ids = record["tasks"].split(",") if record.get("tasks") else []
        found = list(zip(task_ids, steps, strict=True))
        return workflow_resource.resource(subject_id, record, found)
    task, _ = records.status(client, subject_id, "")
    return None if task is None else resource(subject_id, *task)


def attempt_once(
    task_id: str, attempt: int, kind: str = "task"
) -> tuple[str, int | None, str | None, str]:
    """Send the task's (or workflow's) resource as it is now: (outcome, status, error, the URL
    for logs).

    ``outcome`` is 'delivered', 'retry' or 'failed'; 'gone' when the record expired.
    """
    config = current_app.config
    found = current_resource(kind, task_id)
    if found is None or found.get("callback") is None:
        return "gone", None, None, ""
    url = found["callback"]["url"]
    body = orjson.dumps(found)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Errand-Signature": signature(config["WEBHOOK_SECRET"], int(time.time()), body),
        "Errand-Workflow-Id" if kind == "workflow" else "Errand-Task-Id": task_id,
        "Errand-Delivery-Id": str(uuid.uuid4()),
        "Errand-Attempt": str(attempt),
    }
    try:
        status = post(
            url, body, headers, float(config["WEBHOOK_TIMEOUT"]),
            config["WEBHOOK_ALLOW_PRIVATE"], config["WEBHOOK_ALLOWED_HOSTS"],
        )  # fmt: skip
    except DeliveryError as exc:
        return ("retry" if exc.retry else "failed"), None, str(exc), for_logs(url)
    outcome, error = verdict(status)
    return outcome, status, error, for_logs(url)


@shared_task(name=NAME, bind=True, ignore_result=True, max_retries=None)
def deliver_webhook(self: Task, task_id: str, made: int = 0, kind: str = "task") -> None:
    """One attempt to deliver a task's webhook; the next one is queued when it may help.

    ``made`` is how many attempts were made before this one; the retry policy is
    Errand's settings (``WEBHOOK_*``), counted in the task's record. With ``kind``
    'workflow', ``task_id`` is a workflow's id, and its record and resource are used.
    """
    if kind not in ("task", "workflow"):
        log.error("webhook for a %r: not a kind Errand delivers; dropped", kind[:20])
        return
    config = current_app.config
    client = store.client()
    lock_s = float(config["WEBHOOK_TIMEOUT"]) + 30  # longer than an attempt, DNS included
    attempt = delivery_store.start_attempt(client, task_id, made, int(lock_s * 1000), kind)
    if not attempt:
        log.info("%s %s: webhook attempt %d not needed (done, or a duplicate)", kind, task_id,
                 made + 1)  # fmt: skip
        return
    try:
        outcome, status, error, shown = attempt_once(task_id, attempt, kind)
    except Exception as exc:  # Redis, or a bug: count it as an attempt that may go better
        log.exception("%s %s: webhook attempt %d broke", kind, task_id, attempt)
        outcome, status, error, shown = "retry", None, f"internal error: {type(exc).__name__}", ""
    if outcome == "gone":
        return
    final = outcome != "retry" or attempt >= config["WEBHOOK_MAX_ATTEMPTS"]
    state = "delivered" if outcome == "delivered" else "failed" if final else "pending"
    delay = backoff(attempt, config["WEBHOOK_BACKOFF"], config["WEBHOOK_BACKOFF_MAX"])
    try:
        delivered_at = isotime() if state == "delivered" else None
        delivery_store.finish(client, task_id, state, status, error, delivered_at, kind)
    except redis.RedisError as exc:  # the attempt holds its lock until it expires: come back then
        log.warning("%s %s: could not keep webhook attempt %d: %r", kind, task_id, attempt, exc)
        raise self.retry(args=(task_id, made, kind), countdown=lock_s + 1) from exc
    log.log(
        logging.INFO if state == "delivered" else logging.WARNING,
        "%s %s: webhook to %s %s (%s, attempt %d)%s",
        kind, task_id, shown, state, error or status, attempt,
        "" if final else f"; again in {delay:.1f} s",
    )  # fmt: skip
    if final:
        return
    try:
        raise self.retry(args=(task_id, attempt, kind), countdown=delay)
    except Retry:
        raise
    except Exception as exc:  # the broker refused the retry: no later attempt will come
        log.error("%s %s: could not queue webhook attempt %d: %r", kind, task_id, attempt + 1, exc)
        error = f"{error}; could not queue the next attempt"
        delivery_store.finish(client, task_id, "failed", status, error, kind=kind)
