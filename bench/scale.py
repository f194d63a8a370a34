"""The inputs of docs/scaling.md: CPU per submit, per status read and per job, in one run.

    .venv/bin/python bench/scale.py [--seconds 10] [--connections 8] [--jobs 2000]
                                    [--no-rabbitmq]

Starts a private Redis, one API process (gunicorn with one worker of its default
class, gevent; API keys, rate limits and the in-flight cap on, with limits set high
so they are counted and never refuse, as bench/speed.py sets them) and Celery
workers, all at the default ``LOG_LEVEL`` (INFO: an access log line per request, the
worker's lines per job), and prints one JSON report:

- ``api``: for submits (``bench.noop``) and for status reads (of a finished task),
  driven with wrk: CPU seconds of the API process per request (utime + stime from
  /proc, before and after, over the requests wrk completed); Redis CPU per request
  (``INFO cpu``: the whole server and its main thread, which runs every command and
  script) and Redis commands per request (``INFO commandstats``, scripts' own
  commands included), with the scripts' own time (``usec_per_call``);
- ``worker``: for prefork and threads (``-c 2``), a worker draining jobs queued
  beforehand while it was stopped (SIGSTOP): CPU seconds of all its processes per
  job, Redis CPU and commands per job;
- ``rabbitmq`` (unless ``--no-rabbitmq``): the same submit and prefork drain with
  ``CELERY_BROKER_URL`` on the machine's RabbitMQ (a queue of the run's own, deleted
  afterwards) and Redis for records and results: the two-step submit; the broker's
  own CPU (``beam.smp``) per request where it can be read, from a broker others may
  be using too;
- ``plan``: docs/scaling.md's table worked out from these figures, with
  ``--reads-per-submit`` status reads per submit and cores run at ``--utilisation``;
- ``machine``: cores, CPU model, Python, Redis, RabbitMQ, Celery and gunicorn versions.

The client (wrk) runs on the same machine, so the request rates are the machine's,
not the API's; CPU per request is read per process and holds on other machines as an
estimate of the same order (another CPU model scales every figure alike).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kombu import Connection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store import keys
from app.store.apikeys import create_key
from bench.pools import processes
from bench.speed import HIGH, NOOP, _worker_class, ensure_wrk, gunicorn_pids, http_call
from tests.support import Api, RedisServer, Worker, errand_env, wait_for

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
TICK = os.sysconf("SC_CLK_TCK")
API_SETTINGS = {
    "TASK_MODULES": "bench.tasks",
    "AUTH_DISABLED": "false",
    "RATE_LIMIT_SUBMIT": HIGH,
    "RATE_LIMIT_READ": HIGH,
    "IN_FLIGHT_LIMIT": "1000000000",
    "VISIBILITY_TIMEOUT": "60",
}


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of live processes (every thread), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / TICK


class RedisMeter:
    """Redis CPU and commands between ``start`` and ``stop`` (INFO cpu, INFO commandstats)."""

    def __init__(self, server: RedisServer) -> None:
        self.client = server.client()

    def cpu(self) -> tuple[float, float]:
        info = self.client.info("cpu")
        total = info["used_cpu_sys"] + info["used_cpu_user"]
        return total, info["used_cpu_sys_main_thread"] + info["used_cpu_user_main_thread"]

    def start(self) -> None:
        self.client.config_resetstat()
        self.before = self.cpu()

    def stop(self, count: int) -> dict[str, Any]:
        after = self.cpu()
        stats = self.client.info("commandstats")
        commands = {
            name.removeprefix("cmdstat_"): value
            for name, value in stats.items()
            if not name.startswith(("cmdstat_config", "cmdstat_info"))  # the meter's own
        }
        return {
            "cpu_ms": round((after[0] - self.before[0]) / count * 1000, 4),
            "main_thread_cpu_ms": round((after[1] - self.before[1]) / count * 1000, 4),
            "commands": {
                name: round(value["calls"] / count, 2) for name, value in sorted(commands.items())
            },
            "command_usec_per_call": {
                name: value["usec_per_call"]
                for name, value in sorted(commands.items())
                if value["calls"] >= count / 2
            },
        }


def drive(
    tool: str, api: Api, key: str, route: str, path: str, meter: RedisMeter, args: Any, work: Path,
    broker_pid: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """One wrk run against one API process; CPU of it, of Redis (and the broker) per request."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    method, body = ("POST", json.dumps(NOOP)) if route == "submit" else ("GET", "")
    pid = gunicorn_pids(api)[0]
    log = work / f"wrk-{route}-{api.port}.txt"
    broker_before = cpu_seconds([broker_pid]) if broker_pid else 0.0
    meter.start()
    api_before, started = cpu_seconds([pid]), time.monotonic()
    result = wrk(
        tool, f"http://127.0.0.1:{api.port}{path}", args.seconds, args.connections, work, method,
        body, headers, log,
    )  # fmt: skip
    api_cpu, wall = cpu_seconds([pid]) - api_before, time.monotonic() - started
    n = result["requests"]
    figures: dict[str, Any] = {
        "requests": n,
        "rps": result["rps"],
        "failed_share": result["failed_share"],
        "api_cpu_ms": round(api_cpu / n * 1000, 4),
        "api_process_busy": round(api_cpu / wall, 2),
        "redis": meter.stop(n),
    }
    if broker_pid:
        broker = cpu_seconds([broker_pid]) - broker_before
        figures["broker_cpu_ms_shared"] = round(broker / n * 1000, 4)
    return figures


