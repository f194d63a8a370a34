"""Errand's Lua scripts (``lua/*.lua``), loaded once and run by their SHA-1.

Each script is one state change, atomic and in one round trip; its header
comment names every ``KEYS[i]`` and ``ARGV[i]`` and what it returns. Pieces that
several scripts share are in ``lua/includes/``, pulled in by ``--- @include "name"``.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from typing import Any

import redis

_INCLUDE = re.compile(r'^--- @include "([a-z_]+)"$', re.MULTILINE)


def _source(path: str) -> str:
    """A script's text, with each ``--- @include "name"`` line replaced by ``includes/name.lua``."""
    text = resources.files(__package__).joinpath(path).read_text()
    return _INCLUDE.sub(lambda found: _source(f"lua/includes/{found[1]}.lua"), text)


class Script:
    """A script from ``lua/<name>.lua``, run with EVALSHA (its text sent only on NOSCRIPT)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = _source(f"lua/{name}.lua")
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
WEBHOOK_ATTEMPT = Script("webhook_attempt")
WEBHOOK_FINISH = Script("webhook_finish")
SAVE_SCHEDULE = Script("save_schedule")
CREATE_WORKFLOW = Script("create_workflow")
ABORT_WORKFLOW = Script("abort_workflow")
