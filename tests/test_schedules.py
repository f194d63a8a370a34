"""Schedules: the API (validation, ownership, caps) through the test client against a private
Redis; a schedules file; and real beat processes (two at once, restarts, missed runs) whose runs
a real worker completes."""

from __future__ import annotations

import itertools
import json
import signal
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from app import schemas
from app.jobs.schedules import Spec, params_checked
from app.store import keys as names
from app.store.apikeys import create_key, revoke_key
from app.worker.schedules import read_file
from tests.support import BIN, Api, RedisServer, errand_env, make_app, wait_for
from tests.test_openapi import conform  # its checker: status, headers and body
from tests.test_webhooks import SECRET, Receiver, hook_env, verify

URL = "/api/v1/schedules"
SECURED = {"AUTH_DISABLED": "false", "KEY_CACHE_SECONDS": "0", "SCHEDULE_LIMIT": "3"}
EVERY_MINUTE = {"task": "test.echo", "params": {"value": 1}, "interval": 60}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def parse(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.json
    schemas.Problem.model_validate(body)
    return body


def made(client: FlaskClient, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post(URL, json=body, headers=headers)
    assert response.status_code == 201, response.json
    schedule: dict[str, Any] = response.json
    assert response.headers["Location"] == schedule["links"]["self"]
    schemas.ScheduleResource.model_validate(schedule)
    return schedule


# -- the API ------------------------------------------------------------------------------------


def test_an_interval_schedule_is_made_shown_and_set_going(client: FlaskClient) -> None:
    before = time.time()
    schedule = made(client, {**EVERY_MINUTE, "options": {"priority": 3}})
    assert schedule["task"] == "test.echo" and schedule["params"] == {"value": 1, "fail": False}
    assert schedule["interval"] == 60 and schedule["crontab"] is None
    assert schedule["timezone"] is None and schedule["options"] == {"priority": 3}
    assert schedule["paused"] is False and schedule["source"] == "api"
    assert schedule["last_run_at"] is None and schedule["last_error"] is None
    assert set(schedule["links"]) == {"self"}
    # The first run is one interval after it was made, not at once.
    assert before + 59 <= parse(schedule["next_run_at"]) <= time.time() + 61
    got = client.get(schedule["links"]["self"])
    assert got.status_code == 200 and got.json == schedule


def test_a_crontab_runs_in_its_time_zone(client: FlaskClient) -> None:
    body = {"task": "test.echo", "params": {"value": 2}, "crontab": "30 8 * * *"}
    berlin = made(client, {**body, "timezone": "Asia/Kolkata"})  # UTC+5:30, no DST
    assert berlin["timezone"] == "Asia/Kolkata"
    assert berlin["next_run_at"].endswith("T03:00:00.000Z")
    utc = made(client, body)
    assert utc["timezone"] == "UTC" and utc["next_run_at"].endswith("T08:30:00.000Z")
    assert 0 < parse(utc["next_run_at"]) - time.time() <= 24 * 3600


BAD_BODIES = [
    ({"task": "test.echo", "params": {"value": 1}}, "crontab"),  # neither
    ({**EVERY_MINUTE, "crontab": "0 8 * * *"}, "crontab"),  # both
    ({**EVERY_MINUTE, "timezone": "UTC"}, "timezone"),  # a zone without a crontab
    ({**EVERY_MINUTE, "interval": 0}, "interval"),
    ({**EVERY_MINUTE, "interval": 59}, "interval"),  # under SCHEDULE_MIN_INTERVAL (60)
    ({**EVERY_MINUTE, "interval": 366 * 24 * 3600}, "interval"),
    ({**EVERY_MINUTE, "interval": "60"}, "interval"),  # wrong type
    ({**EVERY_MINUTE, "interval": 60.5}, "interval"),
    ({**EVERY_MINUTE, "paused": "yes"}, "paused"),
    ({**EVERY_MINUTE, "params": [1]}, "params"),
    ({**EVERY_MINUTE, "task": 7}, "task"),
    ({**EVERY_MINUTE, "task": "no.such"}, "task"),
    ({**EVERY_MINUTE, "params": {"value": "one"}}, "params"),
    ({**EVERY_MINUTE, "params": {"value": 1, "extra": 2}}, "params"),
    ({**EVERY_MINUTE, "options": {"countdown": 5}}, "options"),  # not for schedules
    ({**EVERY_MINUTE, "options": {"priority": 10}}, "options"),
    ({**EVERY_MINUTE, "owner": "someone"}, "owner"),  # unknown field
    ({**EVERY_MINUTE, "id": "mine"}, "id"),
    ({**EVERY_MINUTE, "callback_url": "ftp://localhost/hook"}, "callback_url"),
    ({**EVERY_MINUTE, "callback_url": "http://127.0.0.1:9/hook"}, "callback_url"),  # private
    ({**EVERY_MINUTE, "callback_url": "https://hooks.example.com/"}, "callback_url"),  # not allowed
    ({**EVERY_MINUTE, "callback_url": "http://localhost/\r\nX: 1"}, "callback_url"),
    ({**EVERY_MINUTE, "callback_url": "http://localhost/" + "a" * 2048}, "callback_url"),
    ({**EVERY_MINUTE, "callback_url": 5}, "callback_url"),
    (
        {
            "task": "email.bulk",  # the task type's check: a template that cannot render
            "params": {"subject": "{{ nope }}", "body": "b", "recipients": [{"to": "a@b.co"}]},
            "interval": 60,
        },
        "params",
    ),
]
BAD_CRONTABS = [
    "61 * * * *",
    "* * * *",
    "* * * * * *",
    "0 0 31 2 *",
    "a b c d e",
    "*/0 * * * *",
    "0 8 * * *\n",
    "0 8 * * \u00e9",
    "",
    "x" * 101,
]


@pytest.mark.parametrize(("body", "where"), BAD_BODIES)
def test_bad_bodies_are_422(client: FlaskClient, body: dict[str, Any], where: str) -> None:
    found = problem(client.post(URL, json=body), 422)
    assert where in [e["loc"][0] for e in found["errors"]], found


@pytest.mark.parametrize("crontab", BAD_CRONTABS)
def test_bad_crontabs_are_422(client: FlaskClient, crontab: str) -> None:
    body = {"task": "test.echo", "params": {"value": 1}, "crontab": crontab}
    found = problem(client.post(URL, json=body), 422)
    assert found["errors"][0]["loc"] == ["crontab"]


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "utc ", "Europe/Berlin\0"])
def test_unknown_time_zones_are_422(client: FlaskClient, zone: str) -> None:
    body = {"task": "test.echo", "params": {"value": 1}, "crontab": "0 8 * * *", "timezone": zone}
    found = problem(client.post(URL, json=body), 422)
    assert found["errors"][0]["loc"] == ["timezone"]


