"""The ``flask --app wsgi keys`` commands, against a private Redis named by REDIS_URL."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator

import pytest
import redis
from click.testing import Result

from app.store import keys as names
from app.store.apikeys import digest
from tests.support import BIN, ROOT, RedisServer, errand_env, make_app

SECURED = {"AUTH_DISABLED": "false", "KEY_CACHE_SECONDS": "0"}
pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def db_url(redis_server: RedisServer) -> Iterator[str]:
    """A database of the private Redis that only this test uses."""
    url = redis_server.url.rsplit("/", 1)[0] + "/9"
    db = redis.Redis.from_url(url)
    db.flushdb()
    yield url
    db.flushdb()


@pytest.fixture()
def keys(db_url: str) -> Callable[..., Result]:
    runner = make_app(db_url, **SECURED).test_cli_runner()

    def run(*args: str) -> Result:
        return runner.invoke(args=["keys", *args])

    return run


def made(keys: Callable[..., Result], *args: str) -> str:
    result = keys("create", *args)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def id_of(key: str) -> str:
    return key.split("_", 2)[1]


def test_list_has_a_header_and_aligned_columns(keys: Callable[..., Result]) -> None:
    made_now = [made(keys, "billing-service"), made(keys, "ops team", "--admin"), made(keys, "old")]
    gone = made_now[2]
    assert keys("revoke", id_of(gone)).exit_code == 0
    lines = keys("list").stdout.splitlines()
    header = lines[0]
    assert header.split() == ["ID", "NAME", "ROLE", "CREATED", "STATE"]
    assert len(lines) == 4
    at = {column: header.index(column) for column in ("NAME", "ROLE", "CREATED", "STATE")}
    rows = lines[1:]
    assert [row[at["NAME"] :].split("  ")[0].strip() for row in rows] == [
        "billing-service",
        "ops team",
        "old",
    ]
    assert [row[at["ROLE"] :].split()[0] for row in rows] == ["user", "admin", "user"]
    assert all(row[at["CREATED"] :][:4].isdigit() for row in rows)
    assert [row[at["STATE"] :].split()[0] for row in rows] == ["active", "active", "revoked"]
    assert [row.split()[0] for row in rows] == [id_of(key) for key in made_now]  # oldest first


def test_list_as_json_never_shows_a_key_or_its_hash(keys: Callable[..., Result]) -> None:
    key = made(keys, "ci-bot", "--admin")
    result = keys("list", "--json")
    assert result.exit_code == 0
    listed = json.loads(result.stdout)
    assert listed == [
        {
            "id": id_of(key),
            "name": "ci-bot",
            "role": "admin",
            "created_at": listed[0]["created_at"],
            "revoked_at": None,
            "state": "active",
        }
    ]
    assert key not in result.stdout and digest(key) not in result.stdout
    keys("revoke", key)
    again = json.loads(keys("list", "--json").stdout)[0]
    assert again["revoked_at"] and again["state"] == f"revoked {again['revoked_at']}"


def test_revoke_takes_the_id_or_the_whole_key(keys: Callable[..., Result], db_url: str) -> None:
    by_id, whole = made(keys, "one"), made(keys, "two")
    for given, key in ((id_of(by_id), by_id), (whole, whole)):
        result = keys("revoke", given)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"revoked {id_of(key)} ")
    app = make_app(db_url, **SECURED)
    for key in (by_id, whole):
        headers = {"Authorization": f"Bearer {key}"}
        assert app.test_client().get("/api/v1/task-types", headers=headers).status_code == 401


def test_revoking_twice_says_already_revoked_and_changes_nothing(
    keys: Callable[..., Result], db_url: str
) -> None:
    key = made(keys, "twice")
    assert keys("revoke", key).exit_code == 0
    record = redis.Redis.from_url(db_url).hgetall(names.apikey(id_of(key)))
    again = keys("revoke", id_of(key))
    assert again.exit_code == 0
    assert "already revoked" in again.stdout
    assert redis.Redis.from_url(db_url).hgetall(names.apikey(id_of(key))) == record


def test_revoking_an_unknown_key_fails(keys: Callable[..., Result]) -> None:
    for given, shown in (("nosuchkey", "nosuchkey"), ("erd_0badc0ffee00_secret", "0badc0ffee00")):
        result = keys("revoke", given)
        assert result.exit_code != 0
        assert f"no key {shown}" in result.output


def test_revoke_says_what_it_takes(keys: Callable[..., Result]) -> None:
    text = keys("revoke", "--help").stdout
    assert "keys list" in text and "erd_<id>_<secret>" in text


def test_the_commands_read_redis_url(redis_server: RedisServer, db_url: str) -> None:
    env = errand_env(db_url, **SECURED)

    def flask(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "flask"), "--app", "wsgi", "keys", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = flask("create", "ci-bot", "--admin")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert "cannot show it again" in created.stderr
    assert redis.Redis.from_url(db_url).sismember(names.APIKEY_IDS, id_of(key))
    assert not redis_server.client().sismember(names.APIKEY_IDS, id_of(key))  # database 0
    listed = flask("list").stdout
    assert id_of(key) in listed and "ci-bot" in listed and key not in listed
    assert flask("revoke", key).returncode == 0
    assert "revoked" in flask("list").stdout
