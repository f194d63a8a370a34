"""A worker takes a message and holds it in one step (take.lua), never neither.

kombu pops with BRPOP and writes its hold (``unacked``, ``unacked_index``) in a
second command; a worker or a Redis primary lost between them loses the message
(tests/test_failover.py shows it under a real failover). Here the script itself
is checked on a private Redis: what it takes is held, in priority order, and the
ready markers that wake idle workers are set, renewed and left to expire.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from app.store import keys, scripts
from app.worker import messages
from tests.support import BIN, ROOT, errand_env, make_app, submit


def take(client: Any, queue: str = "celery") -> Any:
    lists = [messages.queue_list(queue, p) for p in (9, 6, 3, 0)]  # kombu's order: 0, 3, 6, 9
    names = ["unacked", "unacked_index", *lists, *(keys.ready(queue) for _ in lists)]
    return scripts.TAKE(client, names, time.time(), len(lists), *([queue] * len(lists)))


def test_what_is_taken_is_held_under_its_tag(stack: Any) -> None:
    server = stack("redis")
    client = server.client()
    app_client = make_app(server.url).test_client()
    low = [submit(app_client, "test.echo", {"value": i}) for i in (1, 2)]
    high = submit(app_client, "test.echo", {"value": 3}, priority=9)
    assert client.exists(keys.ready("celery"))
    assert 0 < client.ttl(keys.ready("celery")) <= 10  # a marker nobody waits on goes

    client.delete(keys.ready("celery"))
    first_list, first = take(client)
    assert json.loads(first)["headers"]["id"] == high.rsplit("/", 1)[-1]  # priority first
    assert first_list == b"celery"  # Errand's 9 is kombu's 0: the bare list
    assert not client.exists(keys.ready("celery"))  # its list is empty: this taker goes on

    tag = json.loads(first)["properties"]["delivery_tag"]
    held = json.loads(client.hget("unacked", tag))
    assert held == [json.loads(first), "", "celery"]  # kombu's form: payload, exchange, key
    assert abs(client.zscore("unacked_index", tag) - time.time()) < 5

    _, second = take(client)
    assert json.loads(second)["headers"]["id"] == low[0].rsplit("/", 1)[-1]  # oldest first
    assert client.exists(keys.ready("celery"))  # one more behind it: the next idle worker wakes
    client.delete(keys.ready("celery"))
    _, third = take(client)
    assert json.loads(third)["headers"]["id"] == low[1].rsplit("/", 1)[-1]
    assert not client.exists(keys.ready("celery"))
    assert take(client) is None
    assert client.hlen("unacked") == 3 and client.zcard("unacked_index") == 3
    assert sum(client.llen(k) for k in client.scan_iter("celery*")) == 0


def test_a_message_without_a_tag_is_taken_but_not_held(stack: Any) -> None:
    # Nothing Celery or Errand sends lacks one; the script must not fail on it either.
    server = stack("redis")
    client = server.client()
    client.lpush("celery", json.dumps({"body": "", "properties": {}}))
    _, taken = take(client)
    assert json.loads(taken)["properties"] == {}
    assert client.hlen("unacked") == 0


def test_a_reply_queue_leaves_no_hold_behind(stack: Any, tmp_path: Path) -> None:
    # celery inspect's replies are consumed without acknowledgements: taken, not held.
    server = stack("redis")
    env = errand_env(server.url)
    stack("worker", env, tmp_path / "worker.log", "replies", concurrency=1)
    client = server.client()
    command = [str(BIN / "celery"), "-A", "worker:celery_app", "inspect", "ping", "-t", "5"]
    for _ in range(3):
        found = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=60)
        assert found.returncode == 0, found.stdout + found.stderr
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    for marker in client.scan_iter(f"{keys.READY_PREFIX}*"):
        assert client.ttl(marker) > 0  # none stays
