"""What one abusive client costs the others, measured against a real stack.

    .venv/bin/python bench/abuse.py [--slow 200] [--seconds 20]

Starts a private Redis and the API with its default gunicorn settings, and
reports, as JSON, other clients' status reads (p50, p99, failures) while:

- ``slow_clients``: ``--slow`` connections send their headers a byte every two
  seconds (and as many stall in a body), and how many the server dropped;
- ``bulk_templates``: five clients each submit the largest ``email.bulk`` the
  limits allow (templates of the most parts allowed, a body near
  ``MAX_CONTENT_LENGTH``), at once and again, with the API's RSS before and after;
- ``odd_methods``: the size of ``/metrics`` before and after 2,000 requests with
  made-up HTTP methods.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store.apikeys import create_key
from bench.speed import gunicorn_pids, rss_mb
from tests.support import Api, RedisServer, errand_env


def step(what: str) -> None:
    print(f"abuse: {what}", file=sys.stderr, flush=True)


def reads(port: int, key: str, url: str, seconds: float) -> dict[str, Any]:
    """Status reads from one client, one after another, for ``seconds``."""
    times, failed = [], 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        started = time.monotonic()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", url, headers={"Authorization": f"Bearer {key}"})
            ok = connection.getresponse().status == 200
            connection.close()
        except OSError:
            ok = False
        failed += not ok
        times.append(time.monotonic() - started)
        time.sleep(0.02)
    ordered = sorted(times)
    return {
        "reads": len(times),
        "failed": failed,
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
    }


def slow_clients(port: int, n: int, seconds: float) -> tuple[threading.Event, list[int]]:
    done, dropped = threading.Event(), [0]

    def one(kind: str) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            if kind == "headers":
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:
                sock.sendall(b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 9999\r\n"
                             b"Content-Type: application/json\r\n\r\n{")  # fmt: skip
            while not done.is_set():
                if kind == "headers":
                    sock.sendall(b"x")
                done.wait(2)
        except OSError:
            dropped[0] += 1

    for i in range(n):
        threading.Thread(target=one, args=("headers" if i % 2 else "body",), daemon=True).start()
    return done, dropped


def bulk_body(limit: int) -> str:
    """The largest ``email.bulk`` the limits allow: the most template parts, ~``limit`` bytes."""
    recipient = {"to": "u0@example.com", "context": {"name": "n"}}
    params = {"subject": "Hi {{ name }}", "body": "{{ name }}" * 1990, "recipients": []}
    room = limit - 200 - len(json.dumps({"task": "email.bulk", "params": params}))
    count = min(10_000, room // (len(json.dumps(recipient)) + 4))
    params["recipients"] = [
        {"to": f"u{n}@example.com", "context": {"name": "n"}} for n in range(count)
    ]
    return json.dumps({"task": "email.bulk", "params": params})


def bulk(port: int, key: str, body: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        connection.request("POST", "/api/v1/tasks", body, headers)
        status = connection.getresponse().status
    except OSError:
        status = 0  # no answer in 120 s, or the connection dropped
    connection.close()
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    # A SIGTERM (timeout, Ctrl-C in a pipe) unwinds the ExitStack: nothing is left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    work = Path(tempfile.mkdtemp(prefix="errand-abuse-"))
    report: dict[str, Any] = {"settings": vars(args)}
    with contextlib.ExitStack() as stack:
        server = RedisServer(work / "redis")
        server.start()
        stack.callback(server.stop)
        key = create_key(server.client(), "abuse", admin=True)
        env = errand_env(
            server.url, AUTH_DISABLED="false", RATE_LIMIT_SUBMIT="", RATE_LIMIT_READ=""
        )
        env.pop("WEB_CONCURRENCY", None)
        import multiprocessing

        api = stack.enter_context(
            Api(env, work / "api.log", workers=multiprocessing.cpu_count() * 2)
        )
        connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        connection.request("POST", "/api/v1/tasks", json.dumps(
            {"task": "demo.progress", "params": {"steps": 1, "delay": 0},
             "options": {"countdown": 3600}}),
            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})  # fmt: skip
        url = json.loads(connection.getresponse().read())["links"]["self"]
        step("quiet")
        report["quiet"] = reads(api.port, key, url, 5)

        step(f"{args.slow} slow clients")
        done, dropped = slow_clients(api.port, args.slow, args.seconds)
        time.sleep(2)
        report["slow_clients"] = reads(api.port, key, url, args.seconds)
        report["slow_clients"]["dropped_by_server"] = dropped[0]
        report["slow_clients"]["opened"] = args.slow
        done.set()

        rss_before = sum(rss_mb(pid) for pid in gunicorn_pids(api))
        statuses: list[int] = []
        body = bulk_body(1024 * 1024)
        report["bulk_templates_body_bytes"] = len(body)

        def submitters() -> None:
            for _ in range(2):
                clients = [
                    threading.Thread(target=lambda: statuses.append(bulk(api.port, key, body)))
                    for _ in range(5)
                ]
                for thread in clients:
                    thread.start()
                for thread in clients:
                    thread.join()

        step("bulk templates")
        loader = threading.Thread(target=submitters)
        loader.start()
        report["bulk_templates"] = reads(api.port, key, url, 5)
        loader.join()
        report["bulk_templates"].update(
            submits=statuses,
            api_rss_mb_before=round(rss_before, 1),
            api_rss_mb_after=round(sum(rss_mb(pid) for pid in gunicorn_pids(api)), 1),
        )

        def metrics_size() -> int:
            c = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
            c.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"})
            return len(c.getresponse().read())

        step("odd methods")
        before = metrics_size()
        for n in range(2000):
            c = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
            with contextlib.suppress(OSError):
                c.request(f"M{n}", "/api/v1/tasks", headers={"Authorization": f"Bearer {key}"})
                c.getresponse().read()
            c.close()
        report["odd_methods"] = {
            "metrics_bytes_before": before,
            "metrics_bytes_after": metrics_size(),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
