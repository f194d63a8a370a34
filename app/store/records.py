"""Task records: what Errand remembers about every id it issued.

A record is the hash ``errand:task:<id>`` (task type, times, retry count,
owner, params, links to the task it retries or that retried it). Records sit
beside Celery's results in the same Redis, so a status read fetches both in
one round trip. A record has no expiry until its task is final; then it
expires with the result, ``TASK_RETENTION`` later (``store_result.lua``).
Key names are in ``app.store.keys``; the scripts are in ``lua/``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from app.clock import isotime
from app.store import keys, scripts, webhooks
from app.store.quotas import Quota, Usage

# What a status read fetches of a record: everything but the (possibly large) params.
# ``status.lua`` needs ``task`` first and ``owner`` second.
FIELDS = (
    "task",
    "owner",
    "created_at",
    "started_at",
    "finished_at",
    "revoked_at",
    "retries",
    "retry_of",
    "retried_by",
    "progress",
    "eta",
    "state",
    *webhooks.FIELDS,
    "schedule",  # a schedule's run: links.schedule
    "workflow",  # a workflow's step: links.workflow
)

Found = tuple[dict[str, str], dict[str, Any] | None]

STATUS = scripts.Script("status", lists={"FIELDS": FIELDS})


def reserve(client: redis.Redis, owner: str, task_id: str, deadline_us: int, cap: int) -> bool:
    """Take a place among the owner's tasks in flight; False when all ``cap`` are taken."""
    return bool(
        scripts.RESERVE(
            client, [keys.in_flight(owner)], cap, task_id, deadline_us, keys.RECORD_PREFIX
        )
    )


def unreserve(client: redis.Redis, owner: str, task_id: str) -> None:
    """Give a place back after a submit that failed."""
    client.zrem(keys.in_flight(owner), task_id)


def schedule_fields(created: float, options: dict[str, Any]) -> dict[str, str]:
    """The record fields of a submit's options: the options themselves, and a countdown's ETA."""
    fields = {"options": orjson.dumps(options).decode()}
    if options.get("countdown"):
        fields["eta"] = isotime(created + options["countdown"])
    return fields


def create(
    client: redis.Redis,
    task_id: str,
    task_name: str,
    created: float,
    deadline_us: int,
    params: dict[str, Any],
    owner: str = "",
    retry_of: str | None = None,
    options: dict[str, Any] | None = None,
    fields: Mapping[str, str] | None = None,
) -> bool:
    """Write a new record and index it; False when Redis got it after the deadline.

    The params are kept for a resubmit; a resubmit also links the record it
    retries to the new one. An owner's tasks have indexes of their own (all,
    and per type), for their listings.
    """
    created_us = int(created * 1_000_000)
    names = [keys.record(task_id), keys.record(retry_of) if retry_of else ""]
    names += [keys.in_flight(owner), keys.INDEX, keys.type_index(task_name)]
    if owner:
        names += [keys.owner_index(owner), keys.owner_index(owner, task_name)]
    args = [deadline_us, task_name, isotime(created), created_us, task_id, keys.BY_STATE_PREFIX]
    args += ["params", json.dumps(params, separators=(",", ":")), "owner", owner]
    for field, value in schedule_fields(created, options or {}).items():
        args += [field, value]
    if retry_of:
        args += ["retry_of", retry_of]
    for field, value in (fields or {}).items():
        args += [field, value]
    return bool(scripts.CREATE(client, names, *args))


@dataclass(frozen=True)
class Submitted:
    """What ``submit`` did: ``verdict`` is one of ``submit.lua``'s answers."""

    verdict: str  # ok, existing, retried, conflict, rate, inflight, late
    usage: Usage | None = None
    existing_id: str = ""