def wrk(
    tool: str, url: str, seconds: float, connections: int, work: Path, method: str, body: str,
    headers: dict[str, str], log: Path,
) -> dict[str, Any]:  # fmt: skip
    """One wrk run: requests completed (the divisor of every cost), requests/s, failed share."""
    script = work / f"{log.stem}.lua"
    lines = [f'wrk.method = "{method}"', f"wrk.body = {json.dumps(body)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [tool, "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    log.write_text(out)
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad[1]) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    return {"requests": total, "rps": round(rate, 1), "failed_share": round(failed / total, 4)}


def queued(meter: RedisMeter) -> int:
    return int(meter.client.zcard(keys.state_index("PENDING")))


def succeeded(meter: RedisMeter) -> int:
    return int(meter.client.zcard(keys.state_index("SUCCESS")))


def drain(worker: Worker, meter: RedisMeter, jobs: int, broker_pid: int = 0) -> dict[str, Any]:
    """Let a stopped worker (SIGSTOP) drain the ``jobs`` queued; CPU of all its processes."""
    assert worker.proc is not None
    done_before = succeeded(meter)
    tree = processes(worker.proc.pid)
    broker_before = cpu_seconds([broker_pid]) if broker_pid else 0.0
    meter.start()
    before, started = cpu_seconds(tree), time.monotonic()
    worker.signal(signal.SIGCONT)
    wait_for(lambda: succeeded(meter) - done_before >= jobs, 600, 0.1)
    wall = time.monotonic() - started
    used = cpu_seconds(tree) - before
    figures: dict[str, Any] = {
        "jobs": jobs,
        "jobs_per_s": round(jobs / wall, 1),
        "worker_processes": len(tree),
        "worker_cpu_ms": round(used / jobs * 1000, 4),
        "redis": meter.stop(jobs),
    }
    if broker_pid:
        figures["broker_cpu_ms_shared"] = round(
            (cpu_seconds([broker_pid]) - broker_before) / jobs * 1000, 4
        )
    return figures


def stopped_worker(
    env: dict[str, str], work: Path, pool: str, stack: contextlib.ExitStack
) -> Worker:
    """A ready worker, stopped (SIGSTOP) so that jobs wait for it; stopped for good at the end."""
    worker = Worker(env, work / f"worker-{pool}-{uuid.uuid4().hex[:6]}.log", f"scale-{pool}",
                    concurrency=2, pool=pool)  # fmt: skip
    worker.start()
    stack.callback(worker.stop)
    time.sleep(1)  # past its start-up work (first heartbeat, lease thread)
    worker.signal(signal.SIGSTOP)
    return worker


