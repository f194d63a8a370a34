"""Steady clients for the rolling-restart and host-loss checks (tests and bench/rolling.py).

Each client is a thread that submits ``test.sleep`` jobs (which count their runs in
Redis) and reads each one's status back, over and over, on fresh connections or on
one kept-alive connection per API address, until stopped. A client honours a 429's
``Retry-After`` and sends the same request again (same ``Idempotency-Key``); every
other answer, and every connection error, is counted where it happened.

``Traffic.drain`` models a load balancer taking an address out of rotation: no new
request goes there, and it returns once the requests already sent there are answered.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from select import select
from typing import Any

import redis

from app.jobs.resource import FINAL_STATES
from tests.support import Api, Worker, wait_for

Address = tuple[str, int]


@dataclass
class Tally:
    """What one API address answered, as the clients saw it."""

    answers: Counter[str] = field(default_factory=Counter)  # "POST 202", "GET 200", ...
    errors: Counter[str] = field(default_factory=Counter)  # connection errors by kind
    error_times: list[float] = field(default_factory=list)  # time.monotonic() of each
    slowest: float = 0.0  # seconds, the longest a request took to be answered


class Traffic:
    """Client threads spread over API addresses; see the module docstring.

    ``plan`` lists, per client, whether it keeps its connections alive and the
    addresses it sends to, in turn (those not drained).
    """

    def __init__(
        self,
        plan: Iterable[tuple[bool, list[Address]]],
        job_seconds: float = 0.05,
        pause: float = 0.0,
    ) -> None:
        self.plan = list(plan)
        self.job_seconds, self.pause = job_seconds, pause
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.drained: set[Address] = set()
        self.in_flight: Counter[Address] = Counter()
        self.tallies: dict[Address, Tally] = {}
        self.accepted: dict[str, Address] = {}  # task id -> the address that answered 202
        self.honoured_429 = 0
        self.threads = [
            threading.Thread(target=self.client, args=(keep, targets), daemon=True)
            for keep, targets in self.plan
        ]

    # -- control ------------------------------------------------------------------------------

    def start(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def drain(self, address: Address, timeout: float = 15) -> None:
        """Send nothing more to ``address``; return once what was sent there is answered."""
        with self.lock:
            self.drained.add(address)
        deadline = time.monotonic() + timeout
        while self.in_flight[address] and time.monotonic() < deadline:
            time.sleep(0.01)

    def restore(self, address: Address) -> None:
        with self.lock:
            self.drained.discard(address)

    def requests(self) -> int:
        return sum(sum(t.answers.values()) + sum(t.errors.values()) for t in self.tallies.values())

    def report(self) -> dict[str, Any]:
        """Requests, answers that were not 2xx, and connection errors, per address."""
        return {
            f"{host}:{port}": {
                "answers": dict(t.answers),
                "errors": dict(t.errors),
                "slowest_s": round(t.slowest, 2),
            }
            for (host, port), t in sorted(self.tallies.items())
        }

    def tally(self, address: Address) -> Tally:
        with self.lock:
            return self.tallies.setdefault(address, Tally())

    # -- one client ---------------------------------------------------------------------------

    def client(self, keep_alive: bool, targets: list[Address]) -> None:
        connections: dict[Address, http.client.HTTPConnection] = {}
        turn = 0
        while not self.stopping.is_set():
            with self.lock:
                live = [a for a in targets if a not in self.drained]
                for address in [a for a in connections if a in self.drained]:
                    connections.pop(address).close()  # a balancer lets go of a drained backend
                address = live[turn % len(live)] if live else None
                if address is not None:
                    self.in_flight[address] += 1
            turn += 1
            if address is None:
                time.sleep(0.01)
                continue
            try:
                self.round(address, connections, keep_alive)
            finally:
                with self.lock:
                    self.in_flight[address] -= 1
            if self.pause:
                time.sleep(self.pause)
        for connection in connections.values():
            connection.close()

    def round(
        self, address: Address, connections: dict[Address, http.client.HTTPConnection], keep: bool
    ) -> None:
        """One submit and one read of what it made, on ``address``."""
        body = {"task": "test.sleep", "params": {"seconds": self.job_seconds}}
        headers = {"Idempotency-Key": f'"{uuid.uuid4()}"'}
        status, reply = self.call(
            address, connections, keep, "POST", "/api/v1/tasks", body, headers
        )
        if status != 202:
            return
        with self.lock:
            self.accepted[reply["id"]] = address
        self.call(address, connections, keep, "GET", f"/api/v1/tasks/{reply['id']}")

    def call(
        self,
        address: Address,
        connections: dict[Address, http.client.HTTPConnection],
        keep: bool,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request (again after each honoured 429); (status, parsed body), 0 on an error."""
        tally = self.tally(address)
        data = json.dumps(body) if body is not None else None
        sent = {"Content-Type": "application/json", **(headers or {})}
        while True:
            connection = connections.pop(address, None) if keep else None
            if connection is not None and dropped(connection):
                connection.close()  # closed by the server while idle: any client checks this
                connection = None
            connection = connection or http.client.HTTPConnection(*address, timeout=15)
            began = time.monotonic()
            try:
                connection.request(method, path, data, sent)
                response = connection.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                with self.lock:
                    tally.errors[type(error).__name__] += 1
                    tally.error_times.append(time.monotonic())
                time.sleep(0.05)
                return 0, None
            if keep and not response.will_close:
                connections[address] = connection
            else:
                connection.close()
            with self.lock:
                tally.answers[f"{method} {response.status}"] += 1
                tally.slowest = max(tally.slowest, time.monotonic() - began)
            if response.status == 429 and not self.stopping.is_set():
                with self.lock:
                    self.honoured_429 += 1
                time.sleep(min(float(response.getheader("Retry-After") or 1), 2))
                continue
            return response.status, json.loads(raw) if raw else None


