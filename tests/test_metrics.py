"""Prometheus metrics, right across gunicorn workers and from the Celery workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Api, Worker, errand_env, settle, submit, wait_state


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
    # Exactly: Prometheus 3 refuses a repeated charset; 0.0.4 is read by 2 and 3 alike.
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
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
    env = errand_env(redis_server.url)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    bad = {"task": "test.echo", "params": {"value": "x"}}
    key = ("errand_submits_total", (("outcome", "invalid"), ("task", "test.echo")))
    with Api(env, tmp_path / "g.log", workers=3) as api:
        for _ in range(30):
            assert api.call("POST", "/api/v1/tasks", bad)[0] == 422
        for _ in range(5):  # whichever gunicorn worker answers, the total is the same
            status, _, text = api.call("GET", "/metrics")
            assert status == 200
            assert samples(text)[key] == 30


def test_a_cancelled_countdown_task_counts_revoked_once(
    client: FlaskClient, worker: Worker
) -> None:
    key = ("errand_task_states_total", (("state", "REVOKED"), ("task", "test.sleep")))

    def revoked() -> float:
        return samples(client.get("/metrics").get_data(as_text=True)).get(key, 0.0)

    before = revoked()
    url = submit(client, "test.sleep", {"seconds": 0}, countdown=2)
    assert client.delete(url).status_code == 202
    settle(3.5)  # past its ETA: the worker has had it and discarded it
    assert revoked() == before + 1
    assert wait_state(client, url)["state"] == "REVOKED"
