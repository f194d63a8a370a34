"""``Workflows``: a chain or a group of tasks, each step an ordinary Errand task.

A chain runs its steps one after another, each getting the previous step's
result (if its type ``accepts_previous``); a group runs its steps at once and
an optional final step (``then``) gets the list of their results: Celery's
chain and chord, built with task ids given beforehand. Every step's record is
written, with the workflow's, by one script before any message is published,
so a worker never meets a step it has no record for; a publish that fails
takes them all back. Later steps are published by the workers (Celery's chain
and chord machinery); ``app.worker.results`` makes the steps that will never
run REVOKED.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import chain, chord, group
from celery.canvas import Signature

from app.clock import isotime
from app.errors import (
    BrokerUnavailable,
    RateLimited,
    StateConflict,
    StoreUnavailable,
    TaskNotFound,
    Unprocessable,
)
from app.jobs.resource import FINAL_STATES
from app.jobs.service import BROKER_ERRORS, KEY_REUSED, UNCONFIRMED, Jobs, Principal
from app.jobs.workflow_resource import resource
from app.store import keys, scripts, webhooks, workflows
from app.store.quotas import Quota, Usage
from app.store.scripts import ReplicasBehind
from app.tasks.registry import TaskType
from app.worker import messages

log = logging.getLogger(__name__)

KINDS = ("chain", "group")


@dataclass(frozen=True)
class Step:
    """A validated step: its task type, params and options."""

    task_type: TaskType
    params: dict[str, Any]
    options: dict[str, Any]


def fingerprint(
    kind: str, steps: Sequence[Step], has_then: bool, callback_url: str | None = None
) -> str:
    """What makes two workflows the same request, for an Idempotency-Key."""
    body: dict[str, Any] = {
        "kind": kind,
        "then": has_then,
        "steps": [[s.task_type.name, s.params, s.options] for s in steps],
    }
    if callback_url is not None:  # absent, the fingerprint is what it was before webhooks
        body["callback_url"] = callback_url
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Workflows:
    """What a client can do with workflows; the steps go through ``Jobs``'s store and Celery."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs
        self.client, self.celery_app = jobs.client, jobs.celery_app

    def create(
        self,
        principal: Principal,
        kind: str,
        steps: Sequence[Step],
        then: Step | None = None,
        request_id: str = "",
        quota: Quota | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> tuple[dict[str, Any], Usage | None]:
        """Record the workflow and all its steps, then publish it; the resource, the quota left.

        An ``idempotency_key`` already used for the same workflow returns the
        workflow it made; used for another request, it is a 422.

        One script counts the submit quota once, takes one place in flight per
        step (refusing the whole workflow with 429 when they do not fit) and
        writes every record; only then is the canvas published. A publish that
        fails removes all of it again (503): a message that reached the broker
        anyway finds no record and is dropped by the worker. A ``callback_url``
        (checked by the caller) gets the final workflow resource POSTed once
        (``store_result.lua``, ``app.worker.webhooks``).
        """
        workflow_id = str(uuid.uuid4())
        created = time.time()
        ordered = [*steps, *([then] if then else [])]
        digest = fingerprint(kind, ordered, then is not None, callback_url)
        ids = [str(uuid.uuid4()) for _ in ordered]
        # Steps published at once (a chain's first, a group's) have a known ETA.
        at_once = {0} if kind == "chain" else set(range(len(steps)))
        recorded = [
            workflows.Step(
                task_id,
                step.task_type.name,
                json.dumps(step.params, separators=(",", ":")),
                json.dumps(step.options, separators=(",", ":")),
                isotime(created + step.options["countdown"])
                if i in at_once and step.options.get("countdown")
                else "",
            )
            for i, (task_id, step) in enumerate(zip(ids, ordered, strict=True))
        ]
        owner = principal.key_id
        claim = None
        if idempotency_key is not None:  # per owner, and apart from the keys of task submits
            scoped = f"{owner}\0workflow\0{idempotency_key}"
            claim = (keys.idempotency(hashlib.sha256(scoped.encode()).hexdigest()), digest)
        deadline_us = int((created + self.jobs.script_deadline_s) * 1_000_000)
        try:
            done = workflows.create(
                self.client,
                workflow_id=workflow_id,
                kind=kind,
                has_then=then is not None,
                owner=owner,
                created=created,
                deadline_us=deadline_us,
                steps=recorded,
                quota=quota,
                in_flight_cap=self.jobs.in_flight_limit,
                idempotency=claim,
                idempotency_ttl=self.jobs.idempotency_ttl,
                callback_url=callback_url,
            )
        except ReplicasBehind as exc:
            log.warning("workflow %s: %s", workflow_id, exc)
            raise StoreUnavailable(UNCONFIRMED) from exc
        except redis.RedisError as exc:
            log.warning("workflow %s: task store unreachable: %r", workflow_id, exc)
            raise StoreUnavailable("the task store did not answer in time") from exc
        if done.verdict == "rate" and quota is not None and done.usage is not None:
            raise RateLimited(quota.name, quota.amount, quota.window, done.usage.reset)
        if done.verdict == "existing":
            return self.status(principal, done.existing_id), done.usage
        if done.verdict == "conflict":
            raise Unprocessable("this Idempotency-Key was used for a different request", KEY_REUSED)
        if done.verdict == "inflight":
            raise self.jobs._too_many_in_flight()
        if done.verdict != "ok":
            log.error(
                "workflow %s: Redis ran it past the deadline (hung, or clock skew)", workflow_id
            )
            raise StoreUnavailable("the task store did not answer in time")
        # What follows another step: a chain's every step but the first, a group's then.
        follows = (
            set(range(1, len(ordered))) if kind == "chain" else {len(steps)} if then else set()
        )
        signatures = [
            self._signature(step, task_id, request_id, takes_previous=i in follows)
            for i, (task_id, step) in enumerate(zip(ids, ordered, strict=True))
        ]
        try:
            if kind == "chain":
                chain(*signatures).apply_async()
            elif then is not None:
                chord(group(signatures[:-1]), signatures[-1]).apply_async(task_id=ids[-1])
            else:
                group(signatures).apply_async()
        except BROKER_ERRORS as exc:
            log.warning("workflow %s: broker unreachable: %r", workflow_id, exc)
            with contextlib.suppress(redis.RedisError):
                workflows.abort(self.client, workflow_id, owner, recorded)
            raise BrokerUnavailable("the broker did not answer in time") from exc
        try:  # the messages kombu pushed, on REDIS_MIN_REPLICAS replicas too
            scripts.confirm(self.client)
        except redis.RedisError as exc:  # published and kept: a retry with the key finds it
            log.warning("workflow %s: %s", workflow_id, exc)
            raise StoreUnavailable(UNCONFIRMED) from exc
        record = {"kind": kind, "then": "then" if then else "", "created_at": isotime(created)}
        if callback_url is not None:
            record.update(webhooks.submit_fields(callback_url))
        pending = {"task": "", "state": "PENDING"}
        steps_found = [
            (task_id, ({**pending, "task": step.task_type.name}, None))
            for task_id, step in zip(ids, ordered, strict=True)
        ]
        return resource(workflow_id, record, steps_found), done.usage

    def _signature(
        self, step: Step, task_id: str, request_id: str, takes_previous: bool
    ) -> Signature:
        options: dict[str, Any] = {
            "task_id": task_id,
            "headers": {"errand_deadline": 0, "errand_request_id": request_id},
        }
        if step.options.get("countdown"):
            options["countdown"] = step.options["countdown"]
        priority = step.options.get("priority")
        if self.jobs.redis_broker:  # higher runs first, as on RabbitMQ (app.worker.messages)
            options["priority"] = messages.redis_priority(priority)
        elif priority is not None:
            options["priority"] = priority
        # A step whose type does not take the previous result is immutable: Celery
        # then does not put that result before its params.
        immutable = not (takes_previous and step.task_type.accepts_previous)
        return self.celery_app.signature(
            step.task_type.name, args=(step.params,), options=options, immutable=immutable
        )

    def status(self, principal: Principal, workflow_id: str) -> dict[str, Any]:
        """The workflow resource, or 404 for an unknown id or another key's workflow."""
        viewer = "" if principal.admin else principal.key_id
        try:
            found = workflows.read(self.client, workflow_id, viewer)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
        if found is None:
            raise TaskNotFound(f"no workflow {workflow_id}")
        record, steps = found
        task_ids = record["tasks"].split(",") if record.get("tasks") else []
        return resource(workflow_id, record, list(zip(task_ids, steps, strict=True)))

    def cancel(self, principal: Principal, workflow_id: str) -> dict[str, Any]:
        """Cancel every step that has not finished, as ``Jobs.cancel`` cancels a task.

        A cancelled step is kept in its record, stored REVOKED and stopped where
        it runs; a step not published yet never starts. 409 when every step is
        final already.
        """
        workflow = self.status(principal, workflow_id)
        if all(task["state"] in FINAL_STATES for task in workflow["tasks"]):
            raise StateConflict(f"workflow {workflow_id} is already {workflow['state']}")
        open_ids = [t["id"] for t in workflow["tasks"] if t["state"] not in FINAL_STATES]
        try:
            workflows.mark_cancelled(self.client, workflow_id)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"could not cancel: {exc}") from exc
        self.jobs.revoke(open_ids)
        return self.status(principal, workflow_id)
