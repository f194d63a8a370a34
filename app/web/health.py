"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from app import store
from app.web.problems import problem
from app.worker import celery_of
from app.worker.fleet import count_live_workers

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


def _check_broker() -> None:
    with celery_of(current_app).connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=current_app.config["REDIS_TIMEOUT"])


def _check_workers() -> None:
    if count_live_workers(store.client(), current_app.config["LEASE_INTERVAL"]) == 0:
        raise RuntimeError("no worker has sent a heartbeat recently")


# Open to anyone, so answered from a result about a second old: a flood of
# readiness checks costs Redis nothing more than one check a second per process.
READY_FOR = 1.0


@bp.get("/readyz")
def readyz() -> Response:
    now = time.monotonic()
    last = current_app.extensions.get("errand.ready")
    if last is None or now - last[0] >= READY_FOR:
        last = current_app.extensions["errand.ready"] = (now, *_check())
    _, status, body = last
    if status != 200:
        return problem(status, body["detail"], headers={"Retry-After": "5"})
    return jsonify(body)


def _check() -> tuple[int, dict[str, Any]]:
    checks: dict[str, Any] = {}
    failed = []
    for name, check in (
        ("broker", _check_broker),
        ("result_store", lambda: store.client().ping()),
        ("workers", _check_workers),
    ):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # each check reports, none stops the others
            checks[name] = f"failed: {exc}"
            failed.append(name)
    if failed:
        return 503, {"detail": "not ready: " + ", ".join(failed) + " failed", "checks": checks}
    return 200, {"status": "ready", "checks": checks}
