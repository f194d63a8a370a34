"""gunicorn settings, from the environment (see the README's settings table)."""

import contextlib
import json
import multiprocessing
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import traceback
from typing import Any

import gevent
from gunicorn import glogging
from gunicorn.workers import ggevent
from gunicorn.workers.base_async import AsyncWorker

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")


class GeventWorker(ggevent.GeventWorker):
    """gunicorn's gevent worker, that also drops clients that stall.

    gunicorn's own already bounds the wait for a request's headers by
    ``keepalive`` seconds; this one gives each read and write on a client's
    socket ``GUNICORN_READ_TIMEOUT`` seconds too, so a body sent a byte now and
    then, or an event stream nobody reads, ends instead of holding its
    connection. Long-polls wait on Redis, not on the socket: they are not cut.
    """

    read_timeout = float(os.environ.get("GUNICORN_READ_TIMEOUT", "10"))

    def handle(self, listener: object, client: socket.socket, addr: object) -> None:
        client.setblocking(True)
        client.settimeout(self.read_timeout)
        AsyncWorker.handle(self, listener, client, addr)

    def handle_exit(self, sig: int, frame: object) -> None:
        # On a HUP gunicorn forks the new workers and at once sends the old ones SIGTERM,
        # before the new ones have loaded the app: nobody accepted until they had (15 s
        # on a busy 2-core machine: requests timed out, bench/rolling.py). An old worker
        # keeps serving until every newer one is ready (at most GUNICORN_RELOAD_WAIT s).
        gevent.spawn(self.stop_once_replaced)

    def stop_once_replaced(self) -> None:
        deadline = time.monotonic() + reload_wait
        while time.monotonic() < deadline and newer_loading(self.age):  # type: ignore[attr-defined]
            gevent.sleep(0.1)
        self.alive = False


# gevent: one process holds many connections at once (long-polls, streams, slow
# clients) and answers submits and reads faster than sync workers (README, Benchmarks).
worker_class = os.environ.get("GUNICORN_WORKER_CLASS") or GeventWorker
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# gunicorn's control socket (one path per user, shared by every gunicorn on the
# machine) is not needed: signals do what Errand's deploys need.
control_socket_disable = True
accesslog = "-"
errorlog = "-"
json_log = os.environ.get("LOG_FORMAT") == "json"
if json_log:
    _access = (
        '{"remote": "%(h)s", "method": "%(m)s", "path": "%(U)s", "status": %(s)s, '
        '"bytes": "%(B)s", "ms": %(M)s, "pid": "%(p)s", "request_id": "%({x-request-id}o)s"}'
    )
else:
    _access = (
        '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms pid=%(p)s request_id=%({x-request-id}o)s'
    )
# The path without its query string: a client may put a credential there, and a
# log line must never carry one (the request id is Errand's own, checked, value).
access_log_format = os.environ.get("GUNICORN_ACCESS_LOG_FORMAT", _access)

# Anything a client sent that is not printable ASCII, and quotes and backslashes, as \xNN.
_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def _clean(text: str) -> str:
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda found: f"\\x{ord(found[0]):02x}", text)


