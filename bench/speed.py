"""Errand's speed against the Flask docs' Celery recipe and a bare Flask route, in one run.

    .venv/bin/python bench/speed.py [--seconds 5] [--rounds 2] [--connections 16]
                                    [--workers 4] [--worker-class gevent] [--jobs 2000]

Starts a private Redis, five gunicorn servers with the same settings (Errand
with API keys, rate limits and the in-flight cap on, with limits set high so
they are counted and never refuse; the recipe, ``bench/recipe.py``; a bare
Flask route, ``bench/bare.py``; the two floors), and Celery workers; drives the HTTP routes with
wrk (installed with apt-get when missing) and prints one JSON report:

- ``http``: requests/s, p50 and p99 of submit and status for each server, the
  median of the rounds, and Errand's ratios to the recipe and to bare Flask,
  each taken inside the same round (their median, and each round's); and to
  the floor (``bench/floor.py``: one Redis round trip in a bare WSGI callable,
  no framework), the cost of a round trip being the part of the gap to bare
  Flask that no Errand code can remove; and to the scripts' floor
  (``bench/scripts_floor.py``: Errand's own submit or status script in a bare
  WSGI callable), what is left being Errand's own Python;
- ``drain``: jobs per second a worker drains when they were submitted over HTTP
  to Errand, against the same jobs sent with bare ``apply_async`` to a bare
  Celery worker with Errand's delivery settings (``bench/bare_celery.py``);
- ``round_trip``: submit, then the result of a no-op job, p50 and p99, against
  bare ``delay().get()``;
- ``redis``: Redis commands per submit and per status read (``INFO
  commandstats``, scripts' own commands included), and the RSS of each API
  worker process.

The machine is shared and the client runs on it too: read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store.apikeys import create_key
from app.worker import messages
from tests.support import BIN, Api, Process, RedisServer, errand_env, wait_for

NOOP = {"task": "bench.noop", "params": {}}
HIGH = "1000000000 per second"  # counted, never reached


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk with apt-get ...", file=sys.stderr)
    # Its output on stderr: stdout is the JSON report.
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=sys.stderr)
    return shutil.which("wrk") or sys.exit("wrk could not be installed")


def wrk(
    tool: str, url: str, seconds: float, connections: int, work: Path, method: str = "GET",
    body: str = "", headers: dict[str, str] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Requests/s of 2xx answers, p50 and p99 in ms, and the share of non-2xx answers."""
    script = work / f"wrk-{abs(hash((url, method, body)))}.lua"
    lines = [f'wrk.method = "{method}"', f"wrk.body = {json.dumps(body)}"]
    for name, value in (headers or {}).items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    script.write_text("\n".join(lines) + "\n")
    threads = max(1, min(2, connections))
    out = subprocess.run(
        [tool, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad[1]) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    good = rate * (total - min(total, failed)) / total if total else 0.0
    return {
        "rps": round(good, 1),
        "p50_ms": _latency(out, "50"),
        "p99_ms": _latency(out, "99"),
        "failed_share": round(failed / total, 4) if total else 1.0,
    }


def _latency(out: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
    return round(float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)


def http_call(port: int, method: str, path: str, body: Any = None, key: str = "") -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    connection.request(method, path, json.dumps(body) if body is not None else None, headers)
    reply = connection.getresponse()
    data = json.loads(reply.read() or b"null")
    connection.close()
    return reply.status, data


def redis_client(url: str) -> Redis:
    """A client with no read timeout, for a subscriber that may wait long."""
    return Redis.from_url(url)


class SuccessCounter:
    """Counts SUCCESS results as the result store PUBLISHes them (Errand's and bare Celery's)."""

    def __init__(self, server: RedisServer) -> None:
        self.count, self.last = 0, 0.0
        self.pubsub = redis_client(server.url).pubsub()
        self.pubsub.psubscribe("celery-task-meta-*")
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        with contextlib.suppress(Exception):  # ends when its Redis stops
            for message in self.pubsub.listen():
                if message["type"] == "pmessage" and b'"status": "SUCCESS"' in message["data"]:
                    self.count += 1
                    self.last = time.monotonic()

    def wait(self, n: int, timeout: float) -> float:
        wait_for(lambda: self.count >= n, timeout, 0.01)
        return self.last


def gunicorn_pids(api: Api) -> list[int]:
    master = api.process.proc.pid if api.process.proc else 0
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers per server")
    parser.add_argument("--worker-class", default="", help="gunicorn worker class (default: ours)")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per drain measurement")
    parser.add_argument("--round-trips", type=int, default=200)
    args = parser.parse_args()
    tool = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="errand-bench-"))
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "settings": vars(args)}
    with contextlib.ExitStack() as stack:
        redis = RedisServer(work / "redis")
        bare_redis = RedisServer(work / "bare-redis")
        for server in (redis, bare_redis):
            server.start()
            stack.callback(server.stop)
        key = create_key(redis.client(), "bench")
        common = {"WEB_CONCURRENCY": str(args.workers), "TASK_MODULES": "bench.tasks"}
        if args.worker_class:
            common["GUNICORN_WORKER_CLASS"] = args.worker_class
        errand_settings = {
            **common, "AUTH_DISABLED": "false", "RATE_LIMIT_SUBMIT": HIGH,
            "RATE_LIMIT_READ": HIGH, "IN_FLIGHT_LIMIT": "1000000000",
        }  # fmt: skip
        servers = {
            "errand": Api(errand_env(redis.url, **errand_settings), work / "errand.log",
                          args.workers),
            "recipe": Api(errand_env(redis.url, **common), work / "recipe.log", args.workers,
                          target="bench.recipe:app"),
            "bare": Api(errand_env(redis.url, **common), work / "bare.log", args.workers,
                        target="bench.bare:app"),
            "floor": Api(errand_env(redis.url, **common), work / "floor.log", args.workers,
                         target="bench.floor:app"),
            "scripts": Api(errand_env(redis.url, **common), work / "scripts.log", args.workers,
                           target="bench.scripts_floor:app"),
        }  # fmt: skip
        for api in servers.values():
            stack.enter_context(api)
        report["gunicorn_worker_class"] = _worker_class(work / "errand.log")
        report["http"] = http_rounds(tool, servers, key, args, work)
        report["redis"] = redis_costs(redis, servers["errand"], key)
        report["redis"]["rss_mb_per_api_worker"] = {
            name: [rss_mb(pid) for pid in gunicorn_pids(api)] for name, api in servers.items()
        }
        report["drain"] = drain(redis, bare_redis, servers["errand"], key, args, work, stack)
        report["round_trip"] = round_trips(redis, bare_redis, servers["errand"], key, args, work,
                                           stack)  # fmt: skip
    print(json.dumps(report, indent=2))


