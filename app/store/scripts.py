"""Errand's Lua scripts (``lua/*.lua``), loaded once and run by their SHA-1.

Each script is one state change, atomic and in one round trip; its header
comment names every ``KEYS[i]`` and ``ARGV[i]`` and what it returns.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

import redis


class Script:
    """A script from ``lua/<name>.lua``, run with EVALSHA (its text sent only on NOSCRIPT)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = resources.files(__package__).joinpath(f"lua/{name}.lua").read_text()
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()

    def __call__(self, client: redis.Redis, keys: list[str], *args: Any) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return client.eval(self.text, len(keys), *keys, *args)  # also caches it in Redis


CREATE = Script("create")
RESERVE = Script("reserve")
BEGIN = Script("begin")
CLAIM = Script("claim")
RELEASE = Script("release")
REVOKE = Script("revoke")
STORE_RESULT = Script("store_result")
SUBMIT = Script("submit")
STATUS = Script("status")
HIT = Script("hit")
OPEN_STREAM = Script("open_stream")
