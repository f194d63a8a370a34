"""Prometheus metrics, served at ``/metrics`` by ``app.web.operations``.

Two kinds, so the numbers are right however many processes serve the API:

- What each API process sees (request latency, submits by outcome) lives in
  ``prometheus_client``; under gunicorn its multiprocess mode adds up the
  workers (``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR``). Requests
  are observed from Flask's request hooks (``init_app``).
- What the workers see (task states reached, task run time) is counted in
  Redis, where any API process on any machine reads it at scrape time, with
  the queue depths asked of the broker and the number of live workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.store import keys

log = logging.getLogger(__name__)

RUNTIME_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

REQUEST_SECONDS = Histogram(
    "errand_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route and status.",
    ["method", "route", "status"],
)
SUBMITS = Counter(
    "errand_submits",
    "Submits by task type and outcome (accepted, invalid, unavailable, error).",
    ["task", "outcome"],
)


def _outcome(status: int) -> str:
    if status == 202:
        return "accepted"
    if status == 503:
        return "unavailable"
    return "invalid" if status < 500 else "error"


class WorkerMetrics(Collector):
    """Reads, at scrape time, what the workers counted in Redis and the queue depths."""

    def __init__(
        self,
        client: redis.Redis,
        queue_depths: Callable[[], dict[str, int]],
        live_workers: Callable[[], int],
    ) -> None:
        self.client, self.queue_depths, self.live_workers = client, queue_depths, live_workers

    def collect(self) -> Iterator[Any]:
        states = CounterMetricFamily(
            "errand_task_states",
            "Times tasks reached a state, by task type.",
            labels=["task", "state"],
        )
        runtimes = HistogramMetricFamily(
            "errand_task_runtime_seconds", "Task run time measured by the workers.", labels=["task"]
        )
        try:
            pipe = self.client.pipeline(transaction=False)
            counts, timings = pipe.hgetall(keys.STATE_COUNTS).hgetall(keys.RUNTIMES).execute()
        except redis.RedisError as exc:
            log.warning("metrics: the task store did not answer: %s", exc)
            return
        for field, value in sorted(counts.items()):
            task, state = field.decode().rsplit("|", 1)
            states.add_metric([task, state], int(value))
        yield states
        for task, (buckets, total) in sorted(_runtimes(timings).items()):
            runtimes.add_metric([task], buckets, total)
        yield runtimes
        try:
            depths = self.queue_depths()
            workers = self.live_workers()
        except Exception as exc:  # a scrape must not fail because the broker is down
            log.warning("metrics: the broker did not answer: %s", exc)
            return
        depth = GaugeMetricFamily("errand_queue_depth", "Messages waiting.", labels=["queue"])
        for name, value in depths.items():
            depth.add_metric([name], value)
        yield depth
        yield GaugeMetricFamily("errand_workers", "Workers with a fresh heartbeat.", value=workers)


def _runtimes(raw: dict[bytes, bytes]) -> dict[str, tuple[list[tuple[str, float]], float]]:
    per_task: dict[str, dict[str, float]] = {}
    for field, value in raw.items():
        task, part = field.decode().rsplit("|", 1)
        per_task.setdefault(task, {})[part] = float(value)
    result = {}
    for task, parts in per_task.items():
        running, buckets = 0.0, []
        for bound in [*map(str, RUNTIME_BUCKETS), "+Inf"]:
            running += parts.get(bound, 0.0)
            buckets.append((bound, running))
        result[task] = (buckets, parts.get("sum", 0.0))
    return result


def runtime_bucket(seconds: float) -> str:
    """The run-time histogram bucket a run of ``seconds`` counts in (``store_result.lua``)."""
    return next((str(b) for b in RUNTIME_BUCKETS if seconds <= b), "+Inf")


def exposition(multiprocess: bool, workers: WorkerMetrics) -> bytes:
    """The Prometheus text format, for every process of the API and every worker."""
    registry = CollectorRegistry()
    if multiprocess:
        MultiProcessCollector(registry)
    else:
        registry.register(REQUEST_SECONDS)
        registry.register(SUBMITS)
    registry.register(workers)
    return generate_latest(registry)


# Label values come from a fixed set, so a client cannot grow /metrics: methods
# outside HTTP's usual ones fold into OTHER, URLs that match no route into "unmatched".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_timers: dict[tuple[str, str, int], Any] = {}


def _timer(method: str, route: str, status: int) -> Any:
    key = (method, route, status)
    timer = _timers.get(key)
    if timer is None:
        timer = _timers[key] = REQUEST_SECONDS.labels(method, route, str(status))
    return timer


def observe_request(method: str, route: str, status: int, started: float) -> None:
    """Time one answer (``started``: its ``time.perf_counter()`` when it came in)."""
    method = method if method in METHODS else "OTHER"
    _timer(method, route, status).observe(time.perf_counter() - started)


_submit_counters: dict[tuple[str, int], Any] = {}


def count_submit(task_type: str, status: int) -> None:
    """Count one answer of ``POST /api/v1/tasks`` by its task type and outcome."""
    key = (task_type, status)  # task types are the registry's (or "unknown"): a fixed set
    counter = _submit_counters.get(key)
    if counter is None:
        counter = _submit_counters[key] = SUBMITS.labels(task_type, _outcome(status))
    counter.inc()


def init_app(app: Flask) -> None:
    """Time every request and count submits, from Flask's request hooks (and app.web.fast)."""

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def observe(response: Response) -> Response:
        rule = request.url_rule
        if "started" in g:
            route = rule.rule if rule else "unmatched"
            observe_request(request.method, route, response.status_code, g.started)
        if request.endpoint == "tasks.submit":  # the route names the task type in g
            count_submit(g.get("task_type", "unknown"), response.status_code)
        return response