def _worker_class(log: Path) -> str:
    found = re.search(r"Using worker: (\S+)", log.read_text())
    return found[1] if found else "?"


def http_rounds(
    tool: str, servers: dict[str, Api], key: str, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    plain = {"Content-Type": "application/json"}
    _, task = http_call(servers["errand"].port, "POST", "/api/v1/tasks", NOOP, key)
    _, added = http_call(servers["recipe"].port, "POST", "/add", {"a": 1, "b": 2})
    loads: dict[str, dict[str, tuple[str, str, str, dict[str, str]]]] = {
        "submit": {
            "errand": ("POST", "/api/v1/tasks", json.dumps(NOOP), auth),
            "recipe": ("POST", "/add", json.dumps({"a": 1, "b": 2}), plain),
            "bare": ("GET", "/ok", "", {}),
            "floor": ("GET", "/", "", {}),
            "scripts": ("POST", "/", "", {}),
        },
        "status": {
            "errand": ("GET", task["links"]["self"], "", auth),
            "recipe": ("GET", f"/result/{added['result_id']}", "", {}),
            "bare": ("GET", "/ok", "", {}),
            "floor": ("GET", "/", "", {}),
            "scripts": ("GET", "/", "", {}),
        },
    }
    rounds: list[dict[str, dict[str, dict[str, float]]]] = []
    for _ in range(args.rounds):
        this: dict[str, dict[str, dict[str, float]]] = {}
        for route, per_server in loads.items():
            for name, (method, path, body, headers) in per_server.items():
                url = f"http://127.0.0.1:{servers[name].port}{path}"
                this.setdefault(route, {})[name] = wrk(
                    tool, url, args.seconds, args.connections, work, method, body, headers
                )
        rounds.append(this)
    result: dict[str, Any] = {}
    for route in loads:
        result[route] = {
            name: {
                metric: statistics.median(r[route][name][metric] for r in rounds)
                for metric in ("rps", "p50_ms", "p99_ms", "failed_share")
            }
            for name in servers
        }
        result[route]["errand_vs_recipe"] = _median_ratio(rounds, route, "recipe")
        result[route]["errand_vs_bare"] = _median_ratio(rounds, route, "bare")
        # One Redis round trip in a bare WSGI callable: what Errand's own work is measured from.
        result[route]["errand_vs_floor"] = _median_ratio(rounds, route, "floor")
        # The same, with Errand's own script in place of the GET: what no Python can remove.
        result[route]["errand_vs_scripts_floor"] = _median_ratio(rounds, route, "scripts")
        for floor in ("floor", "scripts"):
            result[route][f"{floor}_vs_bare"] = round(
                statistics.median(r[route][floor]["rps"] / r[route]["bare"]["rps"] for r in rounds),
                3,
            )
        result[route]["per_round"] = [  # the spread says how noisy the machine was
            {other: round(r[route]["errand"]["rps"] / r[route][other]["rps"], 3)
             for other in ("recipe", "bare", "floor", "scripts")}
            for r in rounds
        ]  # fmt: skip
    return result


def _median_ratio(rounds: list[Any], route: str, other: str) -> float:
    return round(
        statistics.median(r[route]["errand"]["rps"] / r[route][other]["rps"] for r in rounds), 3
    )


def redis_costs(redis: RedisServer, api: Api, key: str, count: int = 200) -> dict[str, Any]:
    client = redis.client()
    costs: dict[str, Any] = {}
    for route in ("submit", "status"):
        _, task = http_call(api.port, "POST", "/api/v1/tasks", NOOP, key)
        client.config_resetstat()
        for _ in range(count):
            if route == "submit":
                http_call(api.port, "POST", "/api/v1/tasks", NOOP, key)
            else:
                http_call(api.port, "GET", task["links"]["self"], None, key)
        stats = client.info("commandstats")
        per = {
            name.removeprefix("cmdstat_"): round(value["calls"] / count, 2)
            for name, value in stats.items()
            if name not in {"cmdstat_config", "cmdstat_info"}
        }
        costs[f"commands_per_{route}"] = dict(sorted(per.items()))
    return costs


def drain(
    redis: RedisServer, bare_redis: RedisServer, api: Api, key: str, args: argparse.Namespace,
    work: Path, stack: contextlib.ExitStack,
) -> dict[str, Any]:  # fmt: skip
    """Jobs/s a worker drains: Errand's (submitted over HTTP) vs bare Celery's (apply_async)."""
    n = args.jobs
    threads = 8
    # The HTTP rounds left their messages in the queue (the recipe's too, which Errand's
    # worker does not know): it drains these n jobs alone.
    lists = {messages.queue_list("celery", priority) for priority in (None, *range(10))}
    redis.client().delete(*lists)

    def submit_some(share: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        body = json.dumps(NOOP)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        for _ in range(share):
            connection.request("POST", "/api/v1/tasks", body, headers)
            reply = connection.getresponse()
            reply.read()
            if reply.status != 202:
                raise RuntimeError(f"submit answered {reply.status}")
        connection.close()

    pool = [threading.Thread(target=submit_some, args=(n // threads,)) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    queued = (n // threads) * threads
    errand_rate = _drain_with(
        redis, _worker_env(redis),
        ["-A", "worker:celery_app"], queued, work / "drain-errand.log", stack,
    )  # fmt: skip
    bare_env = errand_env(bare_redis.url)
    script = (
        "import bench.bare_celery as b\n"
        f"for _ in range({queued}): b.noop.apply_async()\n"
    )  # fmt: skip
    subprocess.run([sys.executable, "-c", script], env=bare_env, check=True, timeout=300,
                   cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    bare_rate = _drain_with(
        bare_redis, bare_env, ["-A", "bench.bare_celery"], queued, work / "drain-bare.log", stack
    )
    return {
        "jobs": queued,
        "errand_jobs_per_s": round(errand_rate, 1),
        "bare_celery_jobs_per_s": round(bare_rate, 1),
        "errand_vs_bare_celery": round(errand_rate / bare_rate, 3),
    }


def _worker_env(redis: RedisServer) -> dict[str, str]:
    """Errand's worker as the bare one runs: the bench's task type, warnings only."""
    return errand_env(redis.url, TASK_MODULES="bench.tasks", LOG_LEVEL="WARNING")


def _drain_with(
    server: RedisServer, env: dict[str, str], app: list[str], n: int, log: Path,
    stack: contextlib.ExitStack,
) -> float:  # fmt: skip
    counter = SuccessCounter(server)
    command = [str(BIN / "celery"), *app, "worker", "-P", "prefork", "-c", "2", "-l", "WARNING"]
    command += ["--without-gossip", "--without-mingle", "-n", f"drain-{log.stem}@%h"]
    worker = Process(command, log, env)
    worker.start()
    stack.callback(worker.stop)
    wait_for(lambda: counter.count >= 1, 60, 0.005)
    first = time.monotonic()
    done = counter.wait(n, 600)
    worker.stop()
    return (n - 1) / (done - first)


def round_trips(
    redis: RedisServer, bare_redis: RedisServer, api: Api, key: str, args: argparse.Namespace,
    work: Path, stack: contextlib.ExitStack,
) -> dict[str, Any]:  # fmt: skip
    """One job at a time with a warm worker: submit, then its result."""
    errand_worker = Process(
        [str(BIN / "celery"), "-A", "worker:celery_app", "worker", "-P", "prefork", "-c", "2",
         "-l", "WARNING", "--without-gossip", "--without-mingle", "-n", "rt@%h"],
        work / "rt-errand.log", _worker_env(redis),
    )  # fmt: skip
    errand_worker.start()
    stack.callback(errand_worker.stop)
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    def one() -> None:
        connection.request("POST", "/api/v1/tasks", json.dumps(NOOP), headers)
        reply = connection.getresponse()
        url = json.loads(reply.read())["links"]["self"]
        while True:  # the Flask docs poll too; the live-status issue adds long-poll
            connection.request("GET", url, headers=headers)
            task = json.loads(connection.getresponse().read())
            if task["state"] == "SUCCESS":
                return
            time.sleep(0.001)

    for _ in range(5):
        one()  # warm
    errand = _timings(one, args.round_trips)
    script = (
        "import json, time, bench.bare_celery as b\n"
        "for _ in range(5): b.noop.delay().get(timeout=30)\n"
        "out = []\n"
        f"for _ in range({args.round_trips}):\n"
        "    t = time.perf_counter()\n"
        "    b.noop.delay().get(timeout=30)\n"
        "    out.append(time.perf_counter() - t)\n"
        "print(json.dumps(out))\n"
    )  # fmt: skip
    bare_env = errand_env(bare_redis.url)
    bare_worker = Process(
        [str(BIN / "celery"), "-A", "bench.bare_celery", "worker", "-P", "prefork", "-c", "2",
         "-l", "WARNING", "--without-gossip", "--without-mingle", "-n", "rt-bare@%h"],
        work / "rt-bare.log", bare_env,
    )  # fmt: skip
    bare_worker.start()
    stack.callback(bare_worker.stop)
    out = subprocess.run([sys.executable, "-c", script], env=bare_env, check=True, timeout=600,
                         capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout  # fmt: skip
    bare = _summary(json.loads(out.strip().splitlines()[-1]))
    return {
        "errand_ms": errand,
        "bare_delay_get_ms": bare,
        "p50_errand_vs_bare": round(errand["p50"] / bare["p50"], 3),
    }


def _timings(action: Callable[[], None], n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return _summary(times)


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50": round(ordered[len(ordered) // 2] * 1000, 3),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
    }


if __name__ == "__main__":
    main()