def submit(
    client: redis.Redis,
    *,
    task_id: str,
    task_name: str,
    shown: Mapping[str, str],
    created: float,
    deadline_us: int,
    params_json: str,
    owner: str,
    queue: str,
    queue_list: str,
    message: bytes,
    quota: Quota | None = None,
    in_flight_cap: int = 0,
    idempotency: tuple[str, str] | None = None,
    idempotency_ttl: int = 0,
    retry_of: str | None = None,
) -> Submitted:
    """Count, claim, record and enqueue a task in one script (``submit.lua``); all or nothing.

    The record is ``shown`` (the fields its resource shows: task, created_at, retries,
    options, eta, retry_of, a schedule's or a callback's) with its params and owner.
    """
    created_us = int(created * 1_000_000)
    names = [
        quota.key if quota else "",
        keys.in_flight(owner) if owner else "",
        idempotency[0] if idempotency else "",
        keys.record(task_id),
        keys.record(retry_of) if retry_of else "",
        queue_list,
        keys.ready(queue),
        keys.INDEX,
        keys.type_index(task_name),
    ]
    if owner:
        names += [keys.owner_index(owner), keys.owner_index(owner, task_name)]
    args: list[Any] = [
        deadline_us,
        quota.amount if quota else 0,
        quota.window if quota else 0,
        in_flight_cap,
        idempotency[1] if idempotency else "",
        idempotency_ttl,
        keys.RECORD_PREFIX,
        task_id,
        created_us,
        message,
        keys.BY_STATE_PREFIX,
    ]
    args += ["created_us", created_us, "params", params_json, "owner", owner]
    for field, value in shown.items():
        args += [field, value]
    answer = scripts.SUBMIT(client, names, *args)
    verdict = answer[0].decode()
    usage = None
    if quota is not None and verdict in {"ok", "existing", "retried", "rate"}:
        usage = Usage(verdict != "rate", int(answer[1]), max(int(answer[2]), 0))
    existing = answer[3].decode() if verdict in {"existing", "retried"} else ""
    return Submitted(verdict, usage, existing)


def status(
    client: redis.Redis, task_id: str, viewer: str, quota: Quota | None = None
) -> tuple[Found | None, Usage | None]:
    """A record and Celery's result in one script (``status.lua``), for ``viewer``.

    ``viewer`` is the caller's key id, or '' for one who may see every task;
    another owner's task is None, like an unknown one. The first answer is
    None too when the quota was spent (the usage says so).
    """
    names = [quota.key if quota else "", keys.record(task_id), keys.result(task_id)]
    amount, window = (quota.amount, quota.window) if quota else (0, 0)
    answer = STATUS(client, names, amount, window, viewer)
    verdict = answer[0]
    usage = None
    if quota is not None:
        usage = Usage(verdict != b"rate", int(answer[1]), max(int(answer[2]), 0))
    if verdict != b"ok":
        return None, usage
    raw_meta = answer[3]
    record = {k: v.decode() for k, v in zip(FIELDS, answer[4:], strict=True) if v is not None}
    return (record, json.loads(raw_meta) if raw_meta else None), usage


def claim_key(
    client: redis.Redis, key: str, fingerprint: str, task_id: str, deadline_us: int, ttl: int
) -> tuple[str, str, str]:
    """Claim an idempotency key: ('new', '', '') or ('existing'|'inflight', fingerprint, id)."""
    answer = scripts.CLAIM(
        client, [key], fingerprint, task_id, deadline_us, ttl, keys.RECORD_PREFIX
    )
    words = [w.decode() if isinstance(w, bytes) else str(w) for w in answer]
    verdict, fingerprint_held, held_by = [*words, "", ""][:3]
    return verdict, fingerprint_held, held_by


def release_key(client: redis.Redis, key: str, task_id: str) -> None:
    """Give up a claim after a failed submit, unless another submit holds the key now."""
    scripts.RELEASE(client, [key], task_id)


