"""Schedules in Redis: each one's record and the celery-redbeat entry beat runs it from.

A schedule is the hash ``errand:schedule:<id>`` (task type, params, options,
crontab and time zone or interval, paused, owner, source, times of its last
run and the task it made, its last error). Beside it, the redbeat entry
``errand:redbeat:schedule:<id>`` holds what beat needs to know when it is due
(``definition``, and ``meta``: when it last ran), and redbeat's due set scores
it by its next run; a paused schedule is out of that set. ``save_schedule.lua``
writes all of them together. Key names are in ``app.store.keys``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import redis

from app.store import keys, scripts

WRITTEN, AT_CAP, MISSING = 1, 0, -1


def save(
    client: redis.Redis,
    mode: str,
    schedule_id: str,
    owner: str,
    created_us: int,
    cap: int,
    definition: str,
    meta: str,
    next_run: int | None,
    fields: Mapping[str, str | bool],
) -> int:
    """Write a schedule (``save_schedule.lua``): ``WRITTEN``, ``AT_CAP`` or ``MISSING``."""
    return int(
        scripts.SAVE_SCHEDULE(
            client,
            [
                keys.schedule(schedule_id),
                keys.SCHEDULES,
                keys.owner_schedules(owner) if owner else "",
                keys.redbeat_entry(schedule_id),
                keys.REDBEAT_DUE,
            ],
            mode,
            created_us,
            cap,
            definition,
            meta,
            "" if next_run is None else next_run,
            json.dumps(dict(fields), separators=(",", ":")),
            schedule_id,
        )
    )


def _text(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def load(client: redis.Redis, schedule_id: str) -> tuple[dict[str, str], str | None] | None:
    """A schedule's record and its redbeat meta (when beat last ran it), or None."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.schedule(schedule_id)).hget(keys.redbeat_entry(schedule_id), "meta")
    record, meta = pipe.execute()
    if not record:
        return None
    return _text(record), meta.decode() if meta else None


def load_many(
    client: redis.Redis, ids: Sequence[str]
) -> list[tuple[dict[str, str], str | None] | None]:
    """``load`` for several ids in one round trip (None where a schedule is gone)."""
    pipe = client.pipeline(transaction=False)
    for schedule_id in ids:
        pipe.hgetall(keys.schedule(schedule_id)).hget(keys.redbeat_entry(schedule_id), "meta")
    raw = pipe.execute()
    found: list[tuple[dict[str, str], str | None] | None] = []
    for record, meta in zip(raw[::2], raw[1::2], strict=True):
        found.append((_text(record), meta.decode() if meta else None) if record else None)
    return found


def page(
    client: redis.Redis, owner: str | None, after: tuple[int, str] | None, count: int
) -> list[tuple[int, str]]:
    """(created µs, id) of up to ``count`` schedules, oldest first, after the cursor."""
    index = keys.SCHEDULES if owner is None else keys.owner_schedules(owner)
    low = "-inf" if after is None else after[0]
    rows = client.zrangebyscore(index, low, "+inf", start=0, num=count + 50, withscores=True)
    found = []
    for member, score in rows:
        row = (int(score), member.decode())
        if after is not None and row <= after:
            continue  # the cursor's own score: skip what the page before showed
        found.append(row)
        if len(found) == count:
            break
    return found


def count(client: redis.Redis, owner: str) -> int:
    """How many schedules a key holds."""
    return int(client.zcard(keys.owner_schedules(owner)))


def delete(client: redis.Redis, schedule_id: str, owner: str) -> None:
    """Remove a schedule, its indexes and its redbeat entry."""
    pipe = client.pipeline()
    pipe.delete(keys.schedule(schedule_id), keys.redbeat_entry(schedule_id))
    pipe.zrem(keys.SCHEDULES, schedule_id).zrem(keys.REDBEAT_DUE, keys.redbeat_entry(schedule_id))
    if owner:
        pipe.zrem(keys.owner_schedules(owner), schedule_id)
    pipe.execute()


def unschedule(client: redis.Redis, schedule_id: str) -> None:
    """Take a schedule out of redbeat's due set (paused: beat no longer looks at it)."""
    client.zrem(keys.REDBEAT_DUE, keys.redbeat_entry(schedule_id))


def record_run(client: redis.Redis, schedule_id: str, fields: Mapping[str, str | None]) -> None:
    """Keep what the last run did (None removes a field), unless the schedule is gone."""
    key = keys.schedule(schedule_id)
    for _ in range(3):  # a PATCH or DELETE in between: look again
        with client.pipeline() as pipe:
            try:
                pipe.watch(key)
                if not pipe.exists(key):
                    return
                pipe.multi()
                for name, value in fields.items():
                    if value is None:
                        pipe.hdel(key, name)
                    else:
                        pipe.hset(key, name, value)
                pipe.execute()
                return
            except redis.WatchError:
                continue


def ids_from(client: redis.Redis, source: str) -> list[str]:
    """The ids of every schedule with this ``source`` (a schedules file's: ``file``)."""
    ids = [m.decode() for m in client.zrange(keys.SCHEDULES, 0, -1)]
    pipe = client.pipeline(transaction=False)
    for schedule_id in ids:
        pipe.hget(keys.schedule(schedule_id), "source")
    return [i for i, s in zip(ids, pipe.execute(), strict=True) if s and s.decode() == source]
