"""A queue per task type: declared, routed per deploy (TASK_ROUTES), consumed with -Q."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from kombu import Connection

import config
from app.tasks import routing
from app.tasks.registry import Params, task_type
from tests.support import RedisServer, errand_env, make_app, runs, settle, submit, wait_for
from tests.support import wait_state as wait_task

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


class Nothing(Params):
    pass


@task_type("test.cpu_declared", Nothing, queue="cpu")
def cpu_declared(params: Nothing) -> None:
    """A type that declares its queue."""


@task_type("test.plain", Nothing)
def plain(params: Nothing) -> None:
    """A type that does not."""


REGISTRY = {t.name: t for t in (cpu_declared, plain)}


# -- settings ----------------------------------------------------------------------------------


def test_routes_are_parsed_in_order() -> None:
    loaded = config.load({"TASK_ROUTES": " demo.progress=io , email.*=mail,*=rest "})
    assert loaded["TASK_ROUTES"] == [("demo.progress", "io"), ("email.*", "mail"), ("*", "rest")]
    assert config.load({})["TASK_ROUTES"] == []
    assert config.load({"TASK_QUEUE": "jobs-1.a_b"})["CELERY"]["task_default_queue"] == "jobs-1.a_b"


@pytest.mark.parametrize(
    "raw",
    [
        "demo.progress",  # no queue
        "demo.progress=",
        "=io",
        "demo.progress=io x",
        "demo.progress=i/o",
        "demo.*.x=io",  # * only at the end
        "demo progress=io",
        "demo.progress=unacked",  # kombu's own Redis keys
        "demo.progress=_kombu.binding.io",
        f"demo.progress={'q' * 65}",
        "demo.progress=io\x1b[31m",
        "demo.progress=\u00e9",
    ],
)
def test_bad_routes_stop_the_start(raw: str) -> None:
    with pytest.raises(config.ConfigError, match="TASK_ROUTES") as caught:
        config.load({"TASK_ROUTES": raw})
    assert "\x1b" not in str(caught.value).replace("\\x1b", "")  # quoted with repr


@pytest.mark.parametrize("raw", ["a b", "x/y", "unacked", "-io", "q" * 65])
def test_bad_default_queue_stops_the_start(raw: str) -> None:
    with pytest.raises(config.ConfigError, match="TASK_QUEUE"):
        config.load({"TASK_QUEUE": raw})


# -- resolving ---------------------------------------------------------------------------------


def test_declared_queue_then_default() -> None:
    settled = routing.resolve(REGISTRY, [], "celery")
    assert settled["test.cpu_declared"].queue == "cpu"
    assert settled["test.plain"].queue == "celery"
    assert routing.queues(settled, "celery") == ["celery", "cpu"]
    assert REGISTRY["test.plain"].queue is None  # the declaration itself is unchanged


def test_routes_override_and_the_first_match_wins() -> None:
    routes = [("test.cpu_*", "heavy"), ("test.*", "light"), ("test.plain", "never")]
    with pytest.raises(config.ConfigError, match=r"test\.plain routes no task type"):
        routing.resolve(REGISTRY, routes, "celery")
    settled = routing.resolve(REGISTRY, routes[:2], "celery")
    assert settled["test.cpu_declared"].queue == "heavy"
    assert settled["test.plain"].queue == "light"
    assert routing.queues(settled, "celery") == ["celery", "heavy", "light"]


def test_a_declared_queue_must_be_a_name() -> None:
    def bad_queue(params: Nothing) -> None:
        """Declared with a queue that is no name."""

    bad = task_type("test.bad_queue", Nothing, queue="no good")(bad_queue)
    with pytest.raises(config.ConfigError, match=r"test\.bad_queue"):
        routing.resolve({bad.name: bad}, [], "celery")


def test_task_types_and_celery_know_each_queue(redis_server: RedisServer) -> None:
    app = make_app(redis_server.url, TASK_ROUTES="test.echo=cpu,email.*=mail")
    listing = app.test_client().get("/api/v1/task-types").json["items"]
    queues = {item["name"]: item["queue"] for item in listing}
    assert queues["test.echo"] == "cpu"
    assert queues["email.send"] == queues["email.bulk"] == "mail"
    assert queues["demo.progress"] == "celery"
    conf = app.extensions["celery"].conf
    assert [q.name for q in conf.task_queues] == ["celery", "cpu", "mail"]
    assert conf.task_routes["email.bulk"] == {"queue": "mail"}


def test_a_route_to_no_task_type_stops_the_start(redis_server: RedisServer) -> None:
    with pytest.raises(config.ConfigError, match="emial"):
        make_app(redis_server.url, TASK_ROUTES="emial.*=mail")


# -- real workers ------------------------------------------------------------------------------


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Redis as the broker, then the machine's RabbitMQ with queues of this test's own."""
    if request.param == "redis":
        yield {"TASK_ROUTES": "test.echo=cpu,test.sleep=io"}
        return
    tag = uuid.uuid4().hex[:10]
    names = [f"errand-t-{tag}", f"errand-t-{tag}-cpu", f"errand-t-{tag}-io"]
    yield {
        "CELERY_BROKER_URL": RABBITMQ,
        "TASK_QUEUE": names[0],
        "TASK_ROUTES": f"test.echo={names[1]},test.sleep={names[2]}",
    }
    with Connection(RABBITMQ, connect_timeout=5) as connection:
        channel = connection.default_channel
        for name in names:  # leave the shared RabbitMQ as it was
            channel.queue_delete(name)
            channel.exchange_delete(name)


