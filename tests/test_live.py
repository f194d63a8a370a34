"""Live status: ETags and 304s, long-polls, Server-Sent Events and stream tokens, for real.

The API runs under gunicorn (gevent, as deployed), against a private Redis and a real
worker; waits are woken by the result store's PUBLISH.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.store.apikeys import create_key
from tests.support import Api, RedisServer, Worker, errand_env, wait_for

pytestmark = pytest.mark.timeout(180)

SLOW = {"task": "demo.progress", "params": {"steps": 3, "delay": 0.4}}
LATER = {"task": "demo.progress", "params": {"steps": 1, "delay": 0}, "options": {"countdown": 600}}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A private Redis, a worker and the API (one gunicorn worker), with keys on."""
    work = tmp_path_factory.mktemp("live")
    server = RedisServer(work / "redis")
    server.start()
    try:
        env = errand_env(
            server.url,
            AUTH_DISABLED="false",
            WAIT_LIMIT="3",
            SSE_HEARTBEAT="1",
            STREAM_TOKEN_TTL="5",
        )
        keys = {name: create_key(server.client(), name) for name in ("alice", "bob")}
        with (
            Worker(env, work / "worker.log", "live") as worker,
            Api(env, work / "api.log", workers=1) as api,
        ):
            yield {"api": api, "keys": keys, "server": server, "worker": worker}
    finally:
        server.stop()


def call(api: Api, method: str, path: str, key: str, body: Any = None, **headers: str) -> Any:
    return api.call(method, path, body, key=key, headers=headers)


def submit(live: dict[str, Any], job: dict[str, Any], who: str = "alice") -> dict[str, Any]:
    status, _, task = call(live["api"], "POST", "/api/v1/tasks", live["keys"][who], job)
    assert status == 202, task
    return task


