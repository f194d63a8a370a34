"""Per-key rate windows in Redis: fixed windows that start with a key's first request.

The submit and status scripts count their own window in the same round trip
(``submit.lua``, ``status.lua``); every other route counts with ``hit.lua``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from app.store import scripts


@dataclass(frozen=True)
class Quota:
    """A rate window to count a request in: its name, Redis key, size and length."""

    name: str  # "submit" or "read": the policy name in the RateLimit headers
    key: str
    amount: int
    window: int  # seconds


@dataclass(frozen=True)
class Usage:
    """What a request left of its window: counted or refused, how many used, reset in s."""

    allowed: bool
    used: int
    reset: int


def hit(client: redis.Redis, quota: Quota) -> Usage:
    """Count one request in the quota's window; ``allowed`` is False when it is spent."""
    allowed, used, reset = scripts.HIT(client, [quota.key], quota.amount, quota.window)
    return Usage(bool(allowed), int(used), max(int(reset), 0))


def open_wait(client: redis.Redis, key: str, cap: int, wait_id: str, lease: int) -> bool:
    """Take one of ``cap`` places for open waits under ``key``; False when all are taken."""
    return bool(scripts.OPEN_STREAM(client, [key], cap, wait_id, lease))


def renew_wait(client: redis.Redis, key: str, wait_id: str, lease: int) -> None:
    """Keep an open wait's place for another ``lease`` seconds."""
    pipe = client.pipeline(transaction=False)
    pipe.zadd(key, {wait_id: int(time.time()) + lease}, xx=True).expire(key, lease)
    pipe.execute()


def close_wait(client: redis.Redis, key: str, wait_id: str) -> None:
    """Give an open wait's place back."""
    client.zrem(key, wait_id)
