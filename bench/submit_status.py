"""Errand's submit and status routes against the Flask docs' Celery recipe, in one run.

    .venv/bin/python bench/submit_status.py [--seconds 5] [--threads 8] [--rounds 2]

Starts a private Redis and three gunicorn servers (4 workers each): Errand with
API keys and rate limits on, Errand with both off, and the recipe
(``bench/recipe.py``). No Celery worker runs: this measures the API's own work
(a submit hands the job to Redis; a status read answers PENDING). Each route is
loaded in turn, for the same time with the same client threads, round after
round, and the report gives requests per second and Errand's ratio to the
recipe. The machine is shared and the client runs on it too: read the ratios.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store.apikeys import create_key
from tests.support import Api, RedisServer, errand_env

JOB = json.dumps({"task": "demo.progress", "params": {"steps": 1, "delay": 0}})


def load(port: int, method: str, paths: list[str], body: str, headers: dict[str, str],
         seconds: float, threads: int) -> float:  # fmt: skip
    """Requests per second answered with a 2xx, over ``seconds``, from ``threads`` clients."""
    done = [0] * threads
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        i = 0
        while time.monotonic() < stop:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request(method, paths[i % len(paths)], body=body or None, headers=headers)
            if connection.getresponse().status < 300:
                done[n] += 1
            connection.close()
            i += 1

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="errand-bench-"))
    redis = RedisServer(work / "redis")
    redis.start()
    key = create_key(redis.client(), "bench")
    limited = {
        "AUTH_DISABLED": "false",
        "RATE_LIMIT_SUBMIT": "1000000 per second",  # counted, never reached
        "RATE_LIMIT_READ": "1000000 per second",
        "IN_FLIGHT_LIMIT": "10000000",
    }
    unlimited = {"RATE_LIMIT_SUBMIT": "", "RATE_LIMIT_READ": ""}
    servers = {
        "errand (keys, limits)": Api(errand_env(redis.url, **limited), work / "k.log", workers=4),
        "errand (no keys)": Api(errand_env(redis.url, **unlimited), work / "o.log", workers=4),
    }
    servers["flask recipe"] = Api(
        errand_env(redis.url), work / "recipe.log", workers=4, target="bench.recipe:app"
    )
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    plain = {"Content-Type": "application/json"}
    try:
        for server in servers.values():
            server.__enter__()
        # Ids to read: one pending task made through each server.
        reads: dict[str, list[str]] = {}
        for name, server in servers.items():
            headers = auth if "keys," in name else plain
            if name == "flask recipe":
                _, _, body = server.call("POST", "/add", {"a": 1, "b": 2})
                reads[name] = [f"/result/{body['result_id']}"]
            else:
                _, _, body = server.call("POST", "/api/v1/tasks", json.loads(JOB), key=key)
                reads[name] = [body["links"]["self"]]
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, server in servers.items():
                headers = auth if "keys," in name else plain
                submit_path, body = (
                    ("/add", json.dumps({"a": 1, "b": 2}))
                    if name == "flask recipe"
                    else ("/api/v1/tasks", JOB)
                )
                results.setdefault((name, "submit"), []).append(
                    load(
                        server.port,
                        "POST",
                        [submit_path],
                        body,
                        headers,
                        args.seconds,
                        args.threads,
                    )
                )
                results.setdefault((name, "status"), []).append(
                    load(server.port, "GET", reads[name], "", headers, args.seconds, args.threads)
                )
    finally:
        for server in servers.values():
            server.__exit__()
        redis.stop()
    print(f"{'server':24} {'route':7} {'req/s (median)':>15} {'vs recipe':>10}")
    for route in ("submit", "status"):
        base = statistics.median(results[("flask recipe", route)])
        for name in servers:
            rate = statistics.median(results[(name, route)])
            print(f"{name:24} {route:7} {rate:15.0f} {rate / base:10.2f}")


if __name__ == "__main__":
    main()