def submit_many(api: Api, key: str, n: int, clients: int = 4) -> None:
    """Queue ``n`` no-op jobs over HTTP (not measured)."""

    def some(share: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        for _ in range(share):
            connection.request("POST", "/api/v1/tasks", json.dumps(NOOP), headers)
            reply = connection.getresponse()
            reply.read()
            if reply.status != 202:
                raise RuntimeError(f"submit answered {reply.status}")
        connection.close()

    pool = [threading.Thread(target=some, args=(n // clients,)) for _ in range(clients)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def finished_task(api: Api, key: str, meter: RedisMeter, worker: Worker) -> str:
    """The status path of a SUCCESS task (a status read of it reads the result too)."""
    _, task = http_call(api.port, "POST", "/api/v1/tasks", NOOP, key)
    worker.signal(signal.SIGCONT)
    wait_for(lambda: succeeded(meter) >= 1, 30)
    worker.signal(signal.SIGSTOP)
    return str(task["links"]["self"])


def broker_pid() -> int:
    """RabbitMQ's Erlang VM, when it runs here and /proc shows it."""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "beam.smp":
                return int(entry.name)
    return 0


def rabbitmq_run(
    tool: str, redis: RedisServer, key: str, meter: RedisMeter, args: Any, work: Path,
    stack: contextlib.ExitStack,
) -> dict[str, Any]:  # fmt: skip
    queue = f"errand-scale-{uuid.uuid4().hex[:12]}"
    stack.callback(delete_queue_and_exchange, queue)
    settings = {**API_SETTINGS, "CELERY_BROKER_URL": RABBITMQ, "TASK_QUEUE": queue}
    env = errand_env(redis.url, **settings)
    worker = stopped_worker(env, work, "prefork", stack)
    api = stack.enter_context(Api(env, work / "api-rabbitmq.log", 1))
    beam = broker_pid()
    with Connection(RABBITMQ, connect_timeout=5) as connection:
        version = connection.default_channel.connection.server_properties.get("version")
    pending = queued(meter)
    result = {
        "version": version.decode() if isinstance(version, bytes) else version,
        "queue": queue,
        "submit": drive(tool, api, key, "submit", "/api/v1/tasks", meter, args, work, beam),
    }
    result["prefork"] = drain(worker, meter, queued(meter) - pending, beam)
    return result


def delete_queue_and_exchange(name: str) -> None:
    """Leave the shared RabbitMQ as it was: Celery declared both under the queue's name."""
    with Connection(RABBITMQ, connect_timeout=5) as connection:
        channel = connection.default_channel
        channel.queue_delete(name)
        channel.exchange_delete(name)


def machine(redis: RedisServer) -> dict[str, Any]:
    import celery
    import gunicorn

    model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu_model": model[1] if model else platform.processor(),
        "python": platform.python_version(),
        "redis": redis.client().info("server")["redis_version"],
        "celery": celery.__version__,
        "gunicorn": gunicorn.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def plan(report: dict[str, Any], reads: float, utilisation: float) -> dict[str, Any]:
    """docs/scaling.md's table from this run's figures: cores and Redis primaries per rate.

    API cores = S x (submit + reads x status) / u; worker cores = S x job / u; Redis
    primaries = S x (submit + reads x status + job, Redis main thread) / u, one core each.
    """
    api, job = report["api"], report["worker"]["prefork"]
    api_ms = api["submit"]["api_cpu_ms"] + reads * api["status"]["api_cpu_ms"]
    redis_ms = (
        api["submit"]["redis"]["main_thread_cpu_ms"]
        + reads * api["status"]["redis"]["main_thread_cpu_ms"]
        + job["redis"]["main_thread_cpu_ms"]
    )
    rows = {}
    for rate in (1_000, 10_000, 50_000):
        rows[f"{rate}_submits_per_s"] = {
            "api_cores": round(rate * api_ms / 1000 / utilisation, 1),
            "worker_cores_noop": round(rate * job["worker_cpu_ms"] / 1000 / utilisation, 1),
            "redis_primaries": round(rate * redis_ms / 1000 / utilisation, 2),
        }
    return {
        "reads_per_submit": reads,
        "utilisation": utilisation,
        "api_cpu_ms_per_submit_with_reads": round(api_ms, 4),
        "redis_main_thread_ms_per_submit_with_reads_and_job": round(redis_ms, 4),
        **rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs the threads worker drains")
    parser.add_argument("--no-rabbitmq", action="store_true")
    parser.add_argument("--reads-per-submit", type=float, default=5, help="for the plan")
    parser.add_argument("--utilisation", type=float, default=0.6, help="for the plan")
    args = parser.parse_args()
    tool = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="errand-scale-"))
    with contextlib.ExitStack() as stack:
        redis = RedisServer(work / "redis")
        redis.start()
        stack.callback(redis.stop)
        report: dict[str, Any] = {"machine": machine(redis), "settings": vars(args)}
        meter = RedisMeter(redis)
        key = create_key(redis.client(), "bench")
        env = errand_env(redis.url, **API_SETTINGS)
        prefork = stopped_worker(env, work, "prefork", stack)
        api = stack.enter_context(Api(env, work / "api.log", 1))
        report["machine"]["gunicorn_worker_class"] = _worker_class(work / "api.log")
        status_path = finished_task(api, key, meter, prefork)
        report["api"] = {
            "submit": drive(tool, api, key, "submit", "/api/v1/tasks", meter, args, work),
            "status": drive(tool, api, key, "status", status_path, meter, args, work),
        }
        report["worker"] = {"prefork": drain(prefork, meter, queued(meter))}
        prefork.stop()
        threads = stopped_worker(env, work, "threads", stack)
        submit_many(api, key, args.jobs)
        report["worker"]["threads"] = drain(threads, meter, queued(meter))
        threads.stop()
        report["plan"] = plan(report, args.reads_per_submit, args.utilisation)
        if not args.no_rabbitmq:
            report["rabbitmq"] = rabbitmq_run(tool, redis, key, meter, args, work, stack)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
