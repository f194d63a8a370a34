"""Prometheus metrics, right across gunicorn workers and from the Celery workers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from app.devstack import free_port
from tests.conftest import submit, wait_state
from tests.support import BIN, Process, Worker, errand_env, wait_for


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_count_submits_states_and_run_times(client: FlaskClient, worker: Worker) -> None:
    for value in range(3):
        wait_state(client, submit(client, "test.echo", {"value": value}))
    wait_state(client, submit(client, "test.echo", {"value": 0, "fail": True}))
    client.post("/api/v1/tasks", json={"task": "test.echo", "params": {}})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    found = samples(response.get_data(as_text=True))
    echo = (("task", "test.echo"),)
    assert found[("errand_submits_total", (("outcome", "accepted"), *echo))] >= 4
    assert found[("errand_submits_total", (("outcome", "invalid"), *echo))] >= 1
    assert found[("errand_task_states_total", (("state", "SUCCESS"), *echo))] >= 3
    assert found[("errand_task_states_total", (("state", "FAILURE"), *echo))] >= 1
    assert found[("errand_task_states_total", (("state", "STARTED"), *echo))] >= 4
    assert found[("errand_task_runtime_seconds_count", echo)] >= 4
    assert found[("errand_task_runtime_seconds_bucket", (("le", "+Inf"), *echo))] >= 4
    assert found[("errand_queue_depth", (("queue", "celery"),))] >= 0
    assert found[("errand_workers", ())] >= 1
    latency = ("errand_http_request_duration_seconds_count", "/api/v1/tasks", "POST", "202")
    assert any(
        name == latency[0] and dict(labels).get("route") == latency[1] and value >= 4
        for (name, labels), value in found.items()
    )


def test_metrics_add_up_across_gunicorn_workers(redis_server: Any, tmp_path: Path) -> None:
    port = free_port()
    env = errand_env(redis_server.url, GUNICORN_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="3")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]
    api = Process(command, tmp_path / "g.log", env)
    api.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: (tmp_path / "g.log").read_bytes().count(b"Booting worker") >= 3, 20)

        def post_invalid() -> int:
            body = json.dumps({"task": "test.echo", "params": {"value": "x"}}).encode()
            req = urllib.request.Request(base + "/api/v1/tasks", data=body, method="POST")
            req.add_header("Content-Type", "application/json")
            try:
                urllib.request.urlopen(req, timeout=5)
            except urllib.error.HTTPError as error:
                return error.code
            except OSError:
                return 0
            return 200

        wait_for(lambda: post_invalid() == 422, 20)
        for _ in range(29):
            assert post_invalid() == 422
        for _ in range(5):  # whichever gunicorn worker answers, the total is the same
            with urllib.request.urlopen(base + "/metrics", timeout=5) as reply:
                found = samples(reply.read().decode())
            key = ("errand_submits_total", (("outcome", "invalid"), ("task", "test.echo")))
            assert found[key] == 30
    finally:
        api.stop()
