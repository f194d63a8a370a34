"""The one check every request passes through: who is calling, and may they?

Health checks (and ``/metrics`` when ``METRICS_PUBLIC``) are open, ``OPTIONS``
preflights pass, everything else needs a live API key (``app.store.apikeys``),
and the operator routes need an admin key. A route added later is covered
without doing anything. Which tasks a key may see is decided in ``app.jobs``
from the owner kept in each task record.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict

import redis
from flask import Flask, current_app, g, request

from app import store
from app.errors import Forbidden, RateLimited, Unauthenticated
from app.jobs.service import OPEN_ACCESS, Principal
from app.store import apikeys, keys
from app.store.quotas import Quota, hit
from app.web.live import stream_token_key

log = logging.getLogger(__name__)

# Open without a key: health checks, the contract and its docs, the page and its
# files (the page asks for a key and sends it with every call it makes).
PUBLIC = {
    "health.healthz",
    "health.readyz",
    "openapi.spec",
    "openapi.docs",
    "openapi.docs_asset",
    "page.index",
    "static",
}
ADMIN_BLUEPRINTS = {"operations"}
METRICS = "operations.metrics"
EVENTS = "tasks.events"  # may take a stream token in its URL instead of the key

# Key records (and "no such key"), by key id, for KEY_CACHE_SECONDS; at most
# CACHE_SIZE of them, the least recently used dropped first, so that made-up key
# ids cannot grow a process's memory.
CACHE_SIZE = 1024
_cache: OrderedDict[str, tuple[float, dict[str, str]]] = OrderedDict()


def _lookup(key_id: str) -> dict[str, str]:
    """A key's record, cached for ``KEY_CACHE_SECONDS`` so reads stay one round trip."""
    return _cached(key_id, store.client(), current_app.config["KEY_CACHE_SECONDS"])[1]


def _cached(key_id: str, client: redis.Redis, cache_seconds: float) -> tuple[float, dict[str, str]]:
    """A key's record and when it was read from Redis (``time.monotonic()``)."""
    now = time.monotonic()
    cached = _cache.get(key_id)
    if cached and now - cached[0] < cache_seconds:
        _cache.move_to_end(key_id)
        return cached
    cached = _cache[key_id] = (now, apikeys.lookup(client, key_id))
    _cache.move_to_end(key_id)
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return cached


# Keys that verified, by the key as presented, with their record's read time: a key
# presented again while its record is cached is not hashed again. Expired with the
# record (a revoke is seen as soon), CACHE_SIZE at most; a wrong key is never kept.
_verified: OrderedDict[str, tuple[float, Principal]] = OrderedDict()


def verify(key: str) -> Principal | None:
    """The principal a presented key stands for, or None for a wrong or revoked key."""
    return check(key, store.client(), current_app.config["KEY_CACHE_SECONDS"])


def check(key: str, client: redis.Redis, cache_seconds: float) -> Principal | None:
    """``verify`` with the store and the cache's lifetime given: no Flask context needed."""
    known = _verified.get(key)
    if known and time.monotonic() - known[0] < cache_seconds:
        return known[1]
    key_id = apikeys.key_id_of(key)
    if key_id is None:
        return None
    read_at, record = _cached(key_id, client, cache_seconds)
    stored = record.get("hash", "")
    if not stored or not hmac.compare_digest(apikeys.digest(key), stored):
        return None
    if record.get("revoked_at"):
        return None
    principal = Principal(key_id, record.get("name", ""), record.get("admin") == "1")
    _verified[key] = (read_at, principal)
    while len(_verified) > CACHE_SIZE:
        _verified.popitem(last=False)
    return principal


def bearer(header: str) -> str | None:
    """The key an ``Authorization`` header presents (``Bearer <key>``), or None."""
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


def authenticate() -> None:
    """Before every request: who is calling, and may they call this route?

    Failed attempts are counted per client address (``AUTH_FAILURE_LIMIT``):
    past the limit they answer 429 instead of 401, so keys cannot be guessed fast.
    """
    try:
        _authenticate()
    except Unauthenticated:
        _count_failure()
        raise


def _count_failure() -> None:
    limit = current_app.config["AUTH_FAILURE_LIMIT"]
    if limit is None:
        return
    window = Quota("auth", f"{keys.LIMITS_PREFIX}:auth:ip:{request.remote_addr}", *limit)
    try:
        usage = hit(store.client(), window)
    except redis.RedisError:
        return  # the 401 stands
    if not usage.allowed:
        raise RateLimited("failed-auth", window.amount, window.window, usage.reset)


def _authenticate() -> None:
    if request.endpoint in PUBLIC or request.method == "OPTIONS":
        return
    if request.endpoint == METRICS and current_app.config["METRICS_PUBLIC"]:
        return
    if current_app.config["AUTH_DISABLED"]:
        g.principal = OPEN_ACCESS
        return
    header = request.headers.get("Authorization", "")
    if not header and request.endpoint == EVENTS and "token" in request.args:
        g.principal = _from_stream_token(request.args["token"])
        return
    key = bearer(header)
    if key is None:
        raise Unauthenticated("send an API key: Authorization: Bearer <key>")
    principal = verify(key)  # a RedisError here is answered 503 by app.web.problems
    if principal is None:
        raise Unauthenticated("the API key is wrong or revoked", "invalid_token")
    g.principal = principal
    if request.blueprint in ADMIN_BLUEPRINTS and not principal.admin:
        raise Forbidden("this route needs an admin key")


def key_name(key_id: str) -> str | None:
    """A key's name, from the same short cache as the check (None for an unknown key)."""
    return _lookup(key_id).get("name")


def _from_stream_token(token: str) -> Principal:
    """The principal of a stream token (``app.web.live``) that is good for this task."""
    key_id = stream_token_key(token, (request.view_args or {}).get("task_id", ""))
    record = _lookup(key_id) if key_id else {}
    if not record.get("hash") or record.get("revoked_at"):
        raise Unauthenticated("the stream token is wrong, expired or not for this task")
    return Principal(key_id or "", record.get("name", ""), record.get("admin") == "1")


def current() -> Principal:
    """The principal of the current request."""
    principal: Principal = g.principal
    return principal


def init_app(app: Flask) -> None:
    """Say so when every request goes unchecked (``app.web`` runs ``authenticate``)."""
    if app.config["AUTH_DISABLED"]:
        log.warning("AUTH_DISABLED is set: every caller can see and cancel every task")
