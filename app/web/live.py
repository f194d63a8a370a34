"""Live status: ETags, long-polls and Server-Sent Events for one task.

A waiting request reads the task, then waits on the process's ``Watcher``
(the result store's PUBLISH) and reads it again when it changed: no Redis
polling, one subscriber connection per process. Each key may hold
``WAIT_LIMIT`` waits open at once (``429`` past that); a wait counts once
against the read rate limit, however long it lasts.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import redis
from flask import current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from app import store
from app.errors import ErrandError, StoreUnavailable, TooManyRequests
from app.jobs.resource import FINAL_STATES
from app.jobs.service import Principal
from app.store import keys, quotas
from app.store.watch import Watcher

LEASE = 60  # seconds a wait's place is held without renewal (a process that died)


def body_and_etag(task: dict[str, Any]) -> tuple[bytes, str]:
    """The task resource's JSON and its strong ETag (a hash of exactly those bytes)."""
    body = orjson.dumps(task)
    return body, '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names this ETag (or ``*``)."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags or "*" in tags


def watcher() -> Watcher:
    """The current process's subscriber, made on first use."""
    found: Watcher | None = current_app.extensions.get("errand.watcher")
    if found is None:
        found = Watcher(store.client(), current_app.config["REDIS_TIMEOUT"] * 2)
        current_app.extensions["errand.watcher"] = found
    return found


class Wait:
    """One of a key's places for open waits, taken at once (429 if none is free)."""

    def __init__(self, principal: Principal) -> None:
        owner = principal.key_id or f"ip:{request.remote_addr}"
        self.key, self.id = keys.streams(owner), uuid.uuid4().hex
        self.client = store.client()
        cap = current_app.config["WAIT_LIMIT"]
        try:
            taken = quotas.open_wait(self.client, self.key, cap, self.id, LEASE)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
        if not taken:
            error = TooManyRequests(f"this key has {cap} long-polls or event streams open")
            error.headers["Retry-After"] = "5"
            error.headers["RateLimit-Policy"] = f'"waits";q={cap}'
            raise error

    def renew(self) -> None:
        with contextlib.suppress(redis.RedisError):
            quotas.renew_wait(self.client, self.key, self.id, LEASE)

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError):
            quotas.close_wait(self.client, self.key, self.id)


RETRY_READ = 0.25  # seconds between reads of a waited-on task while Redis is away


def wait_for_change(
    read: Callable[[], dict[str, Any]],
    task_id: str,
    seen: str,
    seconds: float,
    watch: Watcher,
) -> tuple[dict[str, Any], bytes, str]:
    """Read the task until its ETag is not ``seen`` or ``seconds`` pass; the last reading."""
    deadline = time.monotonic() + seconds
    with watch.watch(task_id) as changed:
        task = read()  # after the subscription: a change from now on wakes us
        body, etag = body_and_etag(task)
        while etag == seen and task["state"] not in FINAL_STATES:
            left = deadline - time.monotonic()
            if left <= 0 or not changed.wait(left):
                break
            changed.clear()
            try:
                task = read()
            except StoreUnavailable:
                # Redis went away while we waited (a failover, a restart): read again
                # shortly, and answer 503 only if the wait ends with it still away.
                if deadline - time.monotonic() <= RETRY_READ:
                    raise
                time.sleep(RETRY_READ)
                changed.set()
                continue
            body, etag = body_and_etag(task)
    return task, body, etag


def event_stream(
    read: Callable[[], dict[str, Any]],
    task_id: str,
    last_id: str,
    watch: Watcher,
    wait: Wait,
    heartbeat: float,
    limit: float,
) -> Iterator[bytes]:
    """Server-Sent Events: the task at every change (``id`` is its ETag), then the end.

    The current state comes first unless the client said it has it
    (``Last-Event-ID``); the stream ends after the final state, or after
    ``limit`` seconds (the client reconnects with the last id it got), or when
    Redis goes away (likewise).
    """
    stop = time.monotonic() + limit
    seen = f'"{last_id}"' if last_id else ""
    try:
        yield b"retry: 1000\n\n"
        with watch.watch(task_id) as changed:
            while True:
                task = read()
                body, etag = body_and_etag(task)
                if etag != seen:
                    seen = etag
                    event_id = etag.strip('"').encode()
                    yield b"event: state\nid: " + event_id + b"\ndata: " + body + b"\n\n"
                if task["state"] in FINAL_STATES or time.monotonic() >= stop:
                    return
                beat = min(heartbeat, max(0.0, stop - time.monotonic()))
                if changed.wait(beat):
                    changed.clear()
                    continue
                wait.renew()
                yield b": keep-alive\n\n"
    except (ErrandError, redis.RedisError, TimeoutError):
        return  # the task went away, or Redis did: the client reconnects and is told
    finally:
        wait.close()


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="errand-events")


def mint_stream_token(principal: Principal, task_id: str) -> str:
    """A short-lived token for one task's events, for the key that asked for it."""
    return _signer().dumps({"t": task_id, "k": principal.key_id})


def stream_token_key(token: str, task_id: str) -> str | None:
    """The key id a stream token was minted for, if it is good for this task and not expired."""
    try:
        claims = _signer().loads(token, max_age=current_app.config["STREAM_TOKEN_TTL"])
    except BadSignature:
        return None
    if not isinstance(claims, dict) or claims.get("t") != task_id:
        return None
    key_id = claims.get("k")
    return key_id if isinstance(key_id, str) else None