def events(reply: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    """Parse Server-Sent Events from a streaming answer; comments count as heartbeats."""
    event: dict[str, Any] = {}
    for raw in reply:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            yield {"heartbeat": True}
        elif line == "":
            if "data" in event:
                yield event
            event = {}
        else:
            name, _, value = line.partition(": ")
            event[name] = json.loads(value) if name == "data" else value


def stream(api: Api, path: str, **headers: str) -> tuple[http.client.HTTPResponse, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=20)
    connection.request("GET", path, headers=headers)
    return connection.getresponse(), connection


def stream_status(api: Api, path: str, **headers: str) -> int:
    """The status an events URL answers with (the connection closed at once)."""
    reply, connection = stream(api, path, **headers)
    connection.close()
    return reply.status


def test_etag_and_304(live: dict[str, Any]) -> None:
    api, key = live["api"], live["keys"]["alice"]
    url = submit(live, LATER)["links"]["self"]
    status, headers, task = call(api, "GET", url, key)
    assert status == 200 and task["state"] == "PENDING"
    etag = headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    status, headers, body = call(api, "GET", url, key, **{"If-None-Match": etag})
    assert status == 304 and body == "" and headers["ETag"] == etag
    assert call(api, "GET", url, key, **{"If-None-Match": '"stale"'})[0] == 200


def test_long_poll_wakes_on_the_change(live: dict[str, Any]) -> None:
    api, key = live["api"], live["keys"]["alice"]
    task = submit(live, SLOW)
    _, headers, _ = call(api, "GET", task["links"]["self"], key)
    seen, states = headers["ETag"], []
    started = time.monotonic()
    while True:
        status, headers, task = call(
            api, "GET", task["links"]["self"] + "?wait=10", key, **{"If-None-Match": seen}
        )
        assert status == 200, (status, task)  # every answer brings a change, none times out
        assert headers["ETag"] != seen
        seen = headers["ETag"]
        states.append((task["state"], (task["progress"] or {}).get("current")))
        if task["state"] == "SUCCESS":
            break
    assert time.monotonic() - started < 8
    assert ("PROGRESS", 1) in states and states[-1][0] == "SUCCESS"


def test_long_poll_times_out_with_the_current_state(live: dict[str, Any]) -> None:
    api, key = live["api"], live["keys"]["alice"]
    url = submit(live, LATER)["links"]["self"]
    etag = call(api, "GET", url, key)[1]["ETag"]
    started = time.monotonic()
    status, _, _ = call(api, "GET", url + "?wait=1", key, **{"If-None-Match": etag})
    assert status == 304 and 1 <= time.monotonic() - started < 3
    started = time.monotonic()
    status, _, task = call(api, "GET", url + "?wait=1", key)
    assert status == 200 and task["state"] == "PENDING" and time.monotonic() - started >= 1
    started = time.monotonic()  # a stale If-None-Match answers at once
    status, _, _ = call(api, "GET", url + "?wait=5", key, **{"If-None-Match": '"old"'})
    assert status == 200 and time.monotonic() - started < 1


@pytest.mark.parametrize("wait", ["31", "-1", "soon", "1.5"])
def test_bad_wait_is_422(live: dict[str, Any], wait: str) -> None:
    url = submit(live, LATER)["links"]["self"]
    status, _, body = call(live["api"], "GET", f"{url}?wait={wait}", live["keys"]["alice"])
    assert status == 422 and body["errors"][0]["loc"] == ["query", "wait"]


def test_events_deliver_every_state_in_order_and_end(live: dict[str, Any]) -> None:
    key = live["keys"]["alice"]
    task = submit(live, SLOW)
    reply, connection = stream(
        live["api"], task["links"]["self"] + "/events", Authorization=f"Bearer {key}"
    )
    assert reply.status == 200 and reply.getheader("Content-Type").startswith("text/event-stream")
    received = [e for e in events(reply) if "data" in e]  # ends when the server closes
    connection.close()
    assert all(e["event"] == "state" for e in received)
    assert len({e["id"] for e in received}) == len(received)
    states = [e["data"]["state"] for e in received]
    assert states[0] in {"PENDING", "STARTED"} and states[-1] == "SUCCESS"
    progress = [e["data"]["progress"]["current"] for e in received if e["data"]["progress"]]
    assert progress == sorted(progress) and {1, 2, 3} <= set(progress)
    assert received[-1]["data"]["result"] == {"steps": 3}


def test_last_event_id_resumes_without_missing_the_end(live: dict[str, Any]) -> None:
    api, key = live["api"], live["keys"]["alice"]
    task = submit(live, SLOW)
    path = task["links"]["self"] + "/events"
    reply, connection = stream(api, path, Authorization=f"Bearer {key}")
    first = next(e for e in events(reply) if "data" in e)
    connection.close()  # the client goes away before the end
    wait_for(lambda: call(api, "GET", task["links"]["self"], key)[2]["state"] == "SUCCESS", 20)
    reply, connection = stream(api, path, **{"Authorization": f"Bearer {key}",
                                             "Last-Event-ID": first["id"]})  # fmt: skip
    resumed = [e for e in events(reply) if "data" in e]
    connection.close()
    assert [e["data"]["state"] for e in resumed] == ["SUCCESS"]
    reply, connection = stream(api, path, **{"Authorization": f"Bearer {key}",
                                             "Last-Event-ID": resumed[0]["id"]})  # fmt: skip
    assert [e for e in events(reply) if "data" in e] == []  # it has the end: nothing more
    connection.close()


def test_heartbeats_while_nothing_changes(live: dict[str, Any]) -> None:
    key = live["keys"]["alice"]
    path = submit(live, LATER)["links"]["self"] + "/events"
    reply, connection = stream(live["api"], path, Authorization=f"Bearer {key}")
    seen = []
    for event in events(reply):
        seen.append(event)
        if sum(1 for e in seen if e.get("heartbeat")) == 2:
            break
    connection.close()
    assert seen[0]["data"]["state"] == "PENDING"


def test_stream_tokens_are_bound_to_one_task_and_expire(live: dict[str, Any]) -> None:
    api, key = live["api"], live["keys"]["alice"]
    task, other = submit(live, SLOW), submit(live, LATER)
    status, _, minted = call(api, "POST", task["links"]["self"] + "/stream-token", key)
    assert status == 200 and minted["expires_in"] == 5
    assert minted["events"] == f"{task['links']['self']}/events?token={minted['token']}"
    reply, connection = stream(api, minted["events"])  # no Authorization header at all
    assert reply.status == 200
    assert [e for e in events(reply) if "data" in e][-1]["data"]["state"] == "SUCCESS"
    connection.close()
    elsewhere = f"{other['links']['self']}/events?token={minted['token']}"
    assert stream_status(api, elsewhere) == 401  # not for that task
    assert stream_status(api, task["links"]["self"] + "/events?token=forged") == 401
    status, _, late = call(api, "POST", other["links"]["self"] + "/stream-token", key)
    time.sleep(6)
    assert stream_status(api, late["events"]) == 401  # expired


def test_another_owners_task_streams_nothing(live: dict[str, Any]) -> None:
    api, bob = live["api"], live["keys"]["bob"]
    url = submit(live, LATER)["links"]["self"]  # alice's
    unknown = "/api/v1/tasks/00000000-0000-4000-8000-000000000000"
    for path in (url, unknown):
        foreign = [
            call(api, "GET", path + "/events", bob)[0],
            call(api, "POST", path + "/stream-token", bob)[0],
            call(api, "GET", path + "?wait=2", bob)[0],
        ]
        assert foreign == [404, 404, 404]


def test_open_waits_per_key_are_capped(live: dict[str, Any]) -> None:
    api, key = live["api"], live["keys"]["bob"]
    urls = [submit(live, LATER, "bob")["links"]["self"] for _ in range(4)]
    auth = {"Authorization": f"Bearer {key}"}
    held = [stream(api, url + "/events", **auth) for url in urls[:3]]
    assert all(reply.status == 200 for reply, _ in held)
    status, headers, body = call(api, "GET", urls[3] + "/events", key)
    assert status == 429 and headers["Retry-After"] and "3 long-polls" in body["detail"]
    assert call(api, "GET", urls[3] + "?wait=1", key)[0] == 429
    held[0][1].close()
    wait_for(lambda: call(api, "GET", urls[3] + "?wait=0", key)[0] == 200, 5)
    for _, connection in held[1:]:
        connection.close()
    wait_for(lambda: stream_status(api, urls[3] + "/events", **auth) == 200, 10)


def test_one_subscriber_connection_serves_every_wait(live: dict[str, Any]) -> None:
    api, key, server = live["api"], live["keys"]["alice"], live["server"]
    tasks = [submit(live, LATER) for _ in range(3)]
    answers: list[int] = []

    def poll(url: str) -> None:
        answers.append(call(api, "GET", url + "?wait=3", key)[0])

    threads = [threading.Thread(target=poll, args=(t["links"]["self"],)) for t in tasks]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    clients = server.client().client_list()
    subscribers = [c for c in clients if int(c.get("sub", 0)) > 0]
    for thread in threads:
        thread.join()
    assert answers == [200, 200, 200]
    assert len(subscribers) == 1 and int(subscribers[0]["sub"]) >= 3  # one connection, 3+ waits


def test_a_stream_counts_once_against_the_read_limit(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    env = errand_env(server.url, AUTH_DISABLED="false", RATE_LIMIT_READ="4 per minute")
    key = create_key(server.client(), "reader")
    stack("worker", env, tmp_path / "w.log", "limited")
    with Api(env, tmp_path / "g.log", workers=1) as api:
        _, _, task = api.call("POST", "/api/v1/tasks", SLOW, key=key)
        reply, connection = stream(
            api, task["links"]["self"] + "/events", Authorization=f"Bearer {key}"
        )
        assert len([e for e in events(reply) if "data" in e]) >= 4  # many events, one request
        connection.close()
        statuses = [api.call("GET", task["links"]["self"], key=key)[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
