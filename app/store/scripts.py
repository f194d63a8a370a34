"""Errand's Lua scripts (``lua/*.lua``), loaded once and run by their SHA-1.

Each script is one state change, atomic and in one round trip; its header
comment names every ``KEYS[i]`` and ``ARGV[i]`` and what it returns. Pieces that
several scripts share are in ``lua/includes/``, pulled in by ``--- @include "name"``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, ClassVar

import redis
from hiredis import pack_command  # redis-py's own packer with hiredis, without its checks

from app.store import READ_ALL
from app.store import keys as names

_INCLUDE = re.compile(r'^--- @include "([a-z_]+)"$', re.MULTILINE)
_LIST = re.compile(r"^--- @list ([A-Z_]+)$", re.MULTILINE)
_WORD = re.compile(r"[a-z_]+")


def _source(path: str) -> str:
    """A script's text, with each ``--- @include "name"`` line replaced by ``includes/name.lua``."""
    text = resources.files(__package__).joinpath(path).read_text()
    return _INCLUDE.sub(lambda found: _source(f"lua/includes/{found[1]}.lua"), text)


def _lua_list(name: str, lists: Mapping[str, Sequence[str]]) -> str:
    """``--- @list NAME``: a Lua table of the words Python gives as ``NAME``, sent once."""
    words = lists[name]
    if not all(_WORD.fullmatch(word) for word in words):
        raise ValueError(f"{name}: only lower-case words go into a script's text")
    return f"local {name} = {{{', '.join(repr(word) for word in words)}}}"


class ReplicasBehind(redis.RedisError):
    """The write is on the primary, but fewer replicas than ``REDIS_MIN_REPLICAS`` confirmed it."""


class Script:
    """A script from ``lua/<name>.lua``, run with EVALSHA (its text sent only on NOSCRIPT).

    An ``acknowledged`` script's answer tells a client that something was accepted
    (a submit, a cancel): on a client with ``min_replicas`` (``app.store.Store``) it
    is followed, in the same round trip, by ``WAIT min_replicas`` on the same
    connection, and answers only once that many replicas hold its writes; else it
    raises ``ReplicasBehind`` (the API's 503), its writes left on the primary.
    """

    made: ClassVar[list[Script]] = []  # every script, wherever it is defined (``records.STATUS``)

    def __init__(
        self,
        name: str,
        acknowledged: bool = False,
        lists: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.name = name
        self.acknowledged = acknowledged
        Script.made.append(self)
        text = _source(f"lua/{name}.lua")
        self.text = _LIST.sub(lambda found: _lua_list(found[1], lists or {}), text)
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()

    def __call__(self, client: redis.Redis, keys: list[str], *args: Any) -> Any:
        replicas = getattr(client, "min_replicas", 0) if self.acknowledged else 0
        if replicas:
            return self._then_wait(client, replicas, keys, args)
        try:
            return call(client, "EVALSHA", self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return client.eval(self.text, len(keys), *keys, *args)  # also caches it in Redis

    def _then_wait(self, client: redis.Redis, replicas: int, keys: list[str], args: Any) -> Any:
        for command, code in (("EVALSHA", self.sha), ("EVAL", self.text)):
            pipe = client.pipeline(transaction=False)
            pipe.execute_command(command, code, len(keys), *keys, *args)
            answer = _waited(client, replicas, pipe)
            if not isinstance(answer, redis.exceptions.NoScriptError):
                return answer
            # nothing ran; again with the text, which also caches it
        raise redis.exceptions.NoScriptError(f"script {self.name} could not be loaded")


RETRIED = (redis.ConnectionError, redis.TimeoutError)


def call(client: redis.Redis, *command: Any) -> Any:
    """``command`` on one of ``client``'s pooled connections: its raw answer.

    What ``client.execute_command`` does for a command with no response callback
    (EVALSHA), without its per-call layers (retry object, observability hooks,
    argument checks: a fifth of a status read's CPU, in process): a connection that
    breaks is connected again and the command sent once more (as ``connect``'s
    ``Retry(NoBackoff(), 1)``), any other error raised as Redis answered it. A
    Sentinel pool's connection turns ``READONLY`` into a ConnectionError, and
    connects again to the primary named now. Waiting for a free connection and
    connecting it are bounded by the pool's own timeout, once.
    """
    packed = [pack_command(command)]
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        try:
            connection.send_packed_command(packed)
            answer = connection.read_response()
        except RETRIED:
            connection.disconnect()
            # connect() itself: a Sentinel connection asks for the primary there, while
            # send_packed_command's own reconnect would go back to the address it had.
            connection.connect()
            connection.send_packed_command(packed)
            answer = connection.read_response()
        setattr(connection, READ_ALL, True)  # its next user need not poll it
        return answer
    finally:
        pool.release(connection)


def _waited(client: redis.Redis, replicas: int, pipe: Any) -> Any:
    """Send ``pipe`` with ``WAIT replicas`` after it; its first answer, or ReplicasBehind.

    A NOSCRIPT answer is returned (as the error), not raised: nothing ran.
    """
    wait_ms = max(1, int(float(getattr(client, "replica_wait", 0.5)) * 1000))
    pipe.execute_command("WAIT", replicas, wait_ms)
    answer, confirmed = pipe.execute(raise_on_error=False)
    if isinstance(answer, redis.exceptions.NoScriptError):
        return answer
    for failed in (answer, confirmed):
        if isinstance(failed, Exception):
            raise failed
    if int(confirmed) < replicas:
        raise ReplicasBehind(
            f"{confirmed} of the {replicas} replicas asked for confirmed the write "
            f"within {wait_ms} ms"
        )
    return answer


def confirm(client: redis.Redis) -> None:
    """Wait, as an acknowledged script does, for writes made on other connections before now.

    For what kombu published (a workflow's messages): a write of this connection
    comes after theirs in the replication stream, so replicas that hold it hold them.
    """
    replicas = getattr(client, "min_replicas", 0)
    if replicas:
        pipe = client.pipeline(transaction=False)
        pipe.set(names.REPLICATION_MARK, "1", px=60_000)
        _waited(client, replicas, pipe)


CREATE = Script("create", acknowledged=True)
RESERVE = Script("reserve")
BEGIN = Script("begin")
CLAIM = Script("claim")
RELEASE = Script("release")
REVOKE = Script("revoke", acknowledged=True)
STORE_RESULT = Script("store_result")
SUBMIT = Script("submit", acknowledged=True)
TAKE = Script("take")
HIT = Script("hit")
OPEN_STREAM = Script("open_stream")
WEBHOOK_ATTEMPT = Script("webhook_attempt")
WEBHOOK_FINISH = Script("webhook_finish")
SAVE_SCHEDULE = Script("save_schedule", acknowledged=True)
CREATE_WORKFLOW = Script("create_workflow", acknowledged=True)
ABORT_WORKFLOW = Script("abort_workflow", acknowledged=True)