def queue_of(app: Flask, task: str) -> str:
    found: str = app.extensions["errand.task_types"][task].queue
    return found


def test_workers_take_only_their_queues(stack: Any, tmp_path: Path, broker: dict[str, str]) -> None:
    server = stack("redis")
    app = make_app(server.url, **broker)
    client = app.test_client()
    cpu, io = queue_of(app, "test.echo"), queue_of(app, "test.sleep")
    env = errand_env(server.url, **broker)
    stack("worker", env, tmp_path / "cpu.log", "cpu", queues=cpu)

    # Both priorities: on Redis each is its own list of the queue (app.worker.messages).
    done = [submit(client, "test.echo", {"value": p}, priority=p) for p in (0, 9)]
    waiting = submit(client, "test.sleep", {"seconds": 0})
    for url in done:
        assert wait_task(client, url)["state"] == "SUCCESS"
    settle(1.5)
    assert client.get(waiting).json["state"] == "PENDING"  # no worker takes io
    assert runs(server.client(), waiting) == 0

    listing = {q["name"]: q for q in client.get("/api/v1/queues").json["items"]}
    assert set(listing) == {app.config["CELERY"]["task_default_queue"], cpu, io}
    assert listing[io]["depth"] == 1 and listing[io]["workers"] == 0
    assert listing[io]["task_types"] == ["test.sleep"]
    assert listing[cpu]["workers"] == 1 and "test.echo" in listing[cpu]["task_types"]
    workers = client.get("/api/v1/workers").json["items"]
    assert [w["queues"] for w in workers] == [[cpu]]

    stack("worker", env, tmp_path / "io.log", "io", queues=io)
    assert wait_task(client, waiting)["state"] == "SUCCESS"
    assert runs(server.client(), waiting) == 1


def test_orphan_on_another_queue_is_dropped(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    env = errand_env(server.url, TASK_ROUTES="test.echo=cpu")
    log = tmp_path / "cpu.log"
    stack("worker", env, log, "cpu", queues="cpu")
    app = make_app(server.url, TASK_ROUTES="test.echo=cpu")
    # Not through the API: no record, so the worker must not run it (on the cpu queue too).
    sent = app.extensions["celery"].send_task("test.echo", args=[{"value": 1}])
    wait_for(lambda: "has no Errand record" in log.read_text(), 20)
    assert int(server.client().get(f"test:runs:{sent.id}") or 0) == 0
    assert server.client().llen("cpu") == 0


def test_the_compose_split_sends_mail_to_the_threads_worker(stack: Any, tmp_path: Path) -> None:
    # compose.yaml's two workers: prefork for every queue but io, threads for io.
    server = stack("redis")
    sink = stack("smtp")
    settings = {"TASK_ROUTES": "email.*=io", "MAIL_PORT": str(sink.port)}
    settings["MAIL_SERVER"] = "127.0.0.1"
    env = errand_env(server.url, **settings)
    stack("worker", env, tmp_path / "cpu.log", "cpu", exclude="io")
    stack("worker", env, tmp_path / "io.log", "io", concurrency=20, pool="threads", queues="io")
    client = make_app(server.url, **settings).test_client()
    mail = {"to": ["ada@example.com"], "subject": "split", "body": "hello"}
    sent = submit(client, "email.send", mail)
    echoed = submit(client, "test.echo", {"value": 3})
    assert wait_task(client, sent)["state"] == "SUCCESS"
    assert wait_task(client, echoed)["state"] == "SUCCESS"
    assert "split" in sink.received()
    assert sent.rsplit("/", 1)[-1] in (tmp_path / "io.log").read_text()
    assert echoed.rsplit("/", 1)[-1] in (tmp_path / "cpu.log").read_text()
    workers = {w["name"].split("@")[0]: w for w in client.get("/api/v1/workers").json["items"]}
    assert workers["io"]["queues"] == ["io"] and workers["io"]["pool"] == "thread"
    assert workers["cpu"]["queues"] == ["celery"]
