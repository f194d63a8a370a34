"""Workflow records: a chain or a group of tasks, written with all their steps at once.

A workflow is the hash ``errand:workflow:<id>`` (kind, owner, created_at, the
steps' task ids in order, how many are not final yet, its webhook's ``callback_*``).
Each step is an ordinary task record with a ``workflow`` field. ``create_workflow.lua``
writes the whole of it before any message is published; ``abort_workflow.lua`` removes it again
when the publish failed. The workflow's record has no expiry until its last
step is final; then it lives as long as task records do (``store_result.lua``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from app.clock import isotime
from app.store import keys, records, scripts
from app.store.quotas import Quota, Usage


@dataclass(frozen=True)
class Step:
    """One step as it is recorded: its task id, type, params and options (JSON), eta."""

    task_id: str
    task_name: str
    params_json: str
    options_json: str
    eta: str = ""


@dataclass(frozen=True)
class Created:
    """What ``create`` did: ``verdict`` is one of ``create_workflow.lua``'s answers."""

    verdict: str  # ok, existing, conflict, rate, inflight, late, exists
    usage: Usage | None = None
    existing_id: str = ""


def _step_keys(owner: str, steps: Sequence[Step]) -> list[str]:
    found: list[str] = []
    for step in steps:
        found += [keys.record(step.task_id), keys.type_index(step.task_name)]
        found.append(keys.owner_index(owner, step.task_name) if owner else "")
    return found


def create(
    client: redis.Redis,
    *,
    workflow_id: str,
    kind: str,
    has_then: bool,
    owner: str,
    created: float,
    deadline_us: int,
    steps: Sequence[Step],
    quota: Quota | None,
    in_flight_cap: int,
    idempotency: tuple[str, str] | None = None,
    idempotency_ttl: int = 0,
    callback_url: str | None = None,
) -> Created:
    """Count, claim the Idempotency-Key, check the in-flight cap, and write the workflow and
    its steps; all or nothing. ``idempotency`` is (key, the request's fingerprint);
    a ``callback_url`` is kept in the workflow's record (``app.store.webhooks``)."""
    names = [
        quota.key if quota else "",
        keys.in_flight(owner) if owner else "",
        keys.workflow(workflow_id),
        keys.INDEX,
        keys.owner_index(owner) if owner else "",
        idempotency[0] if idempotency else "",
        *_step_keys(owner, steps),
    ]
    args: list[Any] = [
        deadline_us,
        quota.amount if quota else 0,
        quota.window if quota else 0,
        in_flight_cap,
        workflow_id,
        int(created * 1_000_000),
        isotime(created),
        keys.BY_STATE_PREFIX,
        owner,
        kind,
        "then" if has_then else "",
        idempotency[1] if idempotency else "",
        idempotency_ttl,
        keys.WORKFLOW_PREFIX,
        callback_url or "",
    ]
    for step in steps:
        args += [step.task_id, step.task_name, step.params_json, step.options_json, step.eta]
    answer = scripts.CREATE_WORKFLOW(client, names, *args)
    verdict = answer[0].decode()
    usage = None
    if quota is not None and verdict in {"ok", "existing", "rate"}:
        usage = Usage(verdict != "rate", int(answer[1]), max(int(answer[2]), 0))
    existing = answer[3].decode() if verdict == "existing" else ""
    return Created(verdict, usage, existing)


def abort(client: redis.Redis, workflow_id: str, owner: str, steps: Sequence[Step]) -> int:
    """Remove a workflow whose publish failed, with its steps; how many step records went."""
    names = [
        keys.workflow(workflow_id),
        keys.in_flight(owner) if owner else "",
        keys.INDEX,
        keys.owner_index(owner) if owner else "",
        *_step_keys(owner, steps),
    ]
    ids = [step.task_id for step in steps]
    return int(scripts.ABORT_WORKFLOW(client, names, keys.BY_STATE_PREFIX, *ids))


def read(
    client: redis.Redis, workflow_id: str, viewer: str
) -> tuple[dict[str, str], list[records.Found | None]] | None:
    """The workflow's record and its steps' (record, result), for ``viewer``.

    ``viewer`` is the caller's key id, or '' for one who may see every
    workflow; another owner's workflow is None, like an unknown one.
    """
    raw = client.hgetall(keys.workflow(workflow_id))
    record = {k.decode(): v.decode() for k, v in raw.items()}
    if not record or (viewer and record.get("owner") != viewer):
        return None
    task_ids = record["tasks"].split(",") if record.get("tasks") else []
    return record, records.read(client, task_ids)


def mark_cancelled(client: redis.Redis, workflow_id: str) -> None:
    """Keep a cancel in the workflow's record (its state is REVOKED from then on)."""
    client.hsetnx(keys.workflow(workflow_id), "cancelled_at", isotime())
