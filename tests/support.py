"""Real processes for the tests: Redis servers, Celery workers and gunicorn.

Every process starts in its own session, so that stopping it stops its
children too, and every one is stopped by the fixture that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from email import policy
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.jobs.resource import FINAL_STATES
from devtools.devstack import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting for {check}")
        time.sleep(interval)


class Process:
    """A child process in its own session, stopped with its whole group."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.command, self.log, self.env = command, log, env
        self.proc: subprocess.Popen[bytes] | None = None
        # Where it runs, and the process group it joins (None: a session of its own, 0: a
        # group of its own in this session); simulated hosts set both (tests/test_hosts.py).
        self.cwd: Path = ROOT
        self.group: int | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.group is None,
                process_group=self.group,
            )

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(self.proc.pid), signum)

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.group or self.proc.pid, signal.SIGKILL)  # whatever of the group is left
        self.proc.wait()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def __enter__(self) -> Process:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# What a client sends when it connects, not per request (redis-py 8 sends HELLO).
HANDSHAKE = {"hello", "client", "auth", "select"}


class RedisServer(Process):
    """A private redis-server on a free port (never the machine's shared one)."""

    def __init__(self, workdir: Path, aof: bool = False) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        command = [
            redis_server_binary(),
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir)),
            *("--save", "", "--appendonly", "yes" if aof else "no"),
            *("--appendfsync", "always"),
        ]
        super().__init__(command, workdir / "redis.log")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        super().start()
        wait_for(self.ping, 10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def ping(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def commands_during(self, action: Callable[[], Any]) -> list[str]:
        """The commands clients sent (not those run inside scripts) while ``action`` ran.

        Each is the command's name, lower case: one per round trip for a lone
        command or a script, several for a pipeline.
        """
        marker = f"end-of-watch-{uuid.uuid4().hex}"
        seen: list[str] = []
        ready = threading.Event()

        def watch() -> None:
            with self.client().monitor() as monitor:
                ready.set()
                for entry in monitor.listen():
                    if marker in entry["command"]:
                        return
                    name = entry["command"].split(" ", 1)[0].lower()
                    if entry["client_type"] != "lua" and name not in HANDSHAKE:
                        seen.append(name)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        ready.wait(5)
        time.sleep(0.05)  # MONITOR is on once Redis has answered it
        action()
        self.client().echo(marker)
        watcher.join(10)
        return seen


def errand_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of Errand processes under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "ERRAND_"))}
    env.update(
        REDIS_URL=redis_url,
        VISIBILITY_TIMEOUT="4",
        TASK_MODULES="tests.tasktypes",
        PYTHONPATH=str(ROOT),
        LOG_LEVEL="INFO",
        MAIL_RETRY_BACKOFF="0.2",
        # Most tests run the development way, without keys and with room to spare;
        # tests of keys and limits set these back.
        AUTH_DISABLED="true",
        RATE_LIMIT_SUBMIT="100000 per second",
        RATE_LIMIT_READ="100000 per second",
        AUTH_FAILURE_LIMIT="100000 per second",
        # Webhooks of tests (a fuzzer's too) go nowhere but loopback, and only where allowed.
        WEBHOOK_ALLOWED_HOSTS="localhost,127.0.0.1",
    )
    env.update(extra)
    return env


POOLS = ("prefork", "threads", "gevent", "solo")


class Worker(Process):
    """``celery -A worker:celery_app worker`` as a real subprocess.

    ``pool`` is one of ``POOLS``; ``queues`` is ``-Q``'s value (empty: every queue), and
    ``exclude`` ``-X``'s (every queue but those).
    """

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        name: str,
        concurrency: int = 2,
        pool: str = "prefork",
        queues: str = "",
        exclude: str = "",
        node: str = "",
    ) -> None:
        # ``node``: the whole node name (``name@hostX``), for workers of simulated hosts.
        command = [
            str(BIN / "celery"),
            *("-A", "worker:celery_app", "worker", "-P", pool, "-c", str(concurrency)),
            *("-n", node or f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "INFO"),
            *(("-Q", queues) if queues else ()),
            *(("-X", exclude) if exclude else ()),
        ]
        super().__init__(command, log, env)

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        super().start()
        wait_for(lambda: b" ready." in self.log.read_bytes()[offset:], 60, 0.1)


