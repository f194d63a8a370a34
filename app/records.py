"""The task record store: what Errand remembers about every id it issued.

A record is a Redis hash ``errand:task:<id>`` with the task type, the times and
the retry count (and, later, an owner). Records sit beside Celery's own result
keys (``celery-task-meta-<id>``) in the same Redis, so a status read fetches
both in one round trip. Two sorted sets index the records by creation time for
listing: ``errand:index`` for all tasks and ``errand:index:<type>`` per type.

A record has no expiry until its task is final; then it expires with the
result, ``TASK_RETENTION`` later (see ``app.results``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

RECORD_PREFIX = "errand:task:"
INDEX = "errand:index"
RESULT_PREFIX = "celery-task-meta-"
WORKERS = "errand:workers"
STATE_COUNTS = "errand:metrics:states"  # "<task>|<state>" -> how many times reached
RUNTIMES = "errand:metrics:runtime"  # "<task>|<bucket>", "<task>|sum", "<task>|count"

FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
STATES = frozenset({"PENDING", "STARTED", "PROGRESS", "RETRY"}) | FINAL_STATES

# Writes the record only while Redis's own clock is before the submit's
# deadline: a write that a hung Redis applies late, after the API has already
# answered 503, changes nothing. The worker uses the same clock to tell a
# record still on its way from one that will never come (``BEGIN``).
# KEYS: the record, the record retried ('' if none), the owner's in-flight set,
# then the indexes. The in-flight entry, reserved before the publish, is kept
# for good (score +inf) until the task is final (see app.results).
_CREATE = """
local t = redis.call('TIME')
if t[1] * 1000000 + t[2] > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'task', ARGV[2], 'created_at', ARGV[3],
           'created_us', ARGV[4], 'retries', 0, unpack(ARGV, 6))
for i = 4, #KEYS do redis.call('ZADD', KEYS[i], ARGV[4], ARGV[5]) end
if KEYS[2] ~= '' then redis.call('HSET', KEYS[2], 'retried_by', ARGV[5]) end
redis.call('ZADD', KEYS[3], 'XX', 'inf', ARGV[5])
return 1
"""

# Reserve a place among an owner's tasks in flight, before the publish. Places
# reserved by submits that never completed (no record once their deadline has
# passed) are given back first.
_RESERVE = """
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  if redis.call('EXISTS', ARGV[4] .. id) == 0 then redis.call('ZREM', KEYS[1], id) end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
return 1
"""

# Run by a worker as a task starts: 'run', 'revoked', 'wait' (the API's record
# write may still be in flight) or 'orphan' (no record, and none can come).
_BEGIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  if t[1] * 1000000 + t[2] > tonumber(ARGV[1]) then return 'orphan' end
  return 'wait'
end
if redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then return 'revoked' end
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
return 'run'
"""

# Idempotency keys: "fingerprint|task id|deadline". An entry whose task has no
# record once the deadline has passed belongs to a submit that failed: replace it.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local fp, id, deadline = string.match(current, '^([^|]*)|([^|]*)|([^|]*)$')
  if redis.call('EXISTS', ARGV[5] .. id) == 1 then return {'existing', fp, id} end
  local t = redis.call('TIME')
  if t[1] * 1000000 + t[2] <= tonumber(deadline) then return {'inflight', fp, id} end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3], 'EX', ARGV[4])
return {'new'}
"""

_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current and string.find(current, '|' .. ARGV[1] .. '|', 1, true) then
  redis.call('DEL', KEYS[1])
end
return 0
"""

_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1])
return 1
"""


def run_script(client: redis.Redis, script: str, keys: Sequence[str], *args: Any) -> Any:
    """Run a Lua script by its SHA-1 (EVALSHA), sending its text only when Redis lacks it."""
    sha = hashlib.sha1(script.encode()).hexdigest()
    try:
        return client.evalsha(sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        return client.eval(script, len(keys), *keys, *args)  # also caches it in Redis


def record_key(task_id: str) -> str:
    """The Redis key of a task's record."""
    return RECORD_PREFIX + task_id