def test_bodies_that_are_not_json_objects(client: FlaskClient, app: Flask) -> None:
    problem(client.post(URL, data="{", content_type="application/json"), 400)
    problem(client.post(URL, data="[]", content_type="application/json"), 400)
    problem(client.post(URL, data="x", content_type="text/plain"), 415)
    big = {**EVERY_MINUTE, "params": {"value": 1, "pad": "x" * app.config["MAX_CONTENT_LENGTH"]}}
    problem(client.post(URL, json=big), 413)


def test_pause_resume_and_retime(client: FlaskClient, redis_server: RedisServer) -> None:
    store = redis_server.client()
    schedule = made(client, EVERY_MINUTE)
    url, entry = schedule["links"]["self"], names.redbeat_entry(schedule["id"])
    assert store.zscore(names.REDBEAT_DUE, entry) is not None
    paused = client.patch(url, json={"paused": True}).json
    assert paused["paused"] is True and paused["next_run_at"] is None
    assert store.zscore(names.REDBEAT_DUE, entry) is None  # beat no longer looks at it
    resumed = client.patch(url, json={"paused": False}).json
    assert resumed["paused"] is False and resumed["next_run_at"] is not None
    cron = client.patch(url, json={"crontab": "0 9 * * mon", "timezone": "Europe/Berlin"}).json
    assert cron["crontab"] == "0 9 * * mon" and cron["interval"] is None
    assert cron["timezone"] == "Europe/Berlin"
    back = client.patch(url, json={"interval": 120}).json
    assert back["interval"] == 120 and back["crontab"] is None and back["timezone"] is None
    changed = client.patch(url, json={"params": {"value": 9}, "options": {"priority": 1}}).json
    assert changed["params"] == {"value": 9, "fail": False} and changed["options"] == {
        "priority": 1
    }
    retyped = client.patch(url, json={"task": "test.sleep", "params": {"seconds": 0}}).json
    assert retyped["task"] == "test.sleep"
    schemas.ScheduleResource.model_validate(retyped)


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"crontab": "0 8 * * *", "interval": 60}, 422),
        ({"timezone": "Europe/Berlin"}, 422),  # an interval schedule has no zone
        ({"interval": 1}, 422),
        ({"crontab": "99 * * * *"}, 422),
        ({"task": "test.sleep"}, 422),  # its params do not fit the new type
        ({"params": {"value": "x"}}, 422),
        ({"paused": 1}, 422),
        ({"crontab": None}, 422),
        ({"nope": True}, 422),
        ({"options": {"countdown": 1}}, 422),
        ({"callback_url": "http://user:pw@localhost/"}, 422),
        ({"callback_url": "http://10.0.0.1/"}, 422),
        ({"callback_url": ["http://localhost/"]}, 422),
    ],
)
def test_bad_changes(client: FlaskClient, changes: dict[str, Any], status: int) -> None:
    schedule = made(client, EVERY_MINUTE)
    problem(client.patch(schedule["links"]["self"], json=changes), status)
    assert client.get(schedule["links"]["self"]).json == schedule  # nothing changed


