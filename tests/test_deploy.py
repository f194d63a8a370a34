"""What a deployment copies: compose.yaml, the Dockerfile, the lock files, gunicorn's
start and stop (one line for a refused setting, no metrics directory left behind), and
scripts/run's stack (one dev key, reused; nothing started when a port is taken)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from app.store import apikeys
from devtools.devstack import dev_key, free_port
from tests.support import BIN, ROOT, Api, RedisServer, errand_env, wait_for

pytestmark = pytest.mark.timeout(120)

COMPOSE = ROOT / "compose.yaml"
ERRAND_SERVICES = {"api", "worker", "worker-io", "beat"}
WORKERS = ("worker", "worker-io")
SENTINEL_PROFILE = {"redis-replica", "sentinel1", "sentinel2", "sentinel3"}
MAIL_SETTINGS = {
    "MAIL_SERVER",
    "MAIL_PORT",
    "MAIL_USERNAME",
    "MAIL_PASSWORD",
    "MAIL_USE_TLS",
    "MAIL_USE_SSL",
    "MAIL_DEFAULT_SENDER",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def words(value: str | list[str]) -> str:
    """A command or healthcheck test as one string."""
    return value if isinstance(value, str) else " ".join(value)


def test_compose_has_the_stack_and_builds_errand_once(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "mail", *ERRAND_SERVICES, *SENTINEL_PROFILE}
    images = {services[name]["image"] for name in ERRAND_SERVICES}
    assert len(images) == 1  # the one image, built from the one Dockerfile
    for name in ERRAND_SERVICES:
        build = services[name]["build"]
        assert (build if isinstance(build, str) else build["context"]) == "."
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in {"redis", "mail", *SENTINEL_PROFILE}:
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image  # pinned


def test_compose_sentinel_profile_adds_replicas_and_three_sentinels(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in SENTINEL_PROFILE:
        assert services[name]["profiles"] == ["sentinel"]  # off unless asked for
    replica = services["redis-replica"]
    command = words(replica["command"])
    assert "--replicaof redis 6379" in command and "--appendonly yes" in command
    assert replica["deploy"]["replicas"] >= 2  # one promoted, one left to confirm writes
    for name in ("sentinel1", "sentinel2", "sentinel3"):
        script = words(services[name]["command"])
        assert "sentinel monitor errand redis 6379 2" in script  # a quorum of two of three
        assert "--sentinel" in script
    assert compose["x-errand-env"]["REDIS_MIN_REPLICAS"].endswith(":-0}")


def test_compose_runs_exactly_one_beat(compose: dict[str, Any]) -> None:
    beats = [s for s in compose["services"].values() if " beat" in words(s.get("command", ""))]
    assert len(beats) == 1
    assert beats[0].get("deploy", {}).get("replicas", 1) == 1
    # Its schedules and its lock are in Redis (celery-redbeat): no schedule file, no volume.
    assert "volumes" not in beats[0] and " -s" not in words(beats[0]["command"])


def test_compose_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api = words(services["api"]["healthcheck"]["test"])
    assert "python" in api and "/readyz" in api
    for name in WORKERS:
        worker = words(services[name]["healthcheck"]["test"])
        assert "celery -A worker:celery_app inspect ping -d celery@$$HOSTNAME" in worker
    assert "ping" in words(services["redis"]["healthcheck"]["test"])
    # The image's HEALTHCHECK is the API's: beat must not inherit it.
    assert services["beat"]["healthcheck"] == {"disable": True}


def test_compose_redis_keeps_every_job(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = words(redis["command"])
    for setting in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert setting in command
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert set(compose["volumes"]) >= {v.split(":")[0] for v in redis["volumes"]}


def test_compose_environment_is_errands_settings(compose: dict[str, Any]) -> None:
    known = (ROOT / "config.py").read_text() + (ROOT / "gunicorn.conf.py").read_text()
    for name in ERRAND_SERVICES:
        env = compose["services"][name]["environment"]
        assert env == compose["x-errand-env"]
        assert set(env) >= MAIL_SETTINGS | {"ERRAND_ENV", "SECRET_KEY", "REDIS_URL"}
        for setting in env:
            assert f'"{setting}"' in known, f"{setting} is no setting of Errand's"
    assert compose["x-errand-env"]["ERRAND_ENV"].endswith(":-production}")
    grace = int(re.sub(r"\D", "", compose["x-errand-env"]["WORKER_SHUTDOWN_GRACE"]))
    for name in WORKERS:
        assert int(compose["services"][name]["stop_grace_period"].rstrip("s")) > grace


def test_compose_workers_split_the_queues(compose: dict[str, Any]) -> None:
    # One prefork worker for everything but io, one threads worker for io, where the
    # default TASK_ROUTES sends mail: every queue has a consumer, and only one.
    cpu = words(compose["services"]["worker"]["command"])
    io = words(compose["services"]["worker-io"]["command"])
    assert "-P prefork" in cpu and "-X io" in cpu
    assert "-P threads" in io and "-Q io" in io
    assert compose["x-errand-env"]["TASK_ROUTES"].endswith(":-email.*=io}")


def test_compose_variables_have_defaults_or_are_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    used = re.findall(r"\$\{([A-Z_][A-Z0-9_]*)(:?[-?])?", COMPOSE.read_text())
    assert used
    for name, kind in used:
        assert kind, f"${{{name}}} has no default"
        if kind.endswith("?"):
            assert f"`{name}`" in readme, f"{name} is required but not in the README"


def compose_command() -> list[str] | None:
    """`docker compose`, or the older `docker-compose`, if this machine has one."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        found = subprocess.run([*command, "version"], capture_output=True, timeout=30)
        if found.returncode == 0:
            return command
    return None


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no docker compose here: the structure tests above stand in for it")
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}

    def config(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, "-f", str(COMPOSE), "config", "-q"],
            cwd=tmp_path,  # no .env from the work tree
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    valid = config(SECRET_KEY="s" * 48, WEBHOOK_SECRET="w" * 48)
    assert valid.returncode == 0, valid.stderr
    missing = config()
    assert missing.returncode != 0 and "SECRET_KEY" in missing.stderr


