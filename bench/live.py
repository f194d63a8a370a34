"""Live status under load: 500 waiting clients, and how fast a change reaches one.

    .venv/bin/python bench/live.py [--clients 500] [--seconds 5]

Starts a private Redis, a worker and the API with its default gunicorn settings,
then reports, as JSON:

- ``submit`` and ``status``: requests/s and p99 (wrk) with no waiting client, and
  again while ``--clients`` clients hold long-polls and event streams open (half
  each) on tasks that do not change; the p99 ratio loaded/unloaded (target < 2);
- ``latency_ms``: from the worker storing SUCCESS (its ``date_done``) to a waiting
  client having the answer, p50 and p99, for a long-poll, for an event stream, and
  for the Flask docs' way, polling every 0.5 s.

The machine is shared and the clients run on it too: read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store.apikeys import create_key
from bench.speed import ensure_wrk, wrk
from tests.support import Api, RedisServer, Worker, errand_env

HIGH = "1000000000 per second"
NOOP = {"task": "bench.noop", "params": {}}
LATER = {"task": "bench.noop", "params": {}, "options": {"countdown": 3600}}


def call(port: int, method: str, path: str, key: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:  # fmt: skip
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    sent = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})}
    connection.request(method, path, json.dumps(body) if body is not None else None, sent)
    reply = connection.getresponse()
    raw = reply.read()
    connection.close()
    return reply.status, reply.headers, json.loads(raw) if raw else None


async def hold(port: int, path: str, key: str, stop: asyncio.Event, opened: list[int]) -> None:
    """One waiting client: a long-poll (again and again) or an event stream, until ``stop``."""
    while not stop.is_set():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
        )
        await writer.drain()
        status = await reader.readline()
        opened.append(int(status.split()[1]))
        if opened[-1] != 200:  # as a well-behaved client does: wait before trying again
            writer.close()
            await asyncio.sleep(1)
            continue
        with contextlib.suppress(ConnectionError):
            while not stop.is_set():  # read until the server ends it or we stop
                try:
                    if not await asyncio.wait_for(reader.read(4096), 1.0):
                        break
                except TimeoutError:
                    continue  # nothing yet: still waiting
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def hold_clients(port: int, paths: list[str], key: str) -> tuple[threading.Event, list[int]]:
    """Start the waiting clients in a thread of their own; set the event to stop them."""
    done, opened = threading.Event(), []
    loop = asyncio.new_event_loop()

    async def main() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(hold(port, p, key, stop, opened)) for p in paths]
        while not done.is_set():
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True).start()
    return done, opened


def load(tool: str, port: int, key: str, url: str, seconds: float, work: Path) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    base = f"http://127.0.0.1:{port}"
    return {
        "submit": wrk(tool, base + "/api/v1/tasks", seconds, 16, work, "POST", json.dumps(NOOP),
                      auth),
        "status": wrk(tool, base + url, seconds, 16, work, "GET", "", auth),
    }  # fmt: skip


def done_at(task: dict[str, Any], server: RedisServer) -> float:
    """When the worker stored SUCCESS (the result's date_done, or the record's finished_at)."""
    meta = json.loads(server.client().get(f"celery-task-meta-{task['id']}") or b"{}")
    when = meta.get("date_done") or (task["finished_at"] or "").replace("Z", "+00:00")
    if not when:
        raise RuntimeError(f"SUCCESS without a time: {task} {meta}")
    return datetime.fromisoformat(when).timestamp()


def latency(port: int, key: str, server: RedisServer, how: str, n: int) -> dict[str, float]:
    """Seconds from SUCCESS stored to the client knowing, for ``n`` jobs, one at a time."""
    gaps = []
    for _ in range(n):
        _, headers, task = call(port, "POST", "/api/v1/tasks", key, NOOP)
        url = task["links"]["self"]
        if how == "long-poll":
            seen = headers["ETag"]
            while task["state"] != "SUCCESS":
                status, headers, body = call(port, "GET", url + "?wait=30", key,
                                             headers={"If-None-Match": seen})  # fmt: skip
                if status == 200:
                    task, seen = body, headers["ETag"]
        elif how == "events":
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.request("GET", url + "/events", headers={"Authorization": f"Bearer {key}"})
            reply = connection.getresponse()
            if reply.status != 200:
                raise RuntimeError(f"events answered {reply.status}: {reply.read()[:300]!r}")
            for line in reply:
                if line.startswith(b"data: ") and b'"SUCCESS"' in line:
                    task = json.loads(line[6:])
                    break
            connection.close()
        else:  # the Flask docs' way: ask every half second
            while task["state"] != "SUCCESS":
                time.sleep(0.5)
                task = call(port, "GET", url, key)[2]
        gaps.append(time.time() - done_at(task, server))
    ordered = sorted(gaps)
    return {
        "p50": round(statistics.median(ordered) * 1000, 2),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--samples", type=int, default=40, help="jobs per latency figure")
    args = parser.parse_args()
    tool = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="errand-live-"))
    report: dict[str, Any] = {"settings": vars(args)}
    with contextlib.ExitStack() as stack:
        server = RedisServer(work / "redis")
        server.start()
        stack.callback(server.stop)
        key = create_key(server.client(), "bench")
        env = errand_env(
            server.url, AUTH_DISABLED="false", RATE_LIMIT_SUBMIT=HIGH, RATE_LIMIT_READ=HIGH,
            IN_FLIGHT_LIMIT="1000000000", WAIT_LIMIT=str(args.clients * 2),
            TASK_MODULES="bench.tasks",
        )  # fmt: skip
        env.pop("WEB_CONCURRENCY", None)  # the default gunicorn settings
        stack.enter_context(Worker(env, work / "worker.log", "live"))
        api = stack.enter_context(Api(env, work / "api.log", workers=_default_workers()))
        report["gunicorn"] = (work / "api.log").read_text().split("Using worker: ")[1].split()[0]
        waiting = [call(api.port, "POST", "/api/v1/tasks", key, LATER)[2] for _ in range(
            args.clients)]  # fmt: skip
        url = waiting[0]["links"]["self"]
        report["unloaded"] = load(tool, api.port, key, url, args.seconds, work)
        paths = [
            t["links"]["self"] + ("?wait=30" if i % 2 else "/events") for i, t in enumerate(waiting)
        ]
        done, opened = hold_clients(api.port, paths, key)
        deadline = time.monotonic() + 60
        while len(opened) < args.clients and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # let the opening settle: the figures are for clients that wait
        report["waiting_clients"] = {
            "opened": len(opened), "answers": {str(s): opened.count(s) for s in set(opened)}
        }  # fmt: skip
        report["loaded"] = load(tool, api.port, key, url, args.seconds, work)
        report["loaded_p99_vs_unloaded"] = {
            route: round(report["loaded"][route]["p99_ms"] / report["unloaded"][route]["p99_ms"], 2)
            for route in ("submit", "status")
        }
        done.set()
        time.sleep(1.5)
        # Another key: the waiting clients' places are held until their waits end on the
        # server (a long-poll's wait, an event stream's next heartbeat), not when they go.
        other = create_key(server.client(), "latency")
        report["latency_ms"] = {
            how: latency(api.port, other, server, how, args.samples if how != "poll-0.5s" else 10)
            for how in ("long-poll", "events", "poll-0.5s")
        }
    print(json.dumps(report, indent=2))


def _default_workers() -> int:
    import multiprocessing

    return multiprocessing.cpu_count() * 2  # gunicorn.conf.py's default


if __name__ == "__main__":
    main()
