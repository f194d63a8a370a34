"""Three simulated hosts share only a private Redis; one is lost whole under load.

Each host has its own working and temporary directories (so its own gunicorn
metrics directory), its own loopback address for its API (127.0.0.2, .3, .4),
a worker named ``worker@hostX``, and all its processes in one process group:
SIGKILL to that group takes its gunicorn master and workers and its celery
worker and pool children at once, as a machine lost would. Clients are spread
over the hosts, each sending to its own host's API only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.load import Traffic, address, final_states, run_counts
from tests.support import Api, Process, RedisServer, Worker, errand_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CONCURRENCY = 2
# What a client of a lost host may see: the connection refused or cut, never an answer.
CONNECTION_ERRORS = {
    "ConnectionRefusedError",
    "ConnectionResetError",
    "RemoteDisconnected",
    "BrokenPipeError",
    "IncompleteRead",  # an answer cut off mid-body by the kill
}


@dataclass
class Host:
    name: str
    api: Api
    worker: Worker
    group: Process  # holds the host's process group open: its pid is the group's id

    def kill(self) -> None:
        """SIGKILL every process of the host at once."""
        assert self.group.proc is not None
        os.killpg(self.group.proc.pid, signal.SIGKILL)


def live_workers(api: Api) -> set[str]:
    """The worker names ``GET /api/v1/workers`` lists (their heartbeats in Redis)."""
    status, _, body = api.call("GET", "/api/v1/workers")
    assert status == 200, body
    return {worker["name"] for worker in body["items"]}


@contextlib.contextmanager
def hosts(tmp_path: Path, count: int) -> Iterator[tuple[RedisServer, list[Host]]]:
    with contextlib.ExitStack() as stack:
        server = RedisServer(tmp_path / "redis")
        server.start()
        stack.callback(server.stop)
        found = []
        for n in range(count):
            name = f"host{chr(ord('A') + n)}"
            home = tmp_path / name
            (home / "tmp").mkdir(parents=True)
            # errand_env's VISIBILITY_TIMEOUT (4 s, the least allowed): redelivery in seconds.
            env = errand_env(server.url, TMPDIR=str(home / "tmp"))
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each host makes its own
            group = Process(
                [sys.executable, "-c", "import signal; signal.pause()"], home / "group.log"
            )
            group.group = 0  # a group of its own, in this session: the host's others may join it
            group.start()
            stack.callback(group.stop)
            assert group.proc is not None
            api = Api(env, home / "api.log", workers=2, host=f"127.0.0.{n + 2}")
            worker = Worker(env, home / "worker.log", "worker", CONCURRENCY, node=f"worker@{name}")
            for proc in (api.process, worker):
                proc.cwd, proc.group = home, group.proc.pid
            stack.enter_context(api)
            worker.start()
            stack.callback(worker.stop)
            found.append(Host(name, api, worker, group))
        yield server, found


def test_a_whole_host_lost_under_load_loses_no_accepted_job(tmp_path: Path) -> None:
    with hosts(tmp_path, 3) as (server, fleet):
        lost = fleet[1]
        plan = [(keep, [address(host.api)]) for host in fleet for keep in (False, True)]
        traffic = Traffic(plan, job_seconds=0.1)
        traffic.pause = 0.05
        assert live_workers(fleet[0].api) == {f"worker@{host.name}" for host in fleet}
        traffic.start()
        try:
            time.sleep(3)
            lost.kill()
            killed_at = time.monotonic()
            time.sleep(4)
        finally:
            traffic.stop()

        for host in fleet:
            tally = traffic.tally(address(host.api))
            answers = set(tally.answers)
            assert answers <= {"POST 202", "GET 200", "POST 429"}, (host.name, tally)
            if host is lost:
                assert set(tally.errors) <= CONNECTION_ERRORS, tally.errors
                assert tally.errors, "the lost host's clients saw no error"
                assert min(tally.error_times) >= killed_at - 0.5, "errors before the kill"
            else:
                assert not tally.errors, (host.name, tally.errors)  # the others keep serving
        ids = list(traffic.accepted)
        by_lost = [i for i, a in traffic.accepted.items() if a == address(lost.api)]
        assert by_lost and len(ids) > len(by_lost), traffic.report()
        states = final_states(fleet[0].api, ids, timeout=90)
        assert states == {"SUCCESS": len(ids)}, states
        runs = run_counts(server.client(), ids)
        assert runs.get(0, 0) == 0, runs  # each ran at least once
        # Only what the lost worker held can run again: running or prefetched, plus one
        # finished whose acknowledgement had not reached Redis.
        assert sum(n for times, n in runs.items() if times > 1) <= 2 * CONCURRENCY + 1, runs
        # The lost host's heartbeat ages out; the others' names are their own.
        others = {f"worker@{host.name}" for host in fleet if host is not lost}
        wait_for(lambda: live_workers(fleet[0].api) == others, 15, 0.2)
        print(f"host lost: {len(ids)} jobs ({len(by_lost)} by the lost host), runs {dict(runs)}")
