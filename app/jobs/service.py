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

import orjson
import redis
from celery import Celery
from celery.exceptions import CeleryError
from kombu.exceptions import KombuError

from app.clock import isotime
from app.errors import (
    BrokerUnavailable,
    RateLimited,
    StateConflict,
    StoreUnavailable,
    TaskNotFound,
    TooManyInFlight,
    Unprocessable,
)
from app.jobs.resource import FINAL_STATES, encode_cursor, resource, summary
from app.store import SCHEMES, keys, quotas, records, webhooks
from app.store.quotas import Quota, Usage
from app.store.scripts import ReplicasBehind
from app.tasks.registry import Registry, TaskType
from app.worker import messages

log = logging.getLogger(__name__)

# What publishing can raise when the broker is down or hung: kombu wraps
# connection errors in its OperationalError, redis-py and sockets raise their own.
BROKER_ERRORS = (KombuError, CeleryError, redis.RedisError, OSError)
# A 503 whose write reached the primary but not REDIS_MIN_REPLICAS replicas in time.
UNCONFIRMED = (
    "the task store's replicas did not confirm this in time; it may still go ahead: "
    "retry with the same Idempotency-Key to get the same task, never a second one"
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id and name, and whether it is an admin key."""

    key_id: str
    name: str
    admin: bool


# Who calls when AUTH_DISABLED is set: anyone, with an admin's reach.
OPEN_ACCESS = Principal("", "anyone (AUTH_DISABLED)", admin=True)

PAGE_BYTES = 256 * 1024  # a listing page stops growing here, whatever its limit

KEY_REUSED = [{"loc": ["header", "Idempotency-Key"], "msg": "already used with another body"}]


def fingerprint(
    task_name: str,
    params: dict[str, Any],
    options: dict[str, Any],
    callback_url: str | None = None,
) -> str:
    """What makes two submits the same request, for an Idempotency-Key."""
    body: dict[str, Any] = {"task": task_name, "params": params, "options": options}
    if callback_url is not None:  # absent, the fingerprint is what it was before webhooks
        body["callback_url"] = callback_url
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
        conf = celery_app.conf
        self.queue = conf.task_default_queue
        self.redis_broker = conf.broker_url.startswith(SCHEMES)
        # One script does the whole submit when the queue is in the task store's Redis.
        self.one_script = self.redis_broker and conf.broker_url == settings["REDIS_URL"]
        self.deadline_s = float(settings["SUBMIT_DEADLINE"])
        # The one script must not run once the API may have answered 503: the
        # client gives up after two tries of REDIS_TIMEOUT each (one retry of a
        # broken connection), so a script that a hung Redis runs later is late.
        self.script_deadline_s = 1.8 * float(settings["REDIS_TIMEOUT"])
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
        quota: Quota | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> tuple[dict[str, Any], Usage | None]:
        """Hand a job to the broker and record it; the task resource and what the quota left.

        On a Redis broker that is the task store too, one script does it all
        (``submit.lua``): it counts the quota, claims the ``idempotency_key``,
        takes a place in flight, writes the record and pushes the message, or
        changes nothing. Elsewhere (RabbitMQ) the message is published first
        and the record written second, by a script that refuses to write once
        Redis's clock has passed the submit's deadline; a worker that receives
        a message with no record waits until that deadline, then drops it.
        Either way a submit that answers 503 leaves neither a record nor a job
        that runs, even when a hung Redis applies its commands late.

        An ``idempotency_key`` already used for the same request returns the
        task it made; used for another request, it is a 422. ``fields`` are
        more record fields (a schedule's or a workflow's id, a callback), kept
        with the record from its first write.
        """
        task_id = str(uuid.uuid4())
        created = time.time()
        deadline_us = int((created + self.deadline_s) * 1_000_000)
        claim = None
        if idempotency_key is not None:
            scoped = f"{principal.key_id}\0{idempotency_key}"  # owners' keys never meet
            key = keys.idempotency(hashlib.sha256(scoped.encode()).hexdigest())
            callback_url = (fields or {}).get("callback_url")
            claim = (key, fingerprint(task_type.name, params, options, callback_url))
        if self.one_script:
            return self._submit_in_one_script(
                principal, task_type, params, options, claim, request_id, retry_of, quota,
                task_id, created, int((created + self.script_deadline_s) * 1_000_000), fields,
            )  # fmt: skip
        usage = None
        if quota is not None:
            try:
                usage = quotas.hit(self.client, quota)
            except redis.RedisError as exc:
                raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
            if not usage.allowed:
                raise RateLimited(quota.name, quota.amount, quota.window, usage.reset)
        owner = principal.key_id
        if claim is not None:
            existing = self._claim(principal, claim, task_id, deadline_us)
            if existing is not None:
                return existing, usage
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
                    retry_of, options, fields,
                )  # fmt: skip
            except ReplicasBehind as exc:  # written and kept: a retry with the key finds it
                raise StoreUnavailable(UNCONFIRMED) from exc
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
        shown = self._shown(task_type, created, retry_of, options, fields)
        return resource(task_id, shown, None), usage

    def _submit_in_one_script(
        self,
        principal: Principal,
        task_type: TaskType,
        params: dict[str, Any],
        options: dict[str, Any],
        claim: tuple[str, str] | None,
        request_id: str,
        retry_of: str | None,
        quota: Quota | None,
        task_id: str,
        created: float,
        deadline_us: int,
        fields: Mapping[str, str] | None = None,
    ) -> tuple[dict[str, Any], Usage | None]:
        params_json = orjson.dumps(params)
        priority = options.get("priority")
        message = messages.encode(
            task_id,
            task_type.name,
            params_json,
            task_type.queue or self.queue,
            options.get("countdown", 0),
            priority,
            # A message and its record land together: no record means none is coming.
            {"errand_deadline": 0, "errand_request_id": request_id},
        )
        shown = self._shown(task_type, created, retry_of, options, fields)
        try:
            done = records.submit(
                self.client,
                task_id=task_id,
                task_name=task_type.name,
                shown=shown,
                created=created,
                deadline_us=deadline_us,
                params_json=params_json.decode(),
                owner=principal.key_id,
                queue=task_type.queue or self.queue,
                queue_list=messages.queue_list(task_type.queue or self.queue, priority),
                message=message,
                quota=quota,
                in_flight_cap=self.in_flight_limit,
                idempotency=claim,
                idempotency_ttl=self.idempotency_ttl,
                retry_of=retry_of,
            )
        except ReplicasBehind as exc:
            log.warning("submit %s: %s", task_id, exc)
            raise StoreUnavailable(UNCONFIRMED) from exc
        except redis.RedisError as exc:
            log.warning("submit %s: task store unreachable: %r", task_id, exc)
            raise StoreUnavailable("the task store did not answer in time") from exc
        if done.verdict == "ok":
            return resource(task_id, shown, None), done.usage
        if done.verdict in {"existing", "retried"}:
            return self.status(principal, done.existing_id), done.usage
        if done.verdict == "conflict":
            raise Unprocessable("this Idempotency-Key was used for a different request", KEY_REUSED)
        if done.verdict == "rate" and quota is not None and done.usage is not None:
            raise RateLimited(quota.name, quota.amount, quota.window, done.usage.reset)
        if done.verdict == "inflight":
            raise self._too_many_in_flight()
        log.error("submit %s: Redis ran it past the deadline (hung, or clock skew)", task_id)
        raise StoreUnavailable("the task store did not answer in time")

    def _shown(
        self,
        task_type: TaskType,
        created: float,
        retry_of: str | None,
        options: dict[str, Any],
        fields: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The new record's fields that its resource shows (a 202's body is built from them)."""
        record = {"task": task_type.name, "created_at": isotime(created), "retries": "0"}
        record.update(records.schedule_fields(created, options))
        record.update(fields or {})
        if retry_of:
            record["retry_of"] = retry_of
        return record

    def _too_many_in_flight(self) -> TooManyInFlight:
        cap = self.in_flight_limit
        return TooManyInFlight(
            f"this key has {cap} tasks that have not finished; wait for some to finish",
            retry_after=self.in_flight_retry_after,
            limit=cap,
        )

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
        if self.redis_broker:  # higher runs first, as on RabbitMQ (see app.worker.messages)
            options = {**options, "priority": messages.redis_priority(options.get("priority"))}
        self.celery_app.tasks[task_type.name].apply_async(
            args=[params], task_id=task_id, headers=headers, queue=task_type.queue, **options
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
            raise self._too_many_in_flight()

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
                    "this Idempotency-Key was used for a different request", KEY_REUSED
                )
            if verdict == "existing":
                return self.status(principal, other_id)
            if time.monotonic() > give_up:  # the first submit hangs beyond its own deadline
                raise StoreUnavailable("a submit with this Idempotency-Key is still in flight")
            time.sleep(0.02)  # 'inflight': the first submit with this key is on its way

    def resubmit(self, principal: Principal, task_id: str, request_id: str = "") -> dict[str, Any]:
        """Submit a failed or cancelled task again, with the same type, params and options.

        A task is retried once: asked again, this answers the task the first
        retry made (as an Idempotency-Key would).
        """
        task = self.status(principal, task_id)
        if "workflow" in task["links"]:  # its place in the workflow cannot be run again alone
            raise StateConflict("a workflow's step is not retried alone: submit the workflow again")
        if "retried_by" in task["links"]:
            return self.status(principal, task["links"]["retried_by"].rsplit("/", 1)[-1])
        if task["state"] not in {"FAILURE", "REVOKED"}:
            raise StateConflict(
                f"only a FAILURE or REVOKED task can be retried, not {task['state']}"
            )
        try:
            params, options = records.params_of(self.client, task_id)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
        task_type = self.task_types.get(task["task"] or "")
        if params is None or task_type is None:
            raise StateConflict(f"task {task_id} can no longer be retried")
        callback = task.get("callback")  # the webhook goes with the retry
        fields = webhooks.submit_fields(callback["url"]) if callback else None
        task, _ = self.submit(
            principal, task_type, params, options, None, request_id, retry_of=task_id,
            fields=fields,
        )  # fmt: skip
        return task

    def status(self, principal: Principal, task_id: str) -> dict[str, Any]:
        """The task resource, or 404 for an id this API did not issue or has forgotten."""
        return self.read(principal, task_id)[0]

    def read(
        self, principal: Principal, task_id: str, quota: Quota | None = None
    ) -> tuple[dict[str, Any], Usage | None]:
        """``status``, counted in ``quota``, in one script: the resource and what is left."""
        viewer = "" if principal.admin else principal.key_id
        try:
            found, usage = records.status(self.client, task_id, viewer, quota)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
        if quota is not None and usage is not None and not usage.allowed:
            raise RateLimited(quota.name, quota.amount, quota.window, usage.reset)
        # Another owner's task answers exactly as an unknown id does.
        if found is None:
            raise TaskNotFound(f"no task {task_id}")
        return resource(task_id, *found), usage

    def cancel(self, principal: Principal, task_id: str) -> dict[str, Any]:
        """Cancel a task: kept in its record, stored as ``REVOKED``, stopped where it runs."""
        task = self.status(principal, task_id)
        if task["state"] in FINAL_STATES:
            raise StateConflict(f"task {task_id} is already {task['state']}")
        self.revoke([task_id])
        return self.status(principal, task_id)

    def revoke(self, task_ids: list[str]) -> None:
        """Cancel tasks the caller may cancel: kept in each record, REVOKED, stopped where run."""
        try:
            for task_id in task_ids:
                records.revoke(self.client, task_id)
                self.celery_app.backend.mark_as_revoked(task_id, "cancelled by the client")
        except redis.RedisError as exc:
            raise StoreUnavailable(f"could not cancel: {exc}") from exc
        try:
            # terminate=True also stops a task that started in the meantime; a
            # worker that is down now sees the cancel in the record when it starts.
            self.celery_app.control.revoke(task_ids, terminate=True)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"could not cancel: {exc}") from exc

    def list(
        self,
        principal: Principal,
        state: str | None,
        task_name: str | None,
        limit: int,
        cursor: tuple[int, str] | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of task summaries, newest first, and the cursor of the next page.

        A state filter reads that state's index; what the index says is checked
        against the record, and at most 1000 entries are read per page, so a
        rare combination cannot stall a request. A page also stops at
        ``PAGE_BYTES``.
        """
        owner = None if principal.admin else principal.key_id
        if state is not None:
            index = keys.state_index(state, owner)
        elif owner is None:
            index = keys.type_index(task_name) if task_name else keys.INDEX
        else:
            index = keys.owner_index(owner, task_name)
        budget = 1000
        items: list[dict[str, Any]] = []
        size = 0
        last: tuple[int, str] | None = cursor
        try:
            while budget > 0:
                want = min(limit if task_name is None or state is None else 200, budget)
                rows = records.scan(self.client, index, last, want)
                budget -= len(rows)
                found = records.summaries(self.client, [task_id for _, task_id in rows])
                for row, record in zip(rows, found, strict=True):
                    last = row
                    if record is None:
                        continue  # expired; the beat job prunes the index
                    task = summary(row[1], record)
                    if (state and task["state"] != state) or (
                        task_name and task["task"] != task_name
                    ):
                        continue
                    if principal.admin:
                        task["owner"] = record.get("owner") or None  # the key that submitted it
                    items.append(task)
                    size += len(orjson.dumps(task))
                    if len(items) == limit or size > PAGE_BYTES:
                        return items, encode_cursor(*row)
                if len(rows) < want:
                    return items, None
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
        return items, encode_cursor(*last) if last else None
