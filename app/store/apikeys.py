"""API keys in Redis: ``erd_<id>_<secret>``, of which only a SHA-256 is kept.

The id names a key, the secret (32 random bytes) proves it. The hash
``errand:apikey:<id>`` holds the digest of the whole key beside its name,
whether it is an admin key, and when it was made or revoked; the key itself is
shown once, when created.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import redis

from app.clock import isotime
from app.store import keys


def digest(key: str) -> str:
    """The SHA-256 of a whole key, as stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id part of something shaped like a key, or None."""
    parts = key.split("_", 2)  # the secret may hold "_" too
    if len(parts) != 3 or parts[0] != "erd" or not parts[1].isalnum() or len(parts[1]) > 32:
        return None
    return parts[1]


def create_key(client: redis.Redis, name: str, admin: bool = False) -> str:
    """Make a new key and return it: this is the only time it is seen."""
    key_id = secrets.token_hex(6)
    key = f"erd_{key_id}_{secrets.token_urlsafe(32)}"
    now = time.time()
    record = {
        "name": name,
        "admin": int(admin),
        "hash": digest(key),
        "created_at": isotime(now),
        "created_us": int(now * 1_000_000),  # the order of keys made in one millisecond
    }
    pipe = client.pipeline()
    pipe.hset(keys.apikey(key_id), mapping=record).sadd(keys.APIKEY_IDS, key_id).execute()
    return key


def lookup(client: redis.Redis, key_id: str) -> dict[str, str]:
    """A key's record (empty if there is no such key)."""
    raw = client.hgetall(keys.apikey(key_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def list_keys(client: redis.Redis) -> list[dict[str, str]]:
    """Every key's id, name, role and times (never the hash)."""
    ids = sorted(k.decode() for k in client.smembers(keys.APIKEY_IDS))
    pipe = client.pipeline(transaction=False)
    for key_id in ids:
        pipe.hgetall(keys.apikey(key_id))
    found = []
    for key_id, raw in zip(ids, pipe.execute(), strict=True):
        about = {k.decode(): v.decode() for k, v in raw.items()}
        about.pop("hash", None)
        found.append({"id": key_id, **about})
    return found


def revoke_key(client: redis.Redis, key_id: str) -> bool:
    """Revoke a key by its id; False if there is no such key."""
    if not client.exists(keys.apikey(key_id)):
        return False
    client.hsetnx(keys.apikey(key_id), "revoked_at", isotime())
    return True
