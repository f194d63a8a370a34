"""Redis Sentinel: a failover loses nothing that was answered 202, and nothing is restarted.

Each test starts its own primary, replicas and three sentinels (tests/sentinels.py),
an API and workers that know only the sentinels' addresses, puts clients
submitting across a fault, and checks every answer: each 202 reaches a final
state (at least once), every other answer is a 503 problem+json (never a 500,
never a hang), the API takes submits again within seconds of Sentinel's switch,
and the same worker processes ran the jobs after it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from app.store import connect, scripts
from tests.sentinels import (
    SERVICE,
    Load,
    SentinelSet,
    deployment,
    final_states,
    sentinel_env,
)
from tests.support import BIN, Api, Process, Worker, make_app, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

JOB = {"task": "test.echo", "params": {"value": 7}}
# Seconds from Sentinel naming the new primary to the API's first 202 after it.
RESUMES_WITHIN = 8.0


def wait_final(
    api: Api, task_ids: list[str], timeout: float, redis_set: SentinelSet
) -> dict[str, str]:
    """Each task's final state; fails, saying where one is, if a task is not final in time."""
    states, left = final_states(api, task_ids, timeout)
    where = redis_set.where_is(sorted(left)[0]) if left else None
    assert not left, f"{len(left)} accepted jobs never finished, e.g. {sorted(left)[:3]}: {where}"
    return states


def check_answers(load: Load) -> Counter[int]:
    """Every answer a 202, or a 503 problem+json with Retry-After: no 500, none unanswered."""
    seen = Counter(answer.status for answer in load.answers)
    # Within a few REDIS_TIMEOUTs (0.5 s here), whatever the answer: nothing hangs.
    slowest = max(load.answers, key=lambda a: a.took)
    assert slowest.took < 5, (slowest.status, slowest.took)
    for answer in load.answers:
        if answer.status == 202:
            continue
        assert answer.status == 503, (answer.status, answer.body)
        assert answer.headers["Content-Type"] == "application/problem+json", answer.headers
        assert int(answer.headers["Retry-After"]) >= 1
    return seen


def first_202_after(load: Load, moment: float) -> float:
    return min(a.at for a in load.answers if a.status == 202 and a.at >= moment)


def check_workers_kept(workers: list[Worker], pids: list[int]) -> None:
    for worker, pid in zip(workers, pids, strict=True):
        assert worker.proc is not None and worker.proc.poll() is None, "a worker stopped"
        assert worker.proc.pid == pid


def run_across(
    redis_set: SentinelSet, tmp_path: Path, min_replicas: int, fault: Any
) -> tuple[Load, Api, float]:
    """Submit across ``fault`` (which returns when Sentinel has switched); final states checked."""
    env = sentinel_env(redis_set, min_replicas)
    with deployment(env, tmp_path) as (api, workers):
        pids = [w.proc.pid for w in workers if w.proc is not None]
        with Load(api.port, JOB) as load:
            wait_for(lambda: len(load.accepted()) >= 100, 30)
            switched = fault()
            wait_for(
                lambda: sum(a.at > switched for a in load.answers if a.status == 202) >= 100, 60
            )
            time.sleep(max(0.0, switched + 2 - time.monotonic()))
        seen = check_answers(load)
        resumed = first_202_after(load, switched) - switched
        states = wait_final(api, load.accepted(), timeout=60, redis_set=redis_set)
        check_workers_kept(workers, pids)
        print(f"answers {dict(seen)}; 202 again {resumed:.2f}s after the switch; "
              f"final {dict(Counter(states.values()))}")  # fmt: skip
        assert len(load.accepted()) >= 200
        assert resumed < RESUMES_WITHIN
        # After the switch, the workers (not restarted) ran jobs submitted after it.
        late = [a.task_id for a in load.answers if a.status == 202 and a.at > switched + 1]
        assert late and all(states[task_id] == "SUCCESS" for task_id in late)
        return load, api, switched


def test_primary_killed_loses_no_accepted_job(tmp_path: Path) -> None:
    with SentinelSet(tmp_path / "redis", replicas=2) as redis_set:

        def kill_primary() -> float:
            old = redis_set.primary()
            old.kill()
            return redis_set.wait_new_primary(old.port)

        run_across(redis_set, tmp_path, min_replicas=1, fault=kill_primary)