class AccessLog(glogging.Logger):
    """gunicorn's logger, with the access lines of ``_access`` written for a fraction of the cost.

    gunicorn's own copies every request header, response header and environ entry
    into a dict per request (about a tenth of a status read's CPU); this one writes
    the same fields (``GUNICORN_ACCESS_LOG_FORMAT`` set: gunicorn's own, as it was).
    The path (decoded, without its query string) and the request id never carry a
    control character, quote or backslash a client sent: those are written as ``\\xNN``.
    """

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        if "GUNICORN_ACCESS_LOG_FORMAT" in os.environ:
            return super().access(resp, req, environ, request_time)
        status = resp.status
        code = status.split(None, 1)[0] if isinstance(status, str) else str(status)
        sent = getattr(resp, "sent", None)
        ms = request_time.seconds * 1000 + request_time.microseconds // 1000
        request_id = next(
            (value for name, value in reversed(resp.headers) if name.lower() == "x-request-id"),
            "-",
        )
        remote = _clean(environ.get("REMOTE_ADDR", "-"))
        method, path = _clean(environ["REQUEST_METHOD"]), _clean(environ.get("PATH_INFO", ""))
        pid, request_id = f"<{os.getpid()}>", _clean(request_id)
        if json_log:
            fields = {"remote": remote, "method": method, "path": path, "status": int(code)}
            fields |= {"bytes": str(sent), "ms": ms, "pid": pid, "request_id": request_id}
            line = json.dumps(fields)
        else:
            protocol = _clean(environ.get("SERVER_PROTOCOL", "-"))
            size = "-" if sent is None else str(sent)
            line = f'{remote} "{method} {path} {protocol}" {code} {size} {ms}ms pid={pid} '
            line += f"request_id={request_id}"
        try:
            self.access_log.info(line)
        except Exception:
            self.error(traceback.format_exc())


logger_class = AccessLog

# Metrics of every gunicorn worker add up (prometheus_client's multiprocess mode):
# each worker writes its samples under this directory, emptied at each start. One
# Errand makes (not one given in PROMETHEUS_MULTIPROC_DIR) goes when the master exits;
# ERRAND_METRICS_DIR_MADE remembers that across a reload (SIGHUP reads this file again).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="errand-metrics-")
    os.environ["ERRAND_METRICS_DIR_MADE"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]


# Which workers were forked and which have loaded the app, by age (gunicorn numbers its
# workers in order), for GeventWorker.handle_exit: one file each, in a directory of this
# master's (kept across a reload in ERRAND_WORKERS_DIR).
reload_wait = float(os.environ.get("GUNICORN_RELOAD_WAIT", "15"))
if not os.environ.get("ERRAND_WORKERS_DIR"):
    os.environ["ERRAND_WORKERS_DIR"] = tempfile.mkdtemp(prefix="errand-workers-")
_workers_dir = os.environ["ERRAND_WORKERS_DIR"]


def newer_loading(age: int) -> bool:
    """True while a worker younger than ``age`` was forked and has not loaded the app yet."""
    try:
        names = set(os.listdir(_workers_dir))
    except OSError:
        return False
    forked = {int(n.split("-")[1]) for n in names if n.startswith("forked-")}
    return any(a > age and f"ready-{a}" not in names for a in forked)


def _mark(state: str, worker: object) -> None:
    with open(os.path.join(_workers_dir, f"{state}-{worker.age}"), "w"):  # type: ignore[attr-defined]
        pass


def pre_fork(server: object, worker: object) -> None:
    _mark("forked", worker)


def post_worker_init(worker: object) -> None:
    _mark("ready", worker)
    worker.log.info("Worker ready (pid: %s)", worker.pid)  # type: ignore[attr-defined]


def _remove_metrics_dir() -> None:
    if os.environ.get("ERRAND_METRICS_DIR_MADE") == _metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def on_starting(server: object) -> None:
    # The settings are checked once, here in the master, before any worker boots: a
    # refused one is a single line, not a traceback from every worker.
    import config

    try:
        config.load()
    except config.ConfigError as error:
        _remove_metrics_dir()
        shutil.rmtree(_workers_dir, ignore_errors=True)
        print(f"errand: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)


def child_exit(server: object, worker: object) -> None:
    # A dead worker's live gauges must not linger in what /metrics adds up.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
    for state in ("forked", "ready"):
        with contextlib.suppress(OSError):
            os.remove(os.path.join(_workers_dir, f"{state}-{worker.age}"))  # type: ignore[attr-defined]


def on_exit(server: object) -> None:
    _remove_metrics_dir()
    shutil.rmtree(_workers_dir, ignore_errors=True)