def test_delete_and_unknown_ids(client: FlaskClient, redis_server: RedisServer) -> None:
    schedule = made(client, EVERY_MINUTE)
    url = schedule["links"]["self"]
    response = client.delete(url)
    assert response.status_code == 204
    assert not redis_server.client().exists(names.redbeat_entry(schedule["id"]))
    for method in ("get", "patch", "delete"):
        problem(getattr(client, method)(url, json={"paused": True}), 404)
    for bad in ("UPPER", "a" * 65, "-x", "a.b", str(uuid.uuid4())):
        problem(client.get(f"{URL}/{bad}"), 404)


def test_listing_pages(client: FlaskClient) -> None:
    for _ in range(3):
        made(client, EVERY_MINUTE)
    first = client.get(f"{URL}?limit=2").json
    assert len(first["items"]) == 2 and first["next_cursor"]
    schemas.ScheduleList.model_validate(first)
    second = client.get(f"{URL}?limit=2&cursor={first['next_cursor']}").json
    seen = [s["id"] for s in first["items"] + second["items"]]
    assert len(seen) == len(set(seen))
    for query in ("limit=0", "limit=201", "limit=x", "cursor=nope"):
        problem(client.get(f"{URL}?{query}"), 422)


@pytest.fixture(scope="module")
def secured(redis_server: RedisServer) -> Flask:
    return make_app(redis_server.url, **SECURED)


