"""``Jobs``: submit, status, cancel, resubmit and list, for a ``Principal``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from celery.exceptions import CeleryError
from kombu.exceptions import KombuError

from app.clock import isotime
from app.errors import (
    BrokerUnavailable,
    StateConflict,
    StoreUnavailable,
    TaskNotFound,
    TooManyInFlight,
    Unprocessable,
)
from app.jobs.resource import FINAL_STATES, encode_cursor, resource
from app.store import keys, records
from app.tasks.registry import Registry, TaskType

log = logging.getLogger(__name__)

# What publishing can raise when the broker is down or hung: kombu wraps
# connection errors in its OperationalError, redis-py and sockets raise their own.
BROKER_ERRORS = (KombuError, CeleryError, redis.RedisError, OSError)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id and name, and whether it is an admin key."""

    key_id: str
    name: str
    admin: bool


# Who calls when AUTH_DISABLED is set: anyone, with an admin's reach.
OPEN_ACCESS = Principal("", "anyone (AUTH_DISABLED)", admin=True)


def fingerprint(task_name: str, params: dict[str, Any], options: dict[str, Any]) -> str:
    """What makes two submits the same request, for an Idempotency-Key."""
    body = {"task": task_name, "params": params, "options": options}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Jobs:
    """What a client can do with jobs, against one Redis and one Celery application."""

    def __init__(
        self,
        client: redis.Redis,
        celery_app: Celery,
        task_types: Registry,
        settings: Mapping[str, Any],
    ) -> None:
        self.client, self.celery_app, self.task_types = client, celery_app, task_types
        self.deadline_s = float(settings["SUBMIT_DEADLINE"])
        self.in_flight_limit = int(settings["IN_FLIGHT_LIMIT"])
        self.in_flight_retry_after = int(settings["IN_FLIGHT_RETRY_AFTER"])
        self.idempotency_ttl = int(settings["IDEMPOTENCY_TTL"])

    def submit(
        self,
        principal: Principal,
        task_type: TaskType,
        params: dict[str, Any],
        options: dict[str, Any],
        idempotency_key: str | None = None,
        request_id: str = "",
        retry_of: str | None = None,
    ) -> dict[str, Any]:
        """Hand a job to the broker and record it; 503 if either does not answer.

        The message is published first and the record written second, by a
        script that refuses to write once Redis's clock has passed the
        submit's deadline. A worker that receives a message with no record
        waits until that deadline, then drops it. So a submit that answers 503
        leaves neither a record nor a job that runs, even when a hung Redis
        applies its commands late.

        An ``idempotency_key`` already used for the same request returns the
        task it made, waiting for a submit still in flight; used for another
        request, it is a 422.
        """
        task_id = str(uuid.uuid4())
        created = time.time()
        deadline_us = int((created + self.deadline_s) * 1_000_000)
        owner = principal.key_id
        claim = None
        if idempotency_key is not None:
            scoped = f"{owner}\0{idempotency_key}"  # keys of different owners never meet
            key = keys.idempotency(hashlib.sha256(scoped.encode()).hexdigest())
            claim = (key, fingerprint(task_type.name, params, options))
            existing = self._claim(principal, claim, task_id, deadline_us)
            if existing is not None:
                return existing
        if owner:
            self._reserve(owner, task_id, deadline_us, claim)
        error: Exception | None = None
        try:
            self._publish(task_type, params, options, task_id, deadline_us, request_id)
        except BROKER_ERRORS as exc:
            error = BrokerUnavailable("the broker did not answer in time")
            log.warning("submit %s: broker unreachable: %r", task_id, exc)
        if error is None:
            try:
                written = records.create(
                    self.client, task_id, task_type.name, created, deadline_us, params, owner,
                    retry_of,
                )  # fmt: skip
            except redis.RedisError as exc:
                log.warning("submit %s: task store unreachable: %r", task_id, exc)
                written = False
            if not written:
                if time.time() * 1_000_000 < deadline_us:
                    log.error("submit %s: Redis's clock is past the deadline: check skew", task_id)
                error = StoreUnavailable("the task store did not answer in time")
        if error is not None:
            with contextlib.suppress(redis.RedisError):
                if claim is not None:
                    records.release_key(self.client, claim[0], task_id)
                if owner:
                    records.unreserve(self.client, owner, task_id)
            raise error
        record = {"task": task_type.name, "created_at": isotime(created), "retries": "0"}
        if retry_of:
            record["retry_of"] = retry_of
        return resource(task_id, record, None)

    def _publish(
        self,
        task_type: TaskType,
        params: dict[str, Any],
        options: dict[str, Any],
        task_id: str,
        deadline_us: int,
        request_id: str,
    ) -> None:
        headers = {"errand_deadline": deadline_us, "errand_request_id": request_id}
        self.celery_app.tasks[task_type.name].apply_async(
            args=[params], task_id=task_id, headers=headers, **options
        )

    def _reserve(
        self, owner: str, task_id: str, deadline_us: int, claim: tuple[str, str] | None
    ) -> None:
        """Take a place among the key's tasks in flight, or answer 429."""
        cap = self.in_flight_limit
        try:
            taken = records.reserve(self.client, owner, task_id, deadline_us, cap)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
        if not taken:
            if claim is not None:
                with contextlib.suppress(redis.RedisError):
                    records.release_key(self.client, claim[0], task_id)
            raise TooManyInFlight(
                f"this key has {cap} tasks that have not finished; wait for some to finish",
                retry_after=self.in_flight_retry_after,
                limit=cap,
            )

    def _claim(
        self, principal: Principal, claim: tuple[str, str], task_id: str, deadline_us: int
    ) -> dict[str, Any] | None:
        """None when this request holds the key now; else the task the key already made."""
        key, wanted = claim
        give_up = time.monotonic() + self.deadline_s + 1
        while True:
            try:
                verdict, held_for, other_id = records.claim_key(
                    self.client, key, wanted, task_id, deadline_us, self.idempotency_ttl
                )
            except redis.RedisError as exc:
                raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
            if verdict == "new":
                return None
            if held_for != wanted:
                raise Unprocessable(
                    "this Idempotency-Key was used for a different request",
                    [
                        {
                            "loc": ["header", "Idempotency-Key"],
                            "msg": "already used with another body",
                        }
                    ],
                )
            if verdict == "existing":
                return self.status(principal, other_id)
            if time.monotonic() > give_up:  # the first submit hangs beyond its own deadline
                raise StoreUnavailable("a submit with this Idempotency-Key is still in flight")
            time.sleep(0.02)  # 'inflight': the first submit with this key is on its way

    def resubmit(self, principal: Principal, task_id: str, request_id: str = "") -> dict[str, Any]:
        """Submit a failed or cancelled task again, with the same type and params."""
        task = self.status(principal, task_id)
        if task["state"] not in {"FAILURE", "REVOKED"}:
            raise StateConflict(
                f"only a FAILURE or REVOKED task can be retried, not {task['state']}"
            )
        try:
            params = records.params_of(self.client, task_id)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
        task_type = self.task_types.get(task["task"] or "")
        if params is None or task_type is None:
            raise StateConflict(f"task {task_id} can no longer be retried")
        return self.submit(principal, task_type, params, {}, None, request_id, retry_of=task_id)

    def status(self, principal: Principal, task_id: str) -> dict[str, Any]:
        """The task resource, or 404 for an id this API did not issue or has forgotten."""
        try:
            (found,) = records.read(self.client, [task_id])
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
        # Another owner's task answers exactly as an unknown id does.
        if found is None or not (principal.admin or found[0].get("owner") == principal.key_id):
            raise TaskNotFound(f"no task {task_id}")
        return resource(task_id, *found)

    def cancel(self, principal: Principal, task_id: str) -> dict[str, Any]:
        """Cancel a task: kept in its record, stored as ``REVOKED``, stopped where it runs."""
        task = self.status(principal, task_id)
        if task["state"] in FINAL_STATES:
            raise StateConflict(f"task {task_id} is already {task['state']}")
        try:
            records.revoke(self.client, task_id)
            self.celery_app.backend.mark_as_revoked(task_id, "cancelled by the client")
        except redis.RedisError as exc:
            raise StoreUnavailable(f"could not cancel: {exc}") from exc
        try:
            # terminate=True also stops a task that started in the meantime; a
            # worker that is down now sees the cancel in the record when it starts.
            self.celery_app.control.revoke(task_id, terminate=True)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"could not cancel: {exc}") from exc
        return self.status(principal, task_id)

    def list(
        self,
        principal: Principal,
        state: str | None,
        task_name: str | None,
        limit: int,
        cursor: tuple[int, str] | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of tasks, newest first, and the cursor of the next page."""
        if principal.admin:
            index = keys.type_index(task_name) if task_name else keys.INDEX
        else:
            index = keys.owner_index(principal.key_id, task_name)
        batch = limit if state is None else 200
        budget = 1000  # index entries read per request, so a rare state cannot stall it
        items: list[dict[str, Any]] = []
        last: tuple[int, str] | None = cursor
        try:
            while budget > 0:
                want = min(batch, budget)
                rows = records.scan(self.client, index, last, want)
                budget -= len(rows)
                found = records.read(self.client, [task_id for _, task_id in rows])
                for row, hit in zip(rows, found, strict=True):
                    last = row
                    if hit is None:
                        continue  # expired; the beat job prunes the index
                    task = resource(row[1], *hit)
                    if state is None or task["state"] == state:
                        items.append(task)
                        if len(items) == limit:
                            return items, encode_cursor(*row)
                if len(rows) < want:
                    return items, None
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
        return items, encode_cursor(*last) if last else None