class SmtpSink:
    """A real SMTP server on loopback (aiosmtpd) that keeps what it receives.

    It can be stopped and started again on the same port (aiosmtpd closes a
    controller's loop when it stops, so each start makes a new controller);
    what it received is kept. ``refuse`` holds addresses answered 550, and
    ``delay`` slows each DATA by that many seconds.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.port = free_port()
        self.envelopes: list[Any] = []
        self.refuse: set[str] = set()
        self.delay = delay
        self.controller: Any = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.envelopes.append(envelope)
        return "250 Message accepted"

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        if self.controller is None:
            self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
            self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def received(self) -> dict[str, list[str]]:
        """The Message-IDs received for each subject, in order of arrival."""
        found: dict[str, list[str]] = {}
        for envelope in list(self.envelopes):
            message = email.message_from_bytes(envelope.content, policy=policy.default)
            found.setdefault(str(message["Subject"]), []).append(str(message["Message-ID"]))
        return found


class Api:
    """The API under gunicorn with ``workers`` processes, called over HTTP on loopback.

    ``host`` is the loopback address it listens on (127.0.0.2, ... for other "hosts").
    """

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        workers: int = 2,
        target: str = "wsgi:app",
        host: str = "127.0.0.1",
    ) -> None:
        self.host, self.port = host, free_port()
        settings = {**env, "GUNICORN_BIND": f"{host}:{self.port}"}
        settings["WEB_CONCURRENCY"] = str(workers)
        command = [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), target]
        self.process = Process(command, log, settings)
        self.log, self.workers = log, workers

    def __enter__(self) -> Api:
        self.process.start()
        wait_for(lambda: self.log.read_bytes().count(b"Booting worker") >= self.workers, 30)
        wait_for(lambda: self.call("GET", "/healthz")[0] == 200, 30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        key: str = "",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        """(status, headers, body): the body parsed if JSON, else text; status 0 if no answer."""
        data = json.dumps(body).encode() if body is not None else None
        url = f"http://{self.host}:{self.port}{path}"
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, reply.headers, _parsed(reply)
        except urllib.error.HTTPError as error:
            return error.code, error.headers, _parsed(error)
        except OSError:
            return 0, {}, None


def _parsed(reply: Any) -> Any:
    raw = reply.read()
    return json.loads(raw) if "json" in reply.headers.get("Content-Type", "") else raw.decode()


# -- helpers for tests that use the app in process ---------------------------------------------


def make_app(redis_url: str, **env: str) -> Flask:
    """An Errand app configured, as in production, from the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in errand_env(redis_url, **env).items():
            patch.setenv(name, value)
        return create_app({"TESTING": True})


def submit(client: FlaskClient, task: str, params: dict[str, Any], **options: Any) -> str:
    """Submit a job and return its status URL."""
    body: dict[str, Any] = {"task": task, "params": params}
    if options:
        body["options"] = options
    response = client.post("/api/v1/tasks", json=body)
    assert response.status_code == 202, response.json
    return str(response.headers["Location"])


def wait_state(
    client: FlaskClient, url: str, states: set[str] | None = None, timeout: float = 30
) -> dict[str, Any]:
    """Poll a task until it reaches one of ``states`` (default: any final state)."""
    wanted = states or FINAL_STATES

    def reached() -> dict[str, Any] | None:
        task = client.get(url).json
        assert task is not None
        return task if task["state"] in wanted else None

    return wait_for(reached, timeout, 0.05)


def runs(store: Any, url: str) -> int:
    """How many times the task behind ``url`` ran (tests.tasktypes counts)."""
    return int(store.get(f"test:runs:{url.rsplit('/', 1)[-1]}") or 0)


def settle(seconds: float) -> None:
    """Give the worker time to do something it must not do (e.g. run a cancelled job)."""
    time.sleep(seconds)