def test_a_key_sees_only_its_own_schedules(secured: Flask) -> None:
    store = secured.extensions["errand.redis"]
    alice, bob = create_key(store, "alice"), create_key(store, "bob")
    admin = create_key(store, "ops", admin=True)
    client = secured.test_client()
    mine = made(client, EVERY_MINUTE, **bearer(alice))
    url = mine["links"]["self"]
    assert client.get(url, headers=bearer(admin)).json == mine
    listed = client.get(URL, headers=bearer(alice)).json["items"]
    assert [s["id"] for s in listed] == [mine["id"]]
    assert mine["id"] in [s["id"] for s in client.get(URL, headers=bearer(admin)).json["items"]]
    assert client.get(URL, headers=bearer(bob)).json["items"] == []
    answers = [
        (r.status_code, r.json)
        for r in (
            client.get(url, headers=bearer(bob)),
            client.patch(url, json={"paused": True}, headers=bearer(bob)),
            client.delete(url, headers=bearer(bob)),
        )
    ]
    assert client.get(url, headers=bearer(alice)).json == mine  # bob changed nothing
    assert client.delete(url, headers=bearer(alice)).status_code == 204
    unknown = client.get(url, headers=bearer(alice))
    assert answers == [(404, unknown.json)] * 3  # exactly as an unknown id
    problem(client.get(URL), 401)


def test_a_key_holds_at_most_schedule_limit(secured: Flask) -> None:
    store = secured.extensions["errand.redis"]
    carol = create_key(store, "carol")
    client = secured.test_client()
    kept = [made(client, EVERY_MINUTE, **bearer(carol)) for _ in range(3)]
    found = problem(client.post(URL, json=EVERY_MINUTE, headers=bearer(carol)), 409)
    assert "SCHEDULE_LIMIT" in found["detail"]
    client.delete(kept[0]["links"]["self"], headers=bearer(carol))
    made(client, EVERY_MINUTE, **bearer(carol))


HOOK = "http://localhost:9/hook?token=t"


def test_a_callback_url_is_kept_shown_changed_and_removed(client: FlaskClient) -> None:
    schedule = made(client, {**EVERY_MINUTE, "callback_url": HOOK})
    assert schedule["callback_url"] == HOOK
    assert made(client, EVERY_MINUTE)["callback_url"] is None
    url = schedule["links"]["self"]
    assert client.get(url).json["callback_url"] == HOOK
    assert client.patch(url, json={"paused": True}).json["callback_url"] == HOOK  # kept
    other = "http://127.0.0.1:9/other"
    problem(client.patch(url, json={"callback_url": other}), 422)  # refused as a submit's is
    changed = client.patch(url, json={"callback_url": "http://localhost:9/other"})
    assert changed.status_code == 200 and changed.json["callback_url"] == "http://localhost:9/other"
    removed = client.patch(url, json={"callback_url": None})
    assert removed.status_code == 200 and removed.json["callback_url"] is None
    schemas.ScheduleResource.model_validate(removed.json)
    assert client.get(url).json == removed.json


def test_each_run_carries_the_schedules_callback(app: Flask, client: FlaskClient) -> None:
    schedule = made(client, {**EVERY_MINUTE, "callback_url": HOOK})
    service = app.extensions["errand.schedules"]
    with app.app_context():
        task_id = service.run(schedule["id"], lambda: None)  # as beat makes a run
    assert task_id is not None
    task = client.get(f"/api/v1/tasks/{task_id}").json
    assert task["links"]["schedule"] == schedule["links"]["self"]
    assert task["callback"] == {"url": HOOK, "state": "pending", "attempts": 0,
                                "last_status": None, "last_error": None,
                                "delivered_at": None}  # fmt: skip
    bare = made(client, EVERY_MINUTE)
    with app.app_context():
        bare_task = service.run(bare["id"], lambda: None)
    assert client.get(f"/api/v1/tasks/{bare_task}").json["callback"] is None
    for made_id in (task_id, bare_task):
        client.delete(f"/api/v1/tasks/{made_id}")


# -- a schedules file ---------------------------------------------------------------------------

