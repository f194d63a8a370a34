"""Which worker pool for which work: throughput and memory per pool, in one run.

    .venv/bin/python bench/pools.py [--concurrency 2] [--io-concurrency 32]
                                    [--cpu-jobs 200] [--cpu-ms 20]
                                    [--io-jobs 200] [--io-delay 0.05] [--rounds 1]

Starts a private Redis and a local HTTP server that answers after ``--io-delay``
seconds; then, for each pool (prefork, threads, gevent, solo, and prefork with
``--autoscale``), queues N jobs through Errand (the one-script submit), starts one
worker on the jobs' queue and measures:

- ``jobs_per_s``: jobs drained per second, from the first SUCCESS to the last;
- ``rss_mb``: the worker's peak memory, RSS summed over its processes (the main
  process and, for prefork, its children), sampled while it drains.

Three workloads: ``cpu`` (``bench.cpu``, about ``--cpu-ms`` of hashing each, on queue
``cpu``) and ``io`` (``bench.io``, one HTTP call each, on queue ``io``), both with
``--concurrency`` for every pool (solo is always 1), and ``io_high``, the I/O jobs
again with ``--io-concurrency`` for prefork, threads and gevent. Each figure also comes
as a ratio to prefork in the same workload of the same run: the machine is shared, so
read the ratios (with ``--rounds``, each figure is the median of the rounds). Prints
one JSON report.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.speed import SuccessCounter, rss_mb
from bench.tasks import crunch
from tests.support import BIN, Process, RedisServer, errand_env, make_app, wait_for

SETTINGS = {
    "TASK_MODULES": "bench.tasks",
    "LOG_LEVEL": "WARNING",
    "VISIBILITY_TIMEOUT": "60",
    "IN_FLIGHT_LIMIT": "1000000",
}


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 2 bytes after the server's delay."""

    def do_GET(self) -> None:
        time.sleep(self.server.delay)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        return None


def slow_server(delay: float) -> http.server.ThreadingHTTPServer:
    http.server.ThreadingHTTPServer.request_queue_size = 256  # many jobs call at once
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    server.daemon_threads = True
    server.delay = delay  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def processes(pid: int) -> list[int]:
    """``pid`` and every descendant of it, from /proc."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


class PeakRss:
    """Samples the RSS summed over a process tree every 0.1 s; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.stopping = pid, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            total = 0.0
            for pid in processes(self.pid):
                with contextlib.suppress(OSError):
                    total += rss_mb(pid)
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self.stopping.set()
        self.thread.join()
        return round(self.peak, 1)


def drain(
    redis: RedisServer, client: Any, job: dict[str, Any], n: int, options: list[str],
    queue: str, log: Path,
) -> dict[str, float]:  # fmt: skip
    """Queue ``n`` jobs, then start a worker with ``options`` on ``queue`` and time it."""
    for _ in range(n):
        reply = client.post("/api/v1/tasks", json=job)
        if reply.status_code != 202:
            raise RuntimeError(f"submit answered {reply.status_code}: {reply.json}")
    counter = SuccessCounter(redis)
    command = [str(BIN / "celery"), "-A", "worker:celery_app", "worker", *options, "-Q", queue]
    command += ["-l", "WARNING", "--without-gossip", "--without-mingle", "-n", f"{log.stem}@%h"]
    worker = Process(command, log, errand_env(redis.url, **SETTINGS))
    worker.start()
    try:
        assert worker.proc is not None
        memory = PeakRss(worker.proc.pid)
        wait_for(lambda: counter.count >= 1, 60, 0.005)
        first = time.monotonic()
        last = counter.wait(n, 600)
        peak = memory.stop()
    finally:
        worker.stop()
        counter.pubsub.close()
    return {"jobs_per_s": round((n - 1) / (last - first), 1), "rss_mb": peak}


def with_ratios(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    base = results["prefork"]
    for figures in results.values():
        figures["throughput_vs_prefork"] = round(figures["jobs_per_s"] / base["jobs_per_s"], 2)
        figures["rss_vs_prefork"] = round(figures["rss_mb"] / base["rss_mb"], 2)
    return results


def pools(concurrency: int) -> dict[str, list[str]]:
    c = str(concurrency)
    return {
        "prefork": ["-P", "prefork", "-c", c],
        "threads": ["-P", "threads", "-c", c],
        "gevent": ["-P", "gevent", "-c", c],
        "solo": ["-P", "solo"],
        "prefork_autoscale": ["-P", "prefork", f"--autoscale={c},1"],
    }


def rounds_for(ms: float) -> int:
    """SHA-256 rounds that take about ``ms`` milliseconds here, measured now."""
    started = time.perf_counter()
    crunch(100_000)
    per_round = (time.perf_counter() - started) / 100_000
    return max(1, int(ms / 1000 / per_round))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--io-concurrency", type=int, default=32)
    parser.add_argument("--cpu-jobs", type=int, default=200)
    parser.add_argument("--cpu-ms", type=float, default=20)
    parser.add_argument("--io-jobs", type=int, default=200)
    parser.add_argument("--io-delay", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="errand-pools-"))
    rounds = rounds_for(args.cpu_ms)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()},
        "settings": {**vars(args), "cpu_rounds": rounds},
    }
    redis = RedisServer(work / "redis")
    redis.start()
    server = slow_server(args.io_delay)
    try:
        client = make_app(redis.url, **SETTINGS).test_client()
        cpu_job = {"task": "bench.cpu", "params": {"rounds": rounds}}
        io_job = {"task": "bench.io", "params": {"url": f"http://127.0.0.1:{server.server_port}/"}}
        loads = [
            ("cpu", cpu_job, args.cpu_jobs, "cpu", pools(args.concurrency)),
            ("io", io_job, args.io_jobs, "io", pools(args.concurrency)),
        ]
        high = pools(args.io_concurrency)
        loads.append(
            ("io_high", io_job, args.io_jobs * 2, "io",
             {name: high[name] for name in ("prefork", "threads", "gevent")}),
        )  # fmt: skip
        for name, job, n, queue, configs in loads:
            rounds = []
            for round_ in range(args.rounds):
                results = {}
                for pool, options in configs.items():
                    print(f"{name} {round_ + 1}: {pool} {' '.join(options)} ...", file=sys.stderr)
                    log = work / f"{name}-{pool}-{round_}.log"
                    results[pool] = drain(redis, client, job, n, options, queue, log)
                rounds.append(with_ratios(results))
            report[name] = {
                pool: {k: statistics.median(r[pool][k] for r in rounds) for k in rounds[0][pool]}
                for pool in configs
            }  # each figure the median of the rounds; each ratio taken inside its round
    finally:
        server.shutdown()
        redis.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