def test_planned_switchover_loses_no_accepted_job(tmp_path: Path) -> None:
    # SENTINEL FAILOVER: the old primary keeps its connections and, demoted, answers
    # READONLY; what it took in the meantime was never confirmed by a replica (503).
    with SentinelSet(tmp_path / "redis", replicas=1) as redis_set:

        def switch_over() -> float:
            old = redis_set.primary_port()
            redis_set.ask("SENTINEL", "FAILOVER", SERVICE)
            return redis_set.wait_new_primary(old)

        run_across(redis_set, tmp_path, min_replicas=1, fault=switch_over)


def test_replica_lost_is_503_until_it_is_back(tmp_path: Path) -> None:
    with SentinelSet(tmp_path / "redis", replicas=1) as redis_set:
        env = sentinel_env(redis_set, min_replicas=1)
        replica = redis_set.nodes[1]
        with deployment(env, tmp_path) as (api, _):
            with Load(api.port, JOB) as load:
                wait_for(lambda: len(load.accepted()) >= 50, 30)
                replica.kill()
                lost_at = time.monotonic()
                time.sleep(3)
                replica.start()  # empty: it copies everything from the primary again
                back_at = time.monotonic()
                wait_for(
                    lambda: (
                        sum(a.at > back_at for a in load.answers if a.status == 202) >= 50
                        and len(load.answers) >= 200
                    ),
                    30,
                )
            check_answers(load)
            assert len(load.answers) >= 200
            # Started after the primary saw the replica go (a moment), ended before it was
            # back: no copy anywhere but the primary, so none was answered 202.
            alone = [a for a in load.answers if lost_at + 0.2 < a.at < back_at - 0.6]
            assert alone and all(a.status == 503 for a in alone), Counter(a.status for a in alone)
            assert "replicas did not confirm" in alone[-1].body["detail"]
            wait_final(api, load.accepted(), timeout=60, redis_set=redis_set)


def test_unconfirmed_submit_retried_with_its_key_is_the_same_task(tmp_path: Path) -> None:
    # A primary and one replica, no sentinels needed: the replica frozen (SIGSTOP) cannot
    # confirm, so the submit is a 503; its Idempotency-Key retried later finds that task.
    with SentinelSet(tmp_path / "redis", replicas=1) as redis_set:
        primary, replica = redis_set.nodes
        client = make_app(primary.url, REDIS_MIN_REPLICAS="1").test_client()
        body = {"task": "test.echo", "params": {"value": 1}}
        first = client.post("/api/v1/tasks", json=body)
        assert first.status_code == 202
        replica.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            refused = client.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": "k1"})
            assert time.monotonic() - started < 2
            assert refused.status_code == 503
            assert refused.mimetype == "application/problem+json"
            assert refused.headers["Retry-After"]
            assert "same Idempotency-Key" in refused.json["detail"]
            cancel = client.delete(first.json["links"]["self"])
            assert cancel.status_code == 503
        finally:
            replica.signal(signal.SIGCONT)
        again = client.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": "k1"})
        assert again.status_code == 202
        kept = primary.client().get(primary.client().keys("errand:idem:*")[0])
        assert again.json["id"] in kept.decode()
        assert len(primary.client().keys("errand:task:*")) == 2  # the first, and k1's: no third
        # The submit and its WAIT are one round trip (a pipeline), and one script call.
        commands = primary.commands_during(
            lambda: client.post("/api/v1/tasks", json=body).status_code
        )
        sentinels_own = {"info", "publish", "ping", "replconf"}  # the sentinels', the replica's
        assert [c for c in commands if c not in sentinels_own] == ["evalsha", "wait"]


def test_a_submit_answers_without_replicas_when_none_are_asked_for(tmp_path: Path) -> None:
    with SentinelSet(tmp_path / "redis", replicas=1) as redis_set:
        primary, replica = redis_set.nodes
        client = make_app(redis_set.url, REDIS_SENTINEL_MASTER=SERVICE).test_client()
        replica.signal(signal.SIGSTOP)
        try:
            reply = client.post("/api/v1/tasks", json=JOB)
            assert reply.status_code == 202  # REDIS_MIN_REPLICAS=0: one Redis's promise
        finally:
            replica.signal(signal.SIGCONT)
        assert primary.client().exists(f"errand:task:{reply.json['id']}")
        # A cancel broadcasts its revoke through kombu's Sentinel transport.
        cancel = client.delete(reply.headers["Location"])
        assert cancel.status_code == 202 and cancel.json["state"] == "REVOKED"