def begin(
    client: redis.Redis, task_id: str, deadline_us: int, started: str, result_ttl: int
) -> str:
    """Store a task STARTED unless it may not run; ``begin.lua`` lists the answers.

    ``started`` is the STARTED result as Celery's backend encodes it.
    """
    names = [keys.record(task_id), keys.result(task_id), keys.STATE_COUNTS]
    args = [deadline_us, isotime(), started, result_ttl, task_id, keys.BY_STATE_PREFIX]
    answer = scripts.BEGIN(client, names, *args)
    return answer.decode() if isinstance(answer, bytes) else str(answer)


def revoke(client: redis.Redis, task_id: str) -> bool:
    """Keep a cancel in the record, so that it holds across worker restarts."""
    return bool(scripts.REVOKE(client, [keys.record(task_id)], isotime()))


def read(client: redis.Redis, task_ids: Sequence[str]) -> list[Found | None]:
    """Records and Celery results for many ids, in one round trip (None: no record)."""
    pipe = client.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.hmget(keys.record(task_id), FIELDS)
        pipe.get(keys.result(task_id))
    replies = pipe.execute()
    found: list[Found | None] = []
    for values, raw_meta in zip(replies[::2], replies[1::2], strict=True):
        if values[0] is None:  # every record has a task type
            found.append(None)
            continue
        record = {k: v.decode() for k, v in zip(FIELDS, values, strict=True) if v is not None}
        found.append((record, json.loads(raw_meta) if raw_meta else None))
    return found


def params_of(client: redis.Redis, task_id: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The params and options a task was submitted with (params None if the record is gone)."""
    params, options = client.hmget(keys.record(task_id), ["params", "options"])
    return (json.loads(params) if params else None), (json.loads(options) if options else {})


def scan(
    client: redis.Redis, index: str, after: tuple[int, str] | None, count: int
) -> list[tuple[int, str]]:
    """Up to ``count`` (score, id) pairs of an index, newest first, after (score, id)."""
    if after is None:
        rows = client.zrevrangebyscore(index, "+inf", "-inf", start=0, num=count, withscores=True)
        return [(int(score), member.decode()) for member, score in rows]
    score, task_id = after
    pipe = client.pipeline(transaction=False)
    # Ties on the score are ordered by id, descending; keep those below the cursor.
    pipe.zrevrangebyscore(index, score, score, withscores=True)
    pipe.zrevrangebyscore(index, f"({score}", "-inf", start=0, num=count, withscores=True)
    ties, older = pipe.execute()
    rows = [(m, s) for m, s in ties if m.decode() < task_id] + older
    return [(int(s), m.decode()) for m, s in rows[:count]]


def indexes(client: redis.Redis) -> list[str]:
    """Every index: all tasks, per type, per owner and per state."""
    found = [keys.INDEX, *(k.decode() for k in client.scan_iter(f"{keys.INDEX}:*"))]
    return found + [k.decode() for k in client.scan_iter(f"{keys.BY_STATE_PREFIX}*")]


def summaries(client: redis.Redis, task_ids: Sequence[str]) -> list[dict[str, str] | None]:
    """Records (no params, no Celery result) for many ids, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.hmget(keys.record(task_id), FIELDS)
    found: list[dict[str, str] | None] = []
    for values in pipe.execute():
        if values[0] is None:
            found.append(None)
        else:
            found.append(
                {k: v.decode() for k, v in zip(FIELDS, values, strict=True) if v is not None}
            )
    return found


def prune(client: redis.Redis, cutoff: float, index_names: Iterable[str], batch: int = 500) -> int:
    """Drop index entries older than ``cutoff`` whose records have expired."""
    removed = 0
    for index in index_names:
        start = 0
        while True:
            ids = client.zrangebyscore(
                index, "-inf", int(cutoff * 1_000_000), start=start, num=batch
            )
            if not ids:
                break
            pipe = client.pipeline(transaction=False)
            for member in ids:
                pipe.exists(keys.record(member.decode()))
            gone = [m for m, alive in zip(ids, pipe.execute(), strict=True) if not alive]
            if gone:
                client.zrem(index, *gone)
                removed += len(gone)
            start += len(ids) - len(gone)
    return removed
