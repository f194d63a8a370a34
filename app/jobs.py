"""What a client can do with a job: submit, read, cancel, list.

Round trips to Redis, per call, beyond the rate limiter's one per request
(``app.limits``; the API key itself is checked from a short cache, ``app.auth``):
- ``submit``: two, the broker publish and one script that writes the record and
  its indexes (the publish comes first, see ``submit``); one more to reserve a
  place in flight when keys are on, and one more with an ``Idempotency-Key``.
- ``status``: one pipeline (the record, its owner, and Celery's result).
- ``cancel``: a status read, one script, Celery's store of ``REVOKED`` and the
  revoke broadcast.
- ``list_tasks``: one pipeline per page of the index, plus one for the records.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any

import redis
from celery.exceptions import CeleryError
from flask import current_app, g
from kombu.exceptions import KombuError

from app import auth, records
from app.celery_app import celery_of, task_headers
from app.errors import (
    BrokerUnavailable,
    StateConflict,
    TaskNotFound,
    TooManyInFlight,
    Unprocessable,
)
from app.extensions import store
from app.tasktypes import TaskType, registry

log = logging.getLogger(__name__)

# What publishing can raise when the broker is down or hung: kombu wraps
# connection errors in its OperationalError, redis-py and sockets raise their own.
UNREACHABLE = (KombuError, CeleryError, redis.RedisError, OSError)


def submit(
    task_type: TaskType,
    params: dict[str, Any],
    options: dict[str, Any],
    idempotency: tuple[str, str] | None = None,
    retry_of: str | None = None,
) -> dict[str, Any]:
    """Hand a job to the broker and record it; 503 if either does not answer.

    The message is published first and the record written second, by a script
    that refuses to write once Redis's clock has passed the submit's deadline.
    A worker that receives a message with no record waits until that deadline,
    then drops it. So a submit that answers 503 leaves neither a record nor a
    job that runs, even when a hung Redis applies its commands late.

    ``idempotency`` is (Redis key, fingerprint of the request): a key already
    used for the same request returns the task it made, waiting for a submit
    still in flight; used for another request, it is a 422.
    """
    task_id = str(uuid.uuid4())
    created = time.time()
    deadline_us = int((created + current_app.config["SUBMIT_DEADLINE"]) * 1_000_000)
    owner = auth.current().key_id
    if idempotency is not None:
        existing = _claim(idempotency, task_id, deadline_us)
        if existing is not None:
            return existing
    if owner:
        _reserve(owner, task_id, deadline_us, idempotency)
    try:
        _publish(task_type, params, options, task_id, deadline_us)
        written = records.create(
            store(), task_id, task_type.name, created, deadline_us, params, owner, retry_of
        )
        if not written and time.time() * 1_000_000 < deadline_us:
            log.error("submit %s: Redis's clock is past the deadline: check clock skew", task_id)
    except UNREACHABLE as exc:
        log.warning("submit %s: broker or record store unreachable: %r", task_id, exc)
        written = False
    if not written:
        with contextlib.suppress(*UNREACHABLE):
            if idempotency is not None:
                records.release_key(store(), idempotency[0], task_id)
            if owner:
                records.unreserve(store(), owner, task_id)
        raise BrokerUnavailable("the broker or the task store did not answer in time")
    record = {"task": task_type.name, "created_at": records.isotime(created), "retries": "0"}
    if retry_of:
        record["retry_of"] = retry_of
    return records.resource(task_id, record, None)


def _publish(
    task_type: TaskType,
    params: dict[str, Any],
    options: dict[str, Any],
    task_id: str,
    deadline: int,
) -> None:
    headers = task_headers(deadline=deadline, request_id=g.get("request_id", ""))
    celery_of(current_app).tasks[task_type.name].apply_async(
        args=[params], task_id=task_id, headers=headers, **options
    )


def _reserve(
    owner: str, task_id: str, deadline_us: int, idempotency: tuple[str, str] | None
) -> None:
    """Take a place among the key's tasks in flight, or answer 429."""
    cap = current_app.config["IN_FLIGHT_LIMIT"]
    try:
        taken = records.reserve(store(), owner, task_id, deadline_us, cap)
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"the task store did not answer: {exc}") from exc
    if not taken:
        if idempotency is not None:
            with contextlib.suppress(*UNREACHABLE):
                records.release_key(store(), idempotency[0], task_id)
        raise TooManyInFlight(
            f"this key has {cap} tasks that have not finished; wait for some to finish",
            retry_after=current_app.config["IN_FLIGHT_RETRY_AFTER"],
            limit=cap,
        )


