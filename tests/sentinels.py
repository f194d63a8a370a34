"""A private Redis Sentinel deployment for the failover tests and ``bench/failover.py``.

One primary, its replicas and three sentinels, each a real ``redis-server`` on a
free loopback port (the machine's Redis on 6379 is never touched), with
Sentinel's timeouts shrunk so that a failover takes a few seconds. And the load
the failover tests put across a fault: clients submitting, each answer kept.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from app.jobs.resource import FINAL_STATES
from devtools.devstack import free_port, redis_server_binary
from tests.support import Api, Process, RedisServer, Worker, errand_env, wait_for

SERVICE = "errand"


class SentinelSet:
    """A primary, ``replicas`` replicas and three sentinels watching them (``SERVICE``)."""

    def __init__(self, workdir: Path, replicas: int = 1, down_after_ms: int = 1500) -> None:
        self.workdir = workdir
        self.nodes = [self._node(i) for i in range(1 + replicas)]
        primary = self.nodes[0].port
        for node in self.nodes[1:]:
            node.command += ["--replicaof", "127.0.0.1", str(primary)]
        self.sentinels = []
        for i in range(3):
            folder = workdir / f"sentinel{i}"
            folder.mkdir(parents=True, exist_ok=True)
            port = free_port()
            conf = folder / "sentinel.conf"  # Sentinel rewrites its own file
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 4000\n"
                f"sentinel parallel-syncs {SERVICE} {replicas}\n"
            )
            sentinel = Process([redis_server_binary(), str(conf), "--sentinel"], folder / "log")
            sentinel.port = port  # type: ignore[attr-defined]
            self.sentinels.append(sentinel)
        self.url = ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels) + "/0"  # type: ignore[attr-defined]
        self.replicas = replicas

    def _node(self, i: int) -> RedisServer:
        node = RedisServer(self.workdir / f"node{i}")
        # A replica that (re)joins copies the data at once, not after the default 5 s.
        node.command += ["--repl-diskless-sync-delay", "0"]
        return node

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        wait_for(lambda: self.replicas_online(self.nodes[0]) == self.replicas, 20)
        for sentinel in self.sentinels:
            sentinel.start()
            client = redis.Redis(port=sentinel.port, socket_timeout=1)  # type: ignore[attr-defined]
            wait_for(lambda c=client: _answers(c), 10)
            # Sentinel asks each server for its role every 10 s, and makes a demoted
            # primary a replica of the new one 4 publish periods (8 s) after it saw it
            # still a primary. Shrunk, as the test's other timeouts.
            client.execute_command("SENTINEL", "DEBUG", "info-period", 500)
            client.execute_command("SENTINEL", "DEBUG", "publish-period", 250)
        wait_for(self._sentinels_agree, 30, interval=0.2)

    def stop(self) -> None:
        for process in [*self.sentinels, *self.nodes]:
            with contextlib.suppress(Exception):
                process.stop()

    def __enter__(self) -> SentinelSet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ask(self, *command: Any) -> Any:
        """A command to the first sentinel that answers."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(port=sentinel.port, socket_timeout=1, decode_responses=True)  # type: ignore[attr-defined]
                return client.execute_command(*command)
        raise AssertionError("no sentinel answers")

    def primary_port(self) -> int:
        _, port = self.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def primary(self) -> RedisServer:
        port = self.primary_port()
        return next(node for node in self.nodes if node.port == port)

    def replicas_online(self, node: RedisServer) -> int:
        try:
            info = node.client().info("replication")
        except redis.RedisError:
            return -1
        return sum(
            1
            for name, value in info.items()
            if name.startswith("slave") and value["state"] == "online"
        )

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=1, decode_responses=True)  # type: ignore[attr-defined]
            try:
                found = client.execute_command("SENTINEL", "MASTER", SERVICE)
            except redis.RedisError:
                return False
            about = (
                dict(zip(found[::2], found[1::2], strict=True))
                if isinstance(found, list)
                else found
            )
            if int(about["num-other-sentinels"]) != 2 or int(about["num-slaves"]) != self.replicas:
                return False
        return True

    def wait_new_primary(self, old: int, timeout: float = 30, steady: float = 1.5) -> float:
        """Wait until the sentinels name another primary than ``old``; when they did.

        On a loaded machine Sentinel may fail over a second time just after the
        first (it missed the new primary's first replies): the switch returned is the
        last one, once the primary named has stayed the same for ``steady`` seconds.
        """
        wait_for(lambda: self.primary_port() != old, timeout, interval=0.05)
        switched, current = time.monotonic(), self.primary_port()
        while time.monotonic() - switched < steady:
            time.sleep(0.05)
            named = self.primary_port()
            if named != current:
                switched, current = time.monotonic(), named
        return switched

    def where_is(self, task_id: str) -> dict[str, Any]:
        """Where each live node holds ``task_id``: queue lists, kombu's unacked hash, record."""
        found: dict[str, Any] = {}
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            client = node.client()
            here = [
                key.decode()
                for key in client.scan_iter(count=1000)
                if client.type(key) == b"list"
                and any(task_id.encode() in item for item in client.lrange(key, 0, -1))
            ]
            unacked = [t for t, m in client.hgetall("unacked").items() if task_id.encode() in m]
            found[str(node.port)] = {
                "role": client.info("replication")["role"],
                "lists": here,
                "unacked": [(t, client.zscore("unacked_index", t)) for t in unacked],
                "record": client.hgetall(f"errand:task:{task_id}"),
                "result": client.get(f"celery-task-meta-{task_id}"),
            }
        return found

    def all_in_sync(self) -> bool:
        """The primary has every other live node as an online replica."""
        live = [node for node in self.nodes if node.proc is not None and node.proc.poll() is None]
        return self.replicas_online(self.primary()) == len(live) - 1


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class Answer:
    at: float
    status: int
    task_id: str = ""
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    took: float = 0.0


