"""A rolling restart under steady load fails no request and loses or doubles no job.

Two API instances (gunicorn, on 127.0.0.2 and 127.0.0.3) and two workers share a
private Redis. Clients submit and read steadily, on fresh and on kept-alive
connections, through both addresses, while each API is reloaded by HUP, then
stopped and started behind a modelled load balancer (README, Deploying), and then
each worker is replaced (the new one started, the old one sent SIGTERM, with
the default WORKER_SHUTDOWN_GRACE). bench/rolling.py runs the same with more load.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.load import (
    Traffic,
    address,
    final_states,
    reload_api,
    replace_worker,
    restart_api,
    run_counts,
)
from tests.support import Api, RedisServer, Worker, errand_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

HOSTS = ("127.0.0.2", "127.0.0.3")


@contextlib.contextmanager
def fleet(tmp_path: Path) -> Iterator[tuple[RedisServer, list[Api], list[Worker], dict[str, str]]]:
    """Redis, an API on each of HOSTS and two workers; every process stopped afterwards."""
    with contextlib.ExitStack() as stack:
        server = RedisServer(tmp_path / "redis")
        server.start()
        stack.callback(server.stop)
        env = errand_env(server.url)
        apis = []
        for n, host in enumerate(HOSTS):
            api = Api(env, tmp_path / f"api{n}.log", workers=2, host=host)
            stack.enter_context(api)
            apis.append(api)
        workers: list[Worker] = []
        stack.callback(lambda: [w.stop() for w in workers])
        for n in range(2):
            worker = Worker(env, tmp_path / f"worker{n}.log", f"w{n}")
            worker.start()
            workers.append(worker)
        yield server, apis, workers, env


def test_rolling_restart_fails_no_request(tmp_path: Path) -> None:
    with fleet(tmp_path) as (server, apis, workers, env):
        both = [address(api) for api in apis]
        # Two clients on fresh connections, two keeping theirs alive, all across both APIs.
        traffic = Traffic([(False, both), (False, both[::-1]), (True, both), (True, both[::-1])])
        traffic.pause = 0.05
        traffic.start()
        try:
            time.sleep(1)
            for api in apis:
                logged = reload_api(api)
                # The old workers served on until every new one had loaded the app.
                lines = [line for line in logged.splitlines() if b"Worker " in line]
                last_ready = max(i for i, line in enumerate(lines) if b"Worker ready" in line)
                first_exit = min(i for i, line in enumerate(lines) if b"Worker exiting" in line)
                assert last_ready < first_exit, logged.decode(errors="replace")
                time.sleep(0.5)
            for api in apis:
                restart_api(api, traffic)
                time.sleep(0.5)
            stops = []
            for n in range(2):
                new = Worker(env, tmp_path / f"worker{n}b.log", f"w{n}b")
                stops.append(round(replace_worker(workers[n], new), 1))
                workers.append(new)
            time.sleep(1)
        finally:
            traffic.stop()

        report = traffic.report()
        errors = {a: r["errors"] for a, r in report.items() if r["errors"]}
        assert not errors, report
        answers = {k for r in report.values() for k in r["answers"]}
        assert answers <= {"POST 202", "GET 200", "POST 429"}, report
        ids = list(traffic.accepted)
        assert len(ids) > 50, report  # the load was steady across the restarts
        states = final_states(apis[0], ids, timeout=60)
        assert states == {"SUCCESS": len(ids)}, states
        runs = run_counts(server.client(), ids)
        assert runs == {1: len(ids)}, runs  # none lost, none run twice
        print(f"rolling restart: {traffic.requests()} requests, {len(ids)} jobs, {report}")
        print(f"rolling restart: seconds from each worker's SIGTERM to its exit: {stops}")