GOOD_FILE = """
[schedules.nightly]
task = "test.echo"
params = { value = 3 }
crontab = "0 2 * * *"
timezone = "Europe/Berlin"
callback_url = "http://localhost:9/nightly"

[schedules.often]
task = "test.echo"
params = { value = 4 }
interval = 60
options = { priority = 2 }
"""


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[schedules.x\n", "cannot be read"),
        ("[other]\na = 1\n", "holds only"),
        ('[schedules.Bad]\ntask = "test.echo"\ninterval = 60\n', "a name is"),
        ('[schedules.x]\ntask = "no.such"\ninterval = 60\n', "task: not one of"),
        ('[schedules.x]\ntask = "test.echo"\nparams = {value = 1}\n', "crontab"),
        ('[schedules.x]\ntask = "test.echo"\nparams = {value = 1}\ncrontab = "9 9 9"\n', "crontab"),
        ('[schedules.x]\ntask = "test.echo"\ninterval = 60\n', "params.value"),
        ('[schedules.x]\ntask = "test.echo"\nparams = {value = 1}\ninterval = 60\nz = 1\n', "z"),
        (
            '[schedules.x]\ntask = "test.echo"\nparams = {value = 1}\ninterval = 60\n'
            'callback_url = "ftp://localhost/"\n',
            "callback_url: the scheme must be http or https",
        ),
    ],
)
def test_a_bad_schedules_file_is_one_clear_line(
    app: Flask, tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as stopped:
        read_file(path, app.extensions["errand.schedules"])
    message = str(stopped.value)
    assert message.startswith(f"errand: SCHEDULES_FILE {path}: ") and "\n" not in message
    assert says in message, message
    with pytest.raises(SystemExit, match="cannot be read"):
        read_file(tmp_path / "missing.toml", app.extensions["errand.schedules"])


def test_file_schedules_are_admin_only_and_kept_in_step(secured: Flask, tmp_path: Path) -> None:
    service = secured.extensions["errand.schedules"]
    store = secured.extensions["errand.redis"]
    path = tmp_path / "schedules.toml"
    path.write_text(GOOD_FILE)
    service.sync_file(read_file(path, service))
    admin, dave = create_key(store, "ops2", admin=True), create_key(store, "dave")
    client = secured.test_client()
    nightly = client.get(f"{URL}/nightly", headers=bearer(admin)).json
    assert nightly["source"] == "file" and nightly["timezone"] == "Europe/Berlin"
    assert nightly["callback_url"] == "http://localhost:9/nightly"
    schemas.ScheduleResource.model_validate(nightly)
    assert client.get(f"{URL}/nightly", headers=bearer(dave)).status_code == 404
    problem(client.patch(f"{URL}/often", json={"paused": True}, headers=bearer(admin)), 409)
    problem(client.delete(f"{URL}/often", headers=bearer(admin)), 409)
    path.write_text(GOOD_FILE.split("[schedules.often]")[0])  # "often" left the file
    service.sync_file(read_file(path, service))
    assert client.get(f"{URL}/often", headers=bearer(admin)).status_code == 404
    assert client.get(f"{URL}/nightly", headers=bearer(admin)).json == nightly  # as it was
    service.sync_file({})
    assert client.get(f"{URL}/nightly", headers=bearer(admin)).status_code == 404


def test_the_beat_side_validates_params_as_a_submit(app: Flask) -> None:
    echo = app.extensions["errand.task_types"]["test.echo"]
    assert params_checked(echo, {"value": 1}) == {"value": 1, "fail": False}
    service = app.extensions["errand.schedules"]
    with pytest.raises(Exception, match="not valid"):
        service.check(Spec("test.echo", {"value": "x"}, interval=60), params_checked)


# -- real beat processes ------------------------------------------------------------------------

BEAT = [str(BIN / "celery"), "-A", "worker:celery_app", "beat", "-l", "INFO"]
# Short locks so a second beat takes over fast; intervals of a second for the tests.
BEAT_ENV = {"BEAT_LOCK_TIMEOUT": "3", "SCHEDULE_MIN_INTERVAL": "1"}


def runs_of(store: redis.Redis, schedule_id: str) -> list[tuple[float, str]]:
    """(created, task id) of every task record that is a run of the schedule, oldest first."""
    found = []
    for key in store.scan_iter(f"{names.RECORD_PREFIX}*", count=1000):
        schedule, created = store.hmget(key, "schedule", "created_at")
        if schedule and schedule.decode() == schedule_id:
            found.append((parse(created.decode()), key.decode().rsplit(":", 1)[-1]))
    return sorted(found)


def beat(stack: Any, env: dict[str, str], log: Path) -> Any:
    proc = stack("process", BEAT, log, env)
    return proc


def test_two_beats_run_each_run_once_and_a_worker_completes_them(
    stack: Any, tmp_path: Path
) -> None:
    server = stack("redis")
    env = errand_env(server.url, **BEAT_ENV)
    stack("worker", env, tmp_path / "w.log", "runs", concurrency=2)
    client = make_app(server.url, **BEAT_ENV).test_client()
    store = server.client()
    first = beat(stack, env, tmp_path / "beat1.log")
    second = beat(stack, env, tmp_path / "beat2.log")
    logs = [tmp_path / "beat1.log", tmp_path / "beat2.log"]
    wait_for(lambda: any(b"Acquired lock" in p.read_bytes() for p in logs if p.exists()), 30)
    schedule = made(client, {"task": "test.echo", "params": {"value": 7}, "interval": 1})
    wait_for(lambda: runs_of(store, schedule["id"]), 15)
    start = time.time()
    time.sleep(6)
    counted = [r for r in runs_of(store, schedule["id"]) if start <= r[0] < start + 6]
    assert 3 <= len(counted) <= 7, counted  # about one a second: not two
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(counted)]
    assert min(gaps) > 0.5, gaps
    # Each run is a real task, linked to its schedule, that the worker completes.
    task_url = f"/api/v1/tasks/{counted[0][1]}"
    task = wait_for(lambda: (t := client.get(task_url).json)["state"] == "SUCCESS" and t, 20)
    assert task["result"] == 7 and task["links"]["schedule"] == schedule["links"]["self"]
    shown = client.get(schedule["links"]["self"]).json
    assert shown["last_run_at"] and shown["links"]["last_task"].startswith("/api/v1/tasks/")
    # The beat holding the lock dies: the other takes over within the lock's timeout.
    holder = first if b"Acquired lock" in logs[0].read_bytes() else second
    holder.kill()
    killed = time.time()
    wait_for(lambda: len([r for r in runs_of(store, schedule["id"]) if r[0] > killed]) >= 3, 15)
    later = [r for r in runs_of(store, schedule["id"]) if r[0] > killed]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(later)]
    assert not gaps or min(gaps) > 0.5, gaps