def test_dockerfile_installs_the_lock_and_checks_readyz() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --require-hashes -r requirements/main.txt" in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile
    assert re.search(r"^HEALTHCHECK .*\n.*/readyz", dockerfile, re.MULTILINE)
    assert "BEAT_SCHEDULE_FILE" not in dockerfile  # beat keeps its state in Redis
    assert re.search(r"^USER 10001$", dockerfile, re.MULTILINE)


# -- the lock files ------------------------------------------------------------------------------


def pins(name: str) -> dict[str, str]:
    """Package -> version of requirements/<name>.txt; every one must carry a hash."""
    text = (ROOT / "requirements" / f"{name}.txt").read_text()
    found = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = entry.split(" ", 1)[0]
        if first.startswith("#"):
            continue
        package, _, version = first.partition("==")
        assert version, f"{first} in {name}.txt is not pinned"
        assert "--hash=sha256:" in entry, f"{first} in {name}.txt has no hash"
        found[canonicalize_name(package)] = version
    return found


def test_the_lock_files_pin_every_dependency_as_pyproject_asks() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        "main": project["dependencies"],
        "dev": [*project["dependencies"], *project["optional-dependencies"]["dev"]],
        "test": [*project["dependencies"], *project["optional-dependencies"]["test"]],
    }
    for name, requirements in wanted.items():
        pinned = pins(name)
        for line in requirements:
            requirement = Requirement(line)
            version = pinned.get(canonicalize_name(requirement.name))
            assert version, f"{requirement.name} is not in {name}.txt: run requirements/update"
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{name}.txt pins {requirement.name}=={version}, not {requirement.specifier}: "
                "run requirements/update"
            )


def test_the_lock_files_agree() -> None:
    main, dev, test = pins("main"), pins("dev"), pins("test")
    assert {p: dev.get(p) for p in main} == main
    assert {p: test.get(p) for p in dev} == dev


def test_both_commands_install_from_the_lock() -> None:
    for script, lock in (("run", "dev"), ("test", "test")):
        text = (ROOT / "scripts" / script).read_text()
        assert f"pip_install --require-hashes -r requirements/{lock}.txt" in text
        assert "pip_install --no-deps -e ." in text


# -- gunicorn's master ---------------------------------------------------------------------------


