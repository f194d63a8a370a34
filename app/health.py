"""Liveness and readiness for load balancers."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from app.celery_app import celery_of
from app.errors import problem
from app.extensions import store
from app.records import WORKERS

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


def _check_broker() -> None:
    with celery_of(current_app).connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=current_app.config["REDIS_TIMEOUT"])


def _check_workers() -> None:
    # Each worker's lease thread refreshes its heartbeat every LEASE_INTERVAL.
    horizon = time.time() - 3 * current_app.config["LEASE_INTERVAL"]
    if store().zcount(WORKERS, horizon, "+inf") == 0:
        raise RuntimeError("no worker has sent a heartbeat recently")


@bp.get("/readyz")
def readyz() -> Response:
    checks: dict[str, Any] = {}
    failed = []
    for name, check in (
        ("broker", _check_broker),
        ("result_store", lambda: store().ping()),
        ("workers", _check_workers),
    ):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # each check reports, none stops the others
            checks[name] = f"failed: {exc}"
            failed.append(name)
    if failed:
        return problem(
            503, "not ready: " + ", ".join(failed) + " failed", headers={"Retry-After": "5"}
        )
    return jsonify({"status": "ready", "checks": checks})