def type_index(task_name: str) -> str:
    """The Redis key of the per-type index."""
    return f"{INDEX}:{task_name}"


def isotime(moment: datetime | float | None = None) -> str:
    """UTC time as ISO 8601 with milliseconds and ``Z``."""
    if moment is None:
        moment = datetime.now(UTC)
    elif isinstance(moment, float | int):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def owner_index(owner: str, task_name: str | None = None) -> str:
    """The index of one owner's tasks (of one type, if given)."""
    return f"{INDEX}:owner:{owner}" + (f":{task_name}" if task_name else "")


def in_flight_key(owner: str) -> str:
    """The sorted set of an owner's tasks that are not final yet."""
    return f"errand:inflight:{owner}"


def reserve(client: redis.Redis, owner: str, task_id: str, deadline_us: int, cap: int) -> bool:
    """Take a place among the owner's tasks in flight; False when all ``cap`` are taken."""
    key = in_flight_key(owner)
    return bool(run_script(client, _RESERVE, [key], cap, task_id, deadline_us, RECORD_PREFIX))


def unreserve(client: redis.Redis, owner: str, task_id: str) -> None:
    """Give a place back after a submit that failed."""
    client.zrem(in_flight_key(owner), task_id)


def create(
    client: redis.Redis,
    task_id: str,
    task_name: str,
    created: float,
    deadline_us: int,
    params: dict[str, Any],
    owner: str = "",
    retry_of: str | None = None,
) -> bool:
    """Write a new record and index it; False when Redis got it after the deadline.

    The params are kept for ``POST /api/v1/tasks/<id>/retry``; a retry also
    links the record it retries to the new one. An owner's tasks have an
    index of their own (all, and per type), for their listings.
    """
    created_us = int(created * 1_000_000)
    keys = [record_key(task_id), record_key(retry_of) if retry_of else "", in_flight_key(owner)]
    keys += [INDEX, type_index(task_name)]
    if owner:
        keys += [owner_index(owner), owner_index(owner, task_name)]
    args = [deadline_us, task_name, isotime(created), created_us, task_id]
    args += ["params", json.dumps(params, separators=(",", ":")), "owner", owner]
    if retry_of:
        args += ["retry_of", retry_of]
    return bool(run_script(client, _CREATE, keys, *args))


def claim_key(
    client: redis.Redis, key: str, fingerprint: str, task_id: str, deadline_us: int, ttl: int
) -> tuple[str, str, str]:
    """Claim an idempotency key: ('new', '', '') or ('existing'|'inflight', fingerprint, id)."""
    answer = run_script(
        client, _CLAIM, [key], fingerprint, task_id, deadline_us, ttl, RECORD_PREFIX
    )
    words = [w.decode() if isinstance(w, bytes) else str(w) for w in answer]
    verdict, fingerprint_held, held_by = [*words, "", ""][:3]
    return verdict, fingerprint_held, held_by


def release_key(client: redis.Redis, key: str, task_id: str) -> None:
    """Give up a claim after a failed submit, unless another submit holds the key now."""
    run_script(client, _RELEASE, [key], task_id)


def begin(client: redis.Redis, task_id: str, deadline_us: int) -> str:
    """Mark a task started unless it was cancelled; see ``_BEGIN`` for the answers."""
    answer = run_script(client, _BEGIN, [record_key(task_id)], deadline_us, isotime())
    return answer.decode() if isinstance(answer, bytes) else str(answer)


def revoke(client: redis.Redis, task_id: str) -> bool:
    """Keep a cancel in the record, so that it holds across worker restarts."""
    return bool(run_script(client, _REVOKE, [record_key(task_id)], isotime()))


# What a status read fetches of a record: everything but the (possibly large) params.
FIELDS = (
    "task",
    "created_at",
    "started_at",
    "finished_at",
    "revoked_at",
    "retries",
    "retry_of",
    "retried_by",
    "owner",
)


