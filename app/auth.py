"""API keys, and the one check every request passes through.

A key looks like ``erd_<id>_<secret>``: the id names it, the secret (32 random
bytes) proves it. Redis keeps only a SHA-256 of the whole key, in
``errand:apikey:<id>``, beside its name, whether it is an admin key, and when
it was made or revoked; the key itself is shown once, when created.

``authenticate`` runs before every request: health checks (and ``/metrics``
when ``METRICS_PUBLIC``) are open, ``OPTIONS`` preflights pass, everything
else needs a live key, and the operator routes need an admin key. A route
added later is covered without doing anything. Which tasks a key may see is
decided in ``app.jobs`` from the owner kept in each task record.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

import click
import redis
from flask import Flask, current_app, g, request
from werkzeug.exceptions import Forbidden

from app.errors import Unauthenticated
from app.extensions import store
from app.records import isotime

log = logging.getLogger(__name__)

KEY_PREFIX = "errand:apikey:"
KEY_IDS = "errand:apikeys"
PUBLIC = {"health.healthz", "health.readyz"}
ADMIN_BLUEPRINTS = {"ops"}
ADMIN_ENDPOINTS = {"metrics"}

_cache: dict[str, tuple[float, dict[str, str]]] = {}


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id and name, and whether it is an admin key."""

    key_id: str
    name: str
    admin: bool


ANONYMOUS = Principal("", "anonymous (AUTH_DISABLED)", admin=True)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(client: redis.Redis, name: str, admin: bool = False) -> str:
    """Make a new key and return it: this is the only time it is seen."""
    key_id = secrets.token_hex(6)
    key = f"erd_{key_id}_{secrets.token_urlsafe(32)}"
    record = {"name": name, "admin": int(admin), "hash": _digest(key), "created_at": isotime()}
    client.pipeline().hset(KEY_PREFIX + key_id, mapping=record).sadd(KEY_IDS, key_id).execute()
    return key


def list_keys(client: redis.Redis) -> list[dict[str, str]]:
    """Every key's id, name, role and times (never the hash)."""
    ids = sorted(k.decode() for k in client.smembers(KEY_IDS))
    pipe = client.pipeline(transaction=False)
    for key_id in ids:
        pipe.hgetall(KEY_PREFIX + key_id)
    keys = []
    for key_id, raw in zip(ids, pipe.execute(), strict=True):
        about = {k.decode(): v.decode() for k, v in raw.items()}
        about.pop("hash", None)
        keys.append({"id": key_id, **about})
    return keys


def revoke_key(client: redis.Redis, key_id: str) -> bool:
    """Revoke a key by its id; False if there is no such key."""
    if not client.exists(KEY_PREFIX + key_id):
        return False
    client.hsetnx(KEY_PREFIX + key_id, "revoked_at", isotime())
    return True


def _lookup(key_id: str) -> dict[str, str]:
    """A key's record, cached for ``KEY_CACHE_SECONDS`` so reads stay one round trip."""
    now = time.monotonic()
    cached = _cache.get(key_id)
    if cached and now - cached[0] < current_app.config["KEY_CACHE_SECONDS"]:
        return cached[1]
    raw = store().hgetall(KEY_PREFIX + key_id)
    record = {k.decode(): v.decode() for k, v in raw.items()}
    _cache[key_id] = (now, record)
    return record


def verify(key: str) -> Principal | None:
    """The principal a presented key stands for, or None for a wrong or revoked key."""
    parts = key.split("_", 2)  # the secret may hold "_" too
    if len(parts) != 3 or parts[0] != "erd" or not parts[1].isalnum() or len(parts[1]) > 32:
        return None
    record = _lookup(parts[1])
    stored = record.get("hash", "")
    if not stored or not hmac.compare_digest(_digest(key), stored) or record.get("revoked_at"):
        return None
    return Principal(parts[1], record.get("name", ""), record.get("admin") == "1")


def authenticate() -> None:
    """Before every request: who is calling, and may they call this route?"""
    if request.endpoint in PUBLIC or request.method == "OPTIONS":
        return
    if request.endpoint == "metrics" and current_app.config["METRICS_PUBLIC"]:
        return
    if current_app.config["AUTH_DISABLED"]:
        g.principal = ANONYMOUS
        return
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated("send an API key: Authorization: Bearer <key>")
    principal = verify(key.strip())  # a RedisError here is answered 503 by app.errors
    if principal is None:
        raise Unauthenticated("the API key is wrong or revoked", "invalid_token")
    g.principal = principal
    admin_only = request.blueprint in ADMIN_BLUEPRINTS or request.endpoint in ADMIN_ENDPOINTS
    if admin_only and not principal.admin:
        raise Forbidden("this route needs an admin key")


def current() -> Principal:
    """The principal of the current request."""
    principal: Principal = g.principal
    return principal


@click.group("keys")
def keys_cli() -> None:
    """Create, list and revoke API keys."""


@keys_cli.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="an admin key sees every task and the operator routes")
def create_command(name: str, admin: bool) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    key = create_key(store(), name, admin)
    click.echo(key)
    click.echo("Keep it now: Errand stores only its hash and cannot show it again.", err=True)


@keys_cli.command("list")
def list_command() -> None:
    """List keys: id, name, role, created and revoked times."""
    for key in list_keys(store()):
        role = "admin" if key.get("admin") == "1" else "user"
        revoked = f"revoked {key['revoked_at']}" if key.get("revoked_at") else "active"
        click.echo(
            f"{key['id']}  {key.get('name', '')}  {role}  {key.get('created_at')}  {revoked}"
        )


@keys_cli.command("revoke")
@click.argument("key_id")
def revoke_command(key_id: str) -> None:
    """Revoke a key by its id (the part after ``erd_``)."""
    if not revoke_key(store(), key_id):
        raise click.ClickException(f"no key {key_id}")
    click.echo(f"revoked {key_id}")


def init_app(app: Flask) -> None:
    """Check every request, and add the ``keys`` commands to ``flask``."""
    app.before_request(authenticate)
    app.cli.add_command(keys_cli)
    if app.config["AUTH_DISABLED"]:
        log.warning("AUTH_DISABLED is set: every caller can see and cancel every task")