def _claim(idempotency: tuple[str, str], task_id: str, deadline_us: int) -> dict[str, Any] | None:
    """None when this request holds the key now; else the task the key already made."""
    key, fingerprint = idempotency
    ttl = current_app.config["IDEMPOTENCY_TTL"]
    give_up = time.monotonic() + current_app.config["SUBMIT_DEADLINE"] + 1
    while True:
        try:
            verdict, held_for, other_id = records.claim_key(
                store(), key, fingerprint, task_id, deadline_us, ttl
            )
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"the task store did not answer: {exc}") from exc
        if verdict == "new":
            return None
        if held_for != fingerprint:
            raise Unprocessable(
                "this Idempotency-Key was used for a different request",
                [{"loc": ["header", "Idempotency-Key"], "msg": "already used with another body"}],
            )
        if verdict == "existing":
            return status(other_id)
        if time.monotonic() > give_up:  # the first submit hangs beyond its own deadline
            raise BrokerUnavailable("a submit with this Idempotency-Key is still in flight")
        time.sleep(0.02)  # 'inflight': the first submit with this key is on its way


def retry(task_id: str) -> dict[str, Any]:
    """Submit a failed or cancelled task again, with the same type and params."""
    task = status(task_id)
    if task["state"] not in {"FAILURE", "REVOKED"}:
        raise StateConflict(f"only a FAILURE or REVOKED task can be retried, not {task['state']}")
    try:
        params = records.params_of(store(), task_id)
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"the task store did not answer: {exc}") from exc
    task_type = registry.get(task["task"] or "")
    if params is None or task_type is None:
        raise StateConflict(f"task {task_id} can no longer be retried")
    return submit(task_type, params, {}, retry_of=task_id)


def status(task_id: str) -> dict[str, Any]:
    """The task resource, or 404 for an id this API did not issue or has forgotten."""
    try:
        (found,) = records.read(store(), [task_id])
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"the task store did not answer: {exc}") from exc
    principal = auth.current()
    # Another owner's task answers exactly as an unknown id does.
    if found is None or not (principal.admin or found[0].get("owner") == principal.key_id):
        raise TaskNotFound(f"no task {task_id}")
    return records.resource(task_id, *found)


def cancel(task_id: str) -> dict[str, Any]:
    """Cancel a task: kept in its record, stored as ``REVOKED``, and stopped where it runs."""
    task = status(task_id)
    if task["state"] in records.FINAL_STATES:
        raise StateConflict(f"task {task_id} is already {task['state']}")
    celery_app = celery_of(current_app)
    try:
        records.revoke(store(), task_id)
        celery_app.backend.mark_as_revoked(task_id, "cancelled by the client")
        # terminate=True also stops a task that started in the meantime; a
        # worker that is down now sees the cancel in the record when it starts.
        celery_app.control.revoke(task_id, terminate=True)
    except UNREACHABLE as exc:
        raise BrokerUnavailable(f"could not cancel: {exc}") from exc
    return status(task_id)


def list_tasks(
    state: str | None, task_name: str | None, limit: int, cursor: tuple[int, str] | None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of tasks, newest first, and the cursor of the next page."""
    client = store()
    principal = auth.current()
    if principal.admin:
        index = records.type_index(task_name) if task_name else records.INDEX
    else:
        index = records.owner_index(principal.key_id, task_name)
    batch = limit if state is None else 200
    budget = 1000  # index entries read per request, so a rare state cannot stall it
    items: list[dict[str, Any]] = []
    last: tuple[int, str] | None = cursor
    try:
        while budget > 0:
            want = min(batch, budget)
            rows = records.scan(client, index, last, want)
            budget -= len(rows)
            found = records.read(client, [task_id for _, task_id in rows])
            for row, hit in zip(rows, found, strict=True):
                last = row
                if hit is None:
                    continue  # expired; the beat job prunes the index
                task = records.resource(row[1], *hit)
                if state is None or task["state"] == state:
                    items.append(task)
                    if len(items) == limit:
                        return items, records.encode_cursor(*row)
            if len(rows) < want:
                return items, None
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"the task store did not answer: {exc}") from exc
    return items, records.encode_cursor(*last) if last else None