@dataclass
class Load:
    """Clients submitting ``task`` to the API at ``port`` until stopped; every answer kept."""

    port: int
    task: dict[str, Any]
    clients: int = 4
    pause: float = 0.02
    host: str = "127.0.0.1"
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)
        ]

    def _run(self) -> None:
        body = json.dumps(self.task)
        while not self.stopping.is_set():
            answer = submit_once(self.host, self.port, body)
            with self.lock:
                self.answers.append(answer)
            self.stopping.wait(self.pause)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def accepted(self) -> list[str]:
        return [a.task_id for a in self.answers if a.status == 202]


def submit_once(host: str, port: int, body: str, headers: dict[str, str] | None = None) -> Answer:
    """One submit on a fresh connection: its answer, status 0 if the connection failed."""
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=15)
    try:
        connection.request(
            "POST", "/api/v1/tasks", body, {"Content-Type": "application/json", **(headers or {})}
        )
        reply = connection.getresponse()
        raw = reply.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")  # not JSON: kept to be seen in the failure
        task_id = parsed["id"] if reply.status == 202 and isinstance(parsed, dict) else ""
        headers = dict(reply.getheaders())
        return Answer(started, reply.status, task_id, parsed, headers, time.monotonic() - started)
    except OSError as exc:
        return Answer(started, 0, body=repr(exc), took=time.monotonic() - started)
    finally:
        connection.close()


def sentinel_env(redis_set: SentinelSet, min_replicas: int, **extra: str) -> dict[str, str]:
    """Errand's settings for processes that know only the sentinels' addresses."""
    return errand_env(
        redis_set.url,
        REDIS_SENTINEL_MASTER=SERVICE,
        REDIS_MIN_REPLICAS=str(min_replicas),
        REDIS_TIMEOUT="0.5",
        VISIBILITY_TIMEOUT="4",
        **extra,
    )


@contextlib.contextmanager
def deployment(env: dict[str, str], workdir: Path) -> Iterator[tuple[Api, list[Worker]]]:
    """An API (two gunicorn workers) and two Celery workers, prefork and gevent."""
    workers = [
        Worker(env, workdir / "prefork.log", "prefork", concurrency=2),
        Worker(env, workdir / "gevent.log", "gevent", concurrency=4, pool="gevent"),
    ]
    try:
        for worker in workers:
            worker.start()
        with Api(env, workdir / "api.log") as api:
            yield api, workers
    finally:
        for worker in workers:
            worker.stop()


def final_states(api: Api, task_ids: list[str], timeout: float) -> tuple[dict[str, str], set[str]]:
    """Each task's final state read through the API, and the tasks not final in time."""
    states: dict[str, str] = {}
    left = set(task_ids)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        for task_id in list(left):
            status, _, body = api.call("GET", f"/api/v1/tasks/{task_id}")
            if status == 200 and body["state"] in FINAL_STATES:
                states[task_id] = body["state"]
                left.discard(task_id)
            elif status not in {200, 503}:
                raise AssertionError((task_id, status, body))
        if left:
            time.sleep(0.2)
    return states, left
