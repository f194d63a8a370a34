"""What operators watch (admin keys only): live workers, queue depths, ``/metrics``."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from app import store
from app.errors import BrokerUnavailable, StoreUnavailable
from app.jobs.service import BROKER_ERRORS
from app.metrics import WorkerMetrics, exposition
from app.worker import celery_of
from app.worker.fleet import count_live_workers, live_workers, queue_depths, queue_listing

bp = Blueprint("operations", __name__)


@bp.get("/api/v1/workers")
def workers() -> Response:
    try:
        found = live_workers(store.client(), current_app.config["LEASE_INTERVAL"])
    except BROKER_ERRORS as exc:
        raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
    return jsonify({"items": found})


@bp.get("/api/v1/queues")
def queues() -> Response:
    try:
        depths = queue_depths(celery_of(current_app))
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"the broker did not answer: {exc}") from exc
    try:
        found = live_workers(store.client(), current_app.config["LEASE_INTERVAL"])
    except BROKER_ERRORS as exc:
        raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
    task_types = current_app.extensions["errand.task_types"]
    return jsonify({"items": queue_listing(depths, task_types, found)})


@bp.get("/metrics")
def metrics() -> Response:
    """The Prometheus text format, for every process of the API and every worker."""
    client, interval = store.client(), current_app.config["LEASE_INTERVAL"]
    celery_app = celery_of(current_app)
    collector = WorkerMetrics(
        client, lambda: queue_depths(celery_app), lambda: count_live_workers(client, interval)
    )
    body = exposition(current_app.config["METRICS_MULTIPROCESS"], collector)
    # The text format both Prometheus 2 and 3 read; content_type, not mimetype: Flask would
    # add a second charset, which Prometheus 3 refuses.
    return Response(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)