def test_pause_resume_delete_and_a_restart(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    env = errand_env(server.url, **BEAT_ENV)
    stack("worker", env, tmp_path / "w.log", "runs", concurrency=2)
    client = make_app(server.url, **BEAT_ENV).test_client()
    store = server.client()
    log = tmp_path / "beat.log"
    running = beat(stack, env, log)
    schedule = made(client, {"task": "test.echo", "params": {"value": 1}, "interval": 1})
    url, sid = schedule["links"]["self"], schedule["id"]
    wait_for(lambda: len(runs_of(store, sid)) >= 2, 30)
    assert client.patch(url, json={"paused": True}).status_code == 200
    time.sleep(1.5)  # a run that beat had in hand when the pause came may land
    paused_at = len(runs_of(store, sid))
    time.sleep(3)
    assert len(runs_of(store, sid)) == paused_at  # paused: no runs
    client.patch(url, json={"paused": False})
    wait_for(lambda: len(runs_of(store, sid)) >= paused_at + 2, 10)
    # Beat stops and starts again: the schedule goes on from Redis.
    running.stop()
    stopped = len(runs_of(store, sid))
    beat(stack, env, log)
    wait_for(lambda: len(runs_of(store, sid)) >= stopped + 2, 30)
    assert client.delete(url).status_code == 204
    time.sleep(1.5)
    deleted_at = len(runs_of(store, sid))
    time.sleep(3)
    assert len(runs_of(store, sid)) == deleted_at  # deleted: no runs


def test_runs_missed_while_beat_was_down_run_once(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    env = errand_env(server.url, **BEAT_ENV)
    client = make_app(server.url, **BEAT_ENV).test_client()
    store = server.client()
    schedule = made(client, {"task": "test.echo", "params": {"value": 1}, "interval": 2})
    log = tmp_path / "beat.log"
    first = beat(stack, env, log)
    wait_for(lambda: runs_of(store, schedule["id"]), 30)
    first.signal(signal.SIGTERM)
    first.stop()
    before = len(runs_of(store, schedule["id"]))
    time.sleep(9)  # four runs are missed
    assert len(runs_of(store, schedule["id"])) == before
    back = time.time()
    beat(stack, env, log)
    wait_for(lambda: [r for r in runs_of(store, schedule["id"]) if r[0] > back], 30)
    caught_up = time.time()
    time.sleep(1.2)  # less than the interval: only the one catch-up run so far
    after = [r for r in runs_of(store, schedule["id"]) if r[0] > back]
    assert len(after) == 1, (after, caught_up)
    wait_for(lambda: len([r for r in runs_of(store, schedule["id"]) if r[0] > back]) >= 2, 10)
    later = [r for r in runs_of(store, schedule["id"]) if r[0] > back]
    assert later[1][0] - later[0][0] > 1.5  # then one interval on, as before


def test_a_revoked_owner_or_a_full_in_flight_cap_skips_runs(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    settings = {**BEAT_ENV, **SECURED, "IN_FLIGHT_LIMIT": "1"}
    env = errand_env(server.url, **settings)
    app = make_app(server.url, **settings)
    store = server.client()
    erin, frank = create_key(store, "erin"), create_key(store, "frank")
    client = app.test_client()
    body = {"task": "test.echo", "params": {"value": 1}, "interval": 1}
    erins = made(client, body, **bearer(erin))
    franks = made(client, body, **bearer(frank))
    revoke_key(store, frank.split("_", 2)[1])
    beat(stack, env, tmp_path / "beat.log")  # no worker: erin's first run stays in flight

    def error_of(schedule: dict[str, Any], key: str) -> str | None:
        shown = client.get(schedule["links"]["self"], headers=bearer(key)).json
        return shown["last_error"] if shown else None

    wait_for(lambda: "have not finished" in (error_of(erins, erin) or ""), 30)
    assert len(runs_of(store, erins["id"])) == 1
    admin = create_key(store, "ops", admin=True)
    wait_for(lambda: "revoked" in (error_of(franks, admin) or ""), 30)
    assert runs_of(store, franks["id"]) == []


def test_beat_refuses_a_bad_file_and_runs_a_good_one(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    bad = tmp_path / "bad.toml"
    bad.write_text('[schedules.x]\ntask = "test.echo"\ninterval = 1\n')
    env = errand_env(server.url, **BEAT_ENV, SCHEDULES_FILE=str(bad))
    refused = beat(stack, env, tmp_path / "bad.log")
    assert refused.proc.wait(30) != 0
    lines = (tmp_path / "bad.log").read_text().splitlines()
    assert f"errand: SCHEDULES_FILE {bad}: schedule 'x': params.value: Field required" in lines
    good = tmp_path / "good.toml"
    good.write_text('[schedules.tick]\ntask = "test.echo"\nparams = {value = 5}\ninterval = 1\n')
    env = errand_env(server.url, **BEAT_ENV, SCHEDULES_FILE=str(good))
    stack("worker", env, tmp_path / "w.log", "runs", concurrency=1)
    beat(stack, env, tmp_path / "good.log")
    store = server.client()
    run = wait_for(lambda: runs_of(store, "tick"), 30)[0][1]
    client = make_app(server.url, **BEAT_ENV).test_client()
    task = wait_for(lambda: (t := client.get(f"/api/v1/tasks/{run}").json)["result"] and t, 20)
    assert task["links"]["schedule"] == "/api/v1/schedules/tick"


def test_schedule_answers_conform_to_the_document(stack: Any, tmp_path: Path) -> None:
    """Every schedule route's real answers, under gunicorn, as the OpenAPI document says."""
    server = stack("redis")
    store = server.client()
    alice, admin = create_key(store, "alice"), create_key(store, "ops", admin=True)
    env = errand_env(server.url, **SECURED)
    with Api(env, tmp_path / "api.log", workers=1) as api:
        doc = api.call("GET", "/api/v1/openapi.json")[2]
        one = URL + "/{schedule_id}"

        def call(method: str, path: str, route: str, body: Any = None, key: str = alice) -> Any:
            answer = api.call(method, path, body, key=key)
            conform(doc, route, method, answer)
            return answer

        status, headers, created = call("POST", URL, URL, EVERY_MINUTE)
        assert status == 201 and headers["Location"] == created["links"]["self"]
        mine = created["links"]["self"]
        assert call("GET", mine, one)[0] == 200
        assert call("GET", URL, URL)[0] == 200
        assert call("GET", URL, URL, key=admin)[0] == 200
        assert call("PATCH", mine, one, {"paused": True})[0] == 200
        assert call("PATCH", mine, one, {"interval": 1})[0] == 422
        assert call("POST", URL, URL, {"task": "no.such", "interval": 60})[0] == 422
        assert call("GET", f"{URL}?limit=0", URL)[0] == 422
        for _ in range(2):
            call("POST", URL, URL, EVERY_MINUTE)
        assert call("POST", URL, URL, EVERY_MINUTE)[0] == 409  # SCHEDULE_LIMIT is 3
        assert call("GET", mine, one, key=admin)[0] == 200
        assert call("DELETE", mine, one)[0] == 204
        assert call("GET", mine, one)[0] == 404
        assert call("DELETE", mine, one)[0] == 404
        assert call("GET", URL, URL, key="")[0] == 401


def test_each_run_of_a_schedule_delivers_its_webhook(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    env = hook_env(server.url, **BEAT_ENV)
    stack("worker", env, tmp_path / "w.log", "hooked-runs", concurrency=2)
    client = make_app(server.url, **env).test_client()
    beat(stack, env, tmp_path / "beat.log")
    with Receiver() as receiver:
        body = {"task": "test.echo", "params": {"value": 5}, "interval": 1}
        schedule = made(client, {**body, "callback_url": receiver.url()})
        wait_for(lambda: len(receiver.requests) >= 2, 30)
        client.delete(schedule["links"]["self"])
        time.sleep(1.5)  # a run beat had in hand may still land, and be delivered
        requests = list(receiver.requests)
    ids = [r["headers"]["Errand-Task-Id"] for r in requests]
    assert len(ids) == len(set(ids)), ids  # each run's webhook once
    for request in requests:
        assert verify(SECRET, request["headers"]["Errand-Signature"], request["body"])
        sent = json.loads(request["body"])
        schemas.TaskResource.model_validate(sent)
        assert sent["id"] == request["headers"]["Errand-Task-Id"]
        assert sent["state"] == "SUCCESS" and sent["result"] == 5
        assert sent["links"]["schedule"] == schedule["links"]["self"]
        assert sent["callback"]["url"] == receiver.url()