def read(
    client: redis.Redis, task_ids: Sequence[str]
) -> list[tuple[dict[str, str], dict[str, Any] | None] | None]:
    """Fetch records and Celery results for many ids in one round trip."""
    pipe = client.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.hmget(record_key(task_id), FIELDS)
        pipe.get(RESULT_PREFIX + task_id)
    replies = pipe.execute()
    found: list[tuple[dict[str, str], dict[str, Any] | None] | None] = []
    for values, raw_meta in zip(replies[::2], replies[1::2], strict=True):
        if values[0] is None:  # every record has a task type
            found.append(None)
            continue
        record = {k: v.decode() for k, v in zip(FIELDS, values, strict=True) if v is not None}
        found.append((record, json.loads(raw_meta) if raw_meta else None))
    return found


def params_of(client: redis.Redis, task_id: str) -> dict[str, Any] | None:
    """The params a task was submitted with (None if the record is gone)."""
    raw = client.hget(record_key(task_id), "params")
    return json.loads(raw) if raw else None


def state_of(record: dict[str, str], meta: dict[str, Any] | None) -> str:
    """The task's state: Celery's, except that a kept cancel outranks a non-final one."""
    state = meta["status"] if meta else "PENDING"
    if state not in FINAL_STATES and "revoked_at" in record:
        return "REVOKED"
    return state


def _error(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict) or "exc_type" not in value:
        return None
    message = value.get("exc_message", "")
    if isinstance(message, list | tuple):
        message = message[0] if len(message) == 1 else ", ".join(map(str, message))
    return {"type": str(value["exc_type"]), "message": str(message)}


def _progress(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    current, total = value.get("current", 0), value.get("total", 0)
    percent = round(100.0 * current / total, 1) if total else None
    return {
        "current": current,
        "total": total,
        "percent": percent,
        "message": value.get("message", ""),
    }


def resource(task_id: str, record: dict[str, str], meta: dict[str, Any] | None) -> dict[str, Any]:
    """The task resource of the HTTP contract."""
    state = state_of(record, meta)
    value = meta.get("result") if meta else None
    finished = record.get("finished_at")
    if state in FINAL_STATES and not finished:
        finished = record.get("revoked_at") if state == "REVOKED" else None
        if not finished and meta and meta.get("date_done"):
            finished = isotime(datetime.fromisoformat(meta["date_done"]))
    return {
        "id": task_id,
        "task": record.get("task"),
        "state": state,
        "progress": _progress(value) if state == "PROGRESS" else None,
        "result": value if state == "SUCCESS" else None,
        "error": _error(value) if state in {"FAILURE", "RETRY"} else None,
        "retries": int(record.get("retries", 0)),
        "created_at": record.get("created_at"),
        "started_at": record.get("started_at"),
        "finished_at": finished if state in FINAL_STATES else None,
        "links": _links(task_id, record),
    }


def _links(task_id: str, record: dict[str, str]) -> dict[str, str]:
    links = {"self": f"/api/v1/tasks/{task_id}"}
    for name in ("retry_of", "retried_by"):
        if record.get(name):
            links[name] = f"/api/v1/tasks/{record[name]}"
    return links


def encode_cursor(score: int, task_id: str) -> str:
    """An opaque cursor that resumes a listing after (score, id)."""
    return base64.urlsafe_b64encode(f"{score}:{task_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Undo ``encode_cursor``; ValueError for anything it did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, task_id = raw.split(":", 1)
        if not task_id or len(task_id) > 64:
            raise ValueError(cursor)
        return int(score), task_id
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(cursor) from exc


def scan(
    client: redis.Redis, index: str, after: tuple[int, str] | None, count: int
) -> list[tuple[int, str]]:
    """Up to ``count`` (score, id) pairs of an index, newest first, after a cursor."""
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
                pipe.exists(RECORD_PREFIX + member.decode())
            gone = [m for m, alive in zip(ids, pipe.execute(), strict=True) if not alive]
            if gone:
                client.zrem(index, *gone)
                removed += len(gone)
            start += len(ids) - len(gone)
    return removed
