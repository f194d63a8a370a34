"""The store's connection pool and its direct script calls (``app.store``, ``app.store.scripts``).

Both leave out redis-py's per-call layers for speed; these check that what those
layers guaranteed still holds, against a real Redis.
"""

from __future__ import annotations

import os
import time

import pytest
import redis

from app.store import BlockingPool, connect, scripts
from tests.support import RedisServer

pytestmark = pytest.mark.timeout(30)

SETTINGS = {"REDIS_TIMEOUT": "0.5"}


def test_a_connection_with_an_unread_answer_is_never_handed_out(redis_server: RedisServer) -> None:
    client = connect(redis_server.url, SETTINGS, max_connections=1)
    assert isinstance(client.connection_pool, BlockingPool)
    client.set("pool-test", "right")
    connection = client.connection_pool.get_connection()
    connection.send_command("PING")  # its answer never read
    time.sleep(0.05)  # ... and arrived
    client.connection_pool.release(connection)
    # The one connection is replaced, not reused: this GET reads its own answer, not PONG.
    assert client.get("pool-test") == b"right"
    assert scripts.call(client, "GET", "pool-test") == b"right"


def test_a_script_calls_word_holds_for_its_own_use_only(redis_server: RedisServer) -> None:
    """``scripts.call`` says it read every answer; the next user of that connection may not."""
    client = connect(redis_server.url, SETTINGS, max_connections=1)
    client.set("pool-test", "right")
    assert scripts.call(client, "PING") == b"PONG"  # its connection goes back unpolled
    connection = client.connection_pool.get_connection()
    connection.send_command("PING")  # a redis-py user that never reads its answer
    time.sleep(0.05)
    client.connection_pool.release(connection)
    assert scripts.call(client, "GET", "pool-test") == b"right"
    assert client.get("pool-test") == b"right"


def test_a_checkout_past_the_cap_waits_then_fails_within_the_timeout(
    redis_server: RedisServer,
) -> None:
    client = connect(redis_server.url, SETTINGS, max_connections=1)
    held = client.connection_pool.get_connection()
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError, match="No connection available"):
        scripts.call(client, "PING")
    assert 0.4 < time.monotonic() - started < 0.9  # one REDIS_TIMEOUT, not one per try
    client.connection_pool.release(held)
    assert scripts.call(client, "PING") == b"PONG"  # the place came back


def test_a_connection_the_server_closed_is_tried_again_once(redis_server: RedisServer) -> None:
    client = connect(redis_server.url, SETTINGS, max_connections=1)
    pooled = int(scripts.call(client, "CLIENT", "ID"))
    assert redis_server.client().client_kill_filter(_id=pooled) == 1
    # Its pooled connection is dead now: the call mends it on a new one, not an error.
    assert scripts.call(client, "PING") == b"PONG"


def test_errors_are_raised_as_redis_answered_them(redis_server: RedisServer) -> None:
    client = connect(redis_server.url, SETTINGS, max_connections=1)
    client.set("pool-test-string", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        scripts.call(client, "LPUSH", "pool-test-string", "y")
    with pytest.raises(redis.exceptions.NoScriptError):
        scripts.call(client, "EVALSHA", "0" * 40, 0)
    assert scripts.call(client, "PING") == b"PONG"  # and the connection is still good


def test_a_forked_process_gets_connections_of_its_own(redis_server: RedisServer) -> None:
    client = connect(redis_server.url, SETTINGS, max_connections=2)
    parent = scripts.call(client, "CLIENT", "ID")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first call must not use the parent's socket
        try:
            child = scripts.call(client, "CLIENT", "ID")
            os.write(write, str(int(child)).encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child_id = int(os.read(read, 64) or b"0")
    os.close(read)
    assert status == 0 and child_id and child_id != int(parent)
    assert scripts.call(client, "CLIENT", "ID") == parent  # the parent's still its own