def test_beat_and_a_waiting_client_follow_the_new_primary(tmp_path: Path) -> None:
    # Beat (redbeat's lock and schedules) and the API's subscriber connection (long-polls)
    # know only the sentinels too: neither is restarted when the primary goes.
    with SentinelSet(tmp_path / "redis", replicas=2) as redis_set:
        env = sentinel_env(redis_set, 1, SCHEDULE_MIN_INTERVAL="1", BEAT_LOCK_TIMEOUT="4")
        beat = Process(
            [str(BIN / "celery"), "-A", "worker:celery_app", "beat"], tmp_path / "beat.log", env
        )
        with deployment(env, tmp_path) as (api, _), beat:
            status, _, schedule = api.call(
                "POST",
                "/api/v1/schedules",
                {"task": "test.echo", "params": {"value": 3}, "interval": 1},
            )
            assert status == 201, schedule
            status, _, task = api.call(
                "POST", "/api/v1/tasks", {"task": "test.sleep", "params": {"seconds": 4}}
            )
            assert status == 202
            url = f"/api/v1/tasks/{task['id']}"
            wait_for(lambda: api.call("GET", url)[2]["state"] == "STARTED", 20)
            _, headers, _ = api.call("GET", url)
            answer: dict[str, Any] = {}
            waiting = threading.Thread(
                target=lambda: answer.update(
                    reply=api.call(
                        "GET", f"{url}?wait=8", headers={"If-None-Match": headers["ETag"]}
                    )
                )
            )
            waiting.start()
            time.sleep(0.5)
            old = redis_set.primary()
            old.kill()
            switched = time.time() - (time.monotonic() - redis_set.wait_new_primary(old.port))
            waiting.join(30)
            # Answered across the switch: the change (200), or, if its notice fell in the
            # moment the subscriber was away, the wait's end (304); then a read has it.
            status, _, body = answer["reply"]
            assert status in {200, 304}, (status, body)
            wait_for(lambda: api.call("GET", url)[2]["state"] == "SUCCESS", 20)
            # The subscriber follows the new primary: a long-poll now answers on the change.
            status, _, task = api.call(
                "POST", "/api/v1/tasks", {"task": "test.sleep", "params": {"seconds": 1}}
            )
            url = f"/api/v1/tasks/{task['id']}"
            wait_for(lambda: api.call("GET", url)[2]["state"] == "STARTED", 20)
            _, headers, _ = api.call("GET", url)
            started = time.monotonic()
            status, _, body = api.call(
                "GET", f"{url}?wait=8", headers={"If-None-Match": headers["ETag"]}
            )
            assert status == 200 and body["state"] == "SUCCESS", (status, body)
            assert time.monotonic() - started < 6  # on the change, not at the wait's end

            def ran_since_switch() -> bool:
                status, _, shown = api.call("GET", schedule["links"]["self"])
                last = status == 200 and shown["last_run_at"]
                return bool(last) and datetime.fromisoformat(last).timestamp() > switched + 1

            try:
                wait_for(ran_since_switch, 30)  # beat runs the schedule on the new primary
            except AssertionError:
                raise AssertionError(beat.log.read_text()[-3000:]) from None
            assert beat.proc is not None and beat.proc.poll() is None  # never restarted


def test_a_script_call_after_the_switch_reaches_the_new_primary_at_once(tmp_path: Path) -> None:
    # A pooled connection to the killed primary is mended on the primary the sentinels
    # name now, in the same call (send_packed_command's own reconnect would go back to
    # the old address: the first status read after a switch answered 503).
    with SentinelSet(tmp_path / "redis", replicas=2) as redis_set:
        client = connect(
            redis_set.url,
            {"REDIS_TIMEOUT": "1", "REDIS_SENTINEL_MASTER": SERVICE, "REDIS_SENTINEL_KWARGS": {}},
            max_connections=1,
        )
        assert scripts.call(client, "PING") == b"PONG"  # its one connection, to this primary
        old = redis_set.primary()
        old.kill()
        redis_set.wait_new_primary(old.port)
        assert scripts.call(client, "SET", "after-switch", "1") == b"OK"
        assert int(scripts.call(client, "INFO", "server").split(b"tcp_port:")[1].split()[0]) == (
            redis_set.primary_port()
        )
