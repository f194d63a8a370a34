"""gunicorn settings, from the environment (see the README's settings table)."""

import multiprocessing
import os
import shutil
import tempfile

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# gevent: one process holds many connections at once (long-polls, streams, slow
# clients) and answers submits and reads faster than sync workers (README, Benchmarks).
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
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
if os.environ.get("LOG_FORMAT") == "json":
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

# Metrics of every gunicorn worker add up (prometheus_client's multiprocess mode):
# each worker writes its samples under this directory, emptied at each start.
_metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="errand-metrics-")
)


def on_starting(server: object) -> None:
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
