"""Per-key rate limits, counted in Redis, with the IETF draft's RateLimit headers.

Submits (a workflow once) spend ``RATE_LIMIT_SUBMIT``; every other request
that needs a key spends ``RATE_LIMIT_READ``. The submit, status and workflow
routes count inside the one script they run (``submit.lua``, ``status.lua``,
``create_workflow.lua``); every other route counts here, before its view
(``hit.lua``). Windows live in Redis, so a limit holds across gunicorn workers
and machines. Every limited answer carries
``RateLimit-Policy`` and ``RateLimit`` as in "RateLimit header fields for HTTP";
a 429 also ``Retry-After``. The cap on tasks in flight is in ``app.jobs``.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Response, current_app, g, request

from app import store
from app.errors import RateLimited
from app.jobs.service import Principal
from app.store import keys
from app.store.quotas import Quota, Usage, hit
from app.web.auth import PUBLIC

log = logging.getLogger(__name__)

COUNTED_IN_SCRIPT = {"tasks.submit", "tasks.status", "workflows.create"}
SETTINGS = {"submit": "RATE_LIMIT_SUBMIT", "read": "RATE_LIMIT_READ"}
# Quotas made, by window name, owner and setting: the same for every request of an owner.
QUOTA_CACHE_SIZE = 4096
_quotas: dict[tuple[str, str, Any], Quota] = {}


def quota(name: str, remote_addr: str | None = None) -> Quota | None:
    """The caller's window for ``name`` (submit or read); None when that limit is off.

    A window is per key; with ``AUTH_DISABLED``, per client address (``remote_addr``,
    by default the current request's).
    """
    principal = g.get("principal")
    if principal is None:
        return None
    if not principal.key_id and remote_addr is None:
        remote_addr = request.remote_addr
    return window(name, current_app.config[SETTINGS[name]], principal, remote_addr)


def window(
    name: str, setting: tuple[int, int] | None, principal: Principal, remote_addr: str | None
) -> Quota | None:
    """``quota`` with the setting and the caller given: no Flask context needed."""
    if setting is None:
        return None
    owner = principal.key_id or f"ip:{remote_addr}"
    found = _quotas.get((name, owner, setting))
    if found is None:
        if len(_quotas) >= QUOTA_CACHE_SIZE:  # owners may be client addresses: bounded
            _quotas.clear()
        found = Quota(name, f"{keys.LIMITS_PREFIX}:{name}:{owner}", setting[0], setting[1])
        _quotas[(name, owner, setting)] = found
    return found


def spent(limit: Quota, usage: Usage | None) -> None:
    """Keep what a request left of its window for the headers; 429 if it was spent."""
    if usage is None:
        return
    g.rate = (limit, usage)
    if not usage.allowed:
        raise RateLimited(limit.name, limit.amount, limit.window, usage.reset)


def count_request() -> None:
    """Before a request that needs a key: count it in the read window, or answer 429."""
    if request.endpoint in PUBLIC or request.endpoint in COUNTED_IN_SCRIPT:
        return
    limit = quota("read")
    if limit is None:
        return
    try:
        usage = hit(store.client(), limit)
    except redis.RedisError as exc:  # fail open: the route answers 503 if it needs Redis
        log.warning("rate limit not counted, Redis did not answer: %s", exc)
        return
    spent(limit, usage)


def rate_limit_headers(limit: Quota, usage: Usage) -> list[tuple[str, str]]:
    """RateLimit-Policy and RateLimit of what a request left of its window."""
    remaining = max(0, limit.amount - usage.used)
    return [
        ("RateLimit-Policy", f'"{limit.name}";q={limit.amount};w={limit.window}'),
        ("RateLimit", f'"{limit.name}";r={remaining};t={usage.reset}'),
    ]


def add_rate_limit_headers(response: Response) -> None:
    """RateLimit-Policy and RateLimit on every answer that spent a window."""
    rate = g.get("rate")
    if rate is None or "RateLimit-Policy" in response.headers:
        return  # unlimited, or a 429 that set its own
    response.headers.extend(rate_limit_headers(*rate))
