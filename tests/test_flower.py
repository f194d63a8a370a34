"""Flower, the monitor teams run against Celery, sees Errand's broker and tasks as they are."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from tests.support import BIN, errand_env, free_port, make_app, submit, wait_for, wait_state


def flower_get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        body = reply.read()
        return json.loads(body) if "json" in reply.headers.get("Content-Type", "") else body


def test_flower_reads_the_broker_and_errands_states(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    env = errand_env(server.url, FLOWER_UNAUTHENTICATED_API="true")
    client = make_app(server.url).test_client()
    waiting = submit(client, "test.echo", {"value": 1}, countdown=600)
    port = free_port()
    command = [str(BIN / "celery"), "-A", "worker:celery_app", "flower", f"--port={port}"]
    stack("process", [*command, "--address=127.0.0.1"], tmp_path / "flower.log", env)
    wait_for(lambda: _answers(port), 30)
    # The broker keeps its redis:// URL (Errand's transport is kombu's alias for it).
    lengths = flower_get(port, "/api/queues/length")
    assert {"name": "celery", "messages": 1} in lengths["active_queues"]
    assert b"celery" in flower_get(port, "/broker")

    stack("worker", env, tmp_path / "w.log", "flowered", concurrency=1)
    running = submit(client, "demo.progress", {"steps": 8, "delay": 0.5})
    wait_for(lambda: (client.get(running).json["progress"] or {}).get("current", 0) >= 2, 20)
    info = wait_for(lambda: _task(port, running, "PROGRESS"), 20)
    assert info["state"] == "PROGRESS"  # Errand's custom state, not STARTED

    cancelled = submit(client, "test.echo", {"value": 2}, countdown=1)
    client.delete(cancelled)
    assert wait_state(client, cancelled)["state"] == "REVOKED"
    # A cancel noticed when the task was about to start: Flower hears it was revoked.
    assert wait_for(lambda: _task(port, cancelled, "REVOKED"), 20)["state"] == "REVOKED"
    assert client.get(waiting).json["state"] == "PENDING"


def _answers(port: int) -> bool:
    try:
        flower_get(port, "/healthcheck")
        return True
    except OSError:
        return False


def _task(port: int, url: str, state: str) -> dict[str, Any] | None:
    try:
        info = flower_get(port, f"/api/task/info/{url.rsplit('/', 1)[-1]}")
    except OSError:
        return None
    return info if info.get("state") == state else None