def leftovers(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("errand-metrics-*"))


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({}, "errand: SECRET_KEY must be set when ERRAND_ENV=production"),
        (
            {"SECRET_KEY": "s" * 32, "AUTH_DISABLED": "true"},
            "errand: AUTH_DISABLED must not be set when ERRAND_ENV=production",
        ),
    ],
)
def test_gunicorn_refuses_a_setting_in_one_line(
    tmp_path: Path, env: dict[str, str], line: str
) -> None:
    result = subprocess.run(
        [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0", "wsgi:app"],
        cwd=ROOT,
        env={
            "PATH": str(BIN),
            "PYTHONPATH": str(ROOT),
            "TMPDIR": str(tmp_path),
            "ERRAND_ENV": "production",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert line in result.stderr.splitlines()
    assert "Traceback" not in output
    assert "Booting worker" not in output  # refused before any worker started
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_gunicorn_removes_the_metrics_directory_it_made(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = errand_env(redis_server.url, TMPDIR=str(tmp_path))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with Api(env, tmp_path / "api.log", workers=1) as api:
        made = wait_for(lambda: leftovers(tmp_path), 10)
        assert len(made) == 1 and made[0].is_dir()
        assert api.process.proc is not None
        api.process.proc.terminate()  # SIGTERM to the master alone, as an orchestrator does
        assert api.process.proc.wait(30) == 0
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_gunicorn_keeps_a_metrics_directory_it_was_given(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    given = tmp_path / "metrics"
    given.mkdir()
    env = errand_env(redis_server.url, TMPDIR=str(tmp_path), PROMETHEUS_MULTIPROC_DIR=str(given))
    with Api(env, tmp_path / "api.log", workers=1):
        pass  # stopped with SIGTERM
    assert given.is_dir()
    assert leftovers(tmp_path) == []


# -- scripts/run's stack -------------------------------------------------------------------------


def test_the_dev_key_is_kept_and_reused_while_it_is_valid(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/8"
    db = redis.Redis.from_url(url)
    db.flushdb()
    path = tmp_path / "dev-key"
    try:
        first = dev_key(url, path)
        assert path.read_text().strip() == first
        assert path.stat().st_mode & 0o777 == 0o600
        assert dev_key(url, path) == first
        assert dev_key(url, path) == first
        assert [k["id"] for k in apikeys.list_keys(db)] == [apikeys.key_id_of(first)]
        assert apikeys.lookup(db, apikeys.key_id_of(first) or "")["admin"] == "1"

        apikeys.revoke_key(db, apikeys.key_id_of(first) or "")
        second = dev_key(url, path)  # revoked: a new one
        assert second != first and path.read_text().strip() == second
        db.flushdb()
        third = dev_key(url, path)  # Redis forgot it: a new one
        assert third != second and dev_key(url, path) == third
        path.write_text(third[:-4] + "xxxx\n")  # not the key Redis knows
        assert dev_key(url, path) not in {third, third[:-4] + "xxxx"}
    finally:
        db.flushdb()


def test_the_stack_starts_nothing_when_a_port_is_taken(tmp_path: Path) -> None:
    with contextlib.ExitStack() as held:
        ports = {}
        for name in ("api", "mail", "redis"):  # "redis": listens, but no Redis answers
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", free_port()))
            sock.listen()
            ports[name] = sock.getsockname()[1]
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(ROOT),
            "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
            "GUNICORN_BIND": f"127.0.0.1:{ports['api']}",
            "MAIL_PORT": str(ports["mail"]),
        }
        stack = subprocess.Popen(
            [sys.executable, "-m", "devtools.devstack"],
            cwd=tmp_path,  # its var/ would be here
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = stack.communicate(timeout=60)
        finally:
            if stack.poll() is None:  # it started something after all: it stops it on SIGTERM
                os.killpg(stack.pid, signal.SIGTERM)
                stack.communicate(timeout=30)
    assert stack.returncode != 0
    for name, setting in (("api", "GUNICORN_BIND"), ("mail", "MAIL_PORT"), ("redis", "REDIS_URL")):
        assert f"port {ports[name]} on 127.0.0.1" in err and setting in err
    assert "Errand is up" not in out + err and "Traceback" not in err
    assert not (tmp_path / "var").exists()
