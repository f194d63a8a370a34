"""Per-key rate windows in Redis: fixed windows that start with a key's first request.

The submit and status scripts count their own window in the same round trip
(``submit.lua``, ``status.lua``); every other route counts with ``hit.lua``.
"""

from __future__ import annotations

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