def dropped(connection: http.client.HTTPConnection) -> bool:
    """True if an idle kept-alive connection was closed by the other end (as urllib3 checks)."""
    sock = connection.sock
    if sock is None:
        return True
    with contextlib.suppress(OSError, ValueError):
        return bool(select([sock], [], [], 0)[0])
    return True


# -- what became of the jobs ---------------------------------------------------------------------


def final_states(api: Api, ids: Iterable[str], timeout: float) -> Counter[str]:
    """Poll every job through ``api`` (a tests.support.Api) until each one is final."""
    pending, states = set(ids), Counter[str]()
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for task_id in list(pending):
            status, _, task = api.call("GET", f"/api/v1/tasks/{task_id}")
            if status == 200 and task["state"] in FINAL_STATES:
                states[task["state"]] += 1
                pending.discard(task_id)
        if pending:
            time.sleep(0.2)
    states["not final"] = len(pending)
    return +states


def run_counts(store: redis.Redis, ids: list[str]) -> Counter[int]:
    """How many jobs ran 0, 1, 2, ... times (tests.tasktypes counts every run)."""
    values = store.mget([f"test:runs:{task_id}" for task_id in ids]) if ids else []
    return Counter(int(value or 0) for value in values)


# -- the rolling restart -------------------------------------------------------------------------


def address(api: Api) -> Address:
    return (api.host, api.port)


def reload_api(api: Api, timeout: float = 60) -> bytes:
    """gunicorn's graceful reload: HUP to the master; back once every old worker has left.

    What the reload logged, from the HUP on.
    """
    assert api.process.proc is not None
    before = api.log.read_bytes()
    booted, left = before.count(b"Booting worker"), before.count(b"Worker exiting")
    os.kill(api.process.proc.pid, signal.SIGHUP)

    def replaced() -> bool:
        now = api.log.read_bytes()
        return (
            now.count(b"Booting worker") >= booted + api.workers
            and now.count(b"Worker exiting") >= left + api.workers
        )

    wait_for(replaced, timeout, 0.1)
    return api.log.read_bytes()[len(before) :]


def restart_api(api: Api, traffic: Traffic, timeout: float = 60) -> None:
    """Stop and start behind a balancer: out of rotation, SIGTERM, start, ready, back in."""
    assert api.process.proc is not None
    traffic.drain(address(api))
    api.process.proc.terminate()  # the master alone, as an orchestrator does
    api.process.proc.wait(timeout)
    api.__enter__()
    wait_for(lambda: api.call("GET", "/readyz")[0] == 200, timeout, 0.1)
    traffic.restore(address(api))


def replace_worker(old: Worker, new: Worker, timeout: float = 60) -> float:
    """Start the new worker, then SIGTERM the old one's main process (a warm shutdown).

    The seconds from the SIGTERM to the old worker's exit.
    """
    assert old.proc is not None
    new.start()
    began = time.monotonic()
    old.proc.send_signal(signal.SIGTERM)
    old.proc.wait(timeout)
    return time.monotonic() - began
