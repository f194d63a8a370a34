"""Settings come from the environment; unsafe or unusable ones stop the start."""

from __future__ import annotations

import subprocess

import pytest

import config
from tests.support import BIN, ROOT


def test_production_refuses_to_start_without_secret_key() -> None:
    with pytest.raises(config.ConfigError, match="SECRET_KEY"):
        config.load({"ERRAND_ENV": "production"})
    with pytest.raises(config.ConfigError, match="WEBHOOK_SECRET"):
        config.load({"ERRAND_ENV": "production", "SECRET_KEY": "x" * 32})
    production = {"ERRAND_ENV": "production", "SECRET_KEY": "x" * 32, "WEBHOOK_SECRET": "w" * 32}
    assert config.load(production)["WEBHOOK_SECRET"] == "w" * 32
    # Development derives a webhook secret of its own from SECRET_KEY.
    derived = config.load({"SECRET_KEY": "k"})["WEBHOOK_SECRET"]
    assert (
        derived not in {"k", ""} and derived == config.load({"SECRET_KEY": "k"})["WEBHOOK_SECRET"]
    )


def test_worker_process_names_the_missing_setting() -> None:
    result = subprocess.run(
        [str(BIN / "celery"), "-A", "worker:celery_app", "report"],
        cwd=ROOT,
        env={"ERRAND_ENV": "production", "PATH": str(BIN)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"ERRAND_ENV": "staging"}, "ERRAND_ENV"),
        ({"TASK_RETENTION": "soon"}, "TASK_RETENTION"),
        ({"VISIBILITY_TIMEOUT": "1"}, "VISIBILITY_TIMEOUT"),
        ({"REDIS_TIMEOUT": "0"}, "REDIS_TIMEOUT"),
        ({"MAIL_USE_TLS": "maybe"}, "MAIL_USE_TLS"),
        ({"MAIL_DEFAULT_SENDER": "me@example.com\x0bBcc: x@example.com"}, "MAIL_DEFAULT_SENDER"),
        ({"MAIL_DEFAULT_SENDER": "Me\u2028 <me@example.com>"}, "MAIL_DEFAULT_SENDER"),
        ({"CELERY_RESULT_BACKEND": "rpc://"}, "CELERY_RESULT_BACKEND"),
        ({"REDIS_URL": "sentinel://s1:26379;sentinel://s2:26379/0"}, "REDIS_SENTINEL_MASTER"),
        (
            {"REDIS_URL": "sentinel://s1:26379;redis://s2/0", "REDIS_SENTINEL_MASTER": "m"},
            "REDIS_URL",
        ),
        ({"REDIS_MIN_REPLICAS": "-1"}, "REDIS_MIN_REPLICAS"),
        ({"REDIS_TIMEOUT": "0.5", "REDIS_REPLICA_WAIT": "0.5"}, "REDIS_REPLICA_WAIT"),
    ],
)
def test_bad_values_are_named(env: dict[str, str], name: str) -> None:
    with pytest.raises(config.ConfigError, match=name):
        config.load(env)


def test_defaults() -> None:
    settings = config.load({})
    assert settings["MAX_CONTENT_LENGTH"] == 1024 * 1024
    assert settings["TASK_RETENTION"] == 7 * 24 * 3600
    celery = settings["CELERY"]
    assert celery["broker_url"] == "redis://localhost:6379/0"
    assert celery["result_backend"].endswith("+redis://localhost:6379/0")
    assert celery["task_acks_late"] and celery["task_reject_on_worker_lost"]
    assert celery["broker_transport_options"]["visibility_timeout"] == 60
    assert celery["accept_content"] == ["json"]
    assert settings["PRUNE_INTERVAL"] == 3600
    broker = config.load({"REDIS_URL": "redis://r:1/2", "CELERY_BROKER_URL": "amqp://q//"})
    assert broker["CELERY"]["broker_url"] == "amqp://q//"
    assert broker["REDIS_URL"] == "redis://r:1/2"


def test_sentinel_settings_reach_every_redis_use() -> None:
    url = "sentinel://:pw@s1:26379;sentinel://s2:26380;sentinel://s3/2"
    settings = config.load(
        {"REDIS_URL": url, "REDIS_SENTINEL_MASTER": "errand", "REDIS_SENTINEL_PASSWORD": "sp"}
    )
    celery = settings["CELERY"]
    assert celery["broker_url"] == url
    assert celery["result_backend"] == f"app.worker.results:SentinelResultStore+{url}"
    for options in (celery["broker_transport_options"], celery["result_backend_transport_options"]):
        assert options["master_name"] == "errand"
        assert options["sentinel_kwargs"]["password"] == "sp"
    assert settings["REDIS_MIN_REPLICAS"] == 0
    assert settings["REDIS_REPLICA_WAIT"] == 0.5


def test_a_bad_sentinel_url_is_named_without_its_password() -> None:
    with pytest.raises(config.ConfigError) as error:
        config.load({"REDIS_URL": "sentinel://:hunter2@s1:x", "REDIS_SENTINEL_MASTER": "m"})
    assert "REDIS_URL" in str(error.value) and "hunter2" not in str(error.value)


def test_sentinel_url_parts() -> None:
    from app.store import sentinels

    addresses, params = sentinels("sentinel://u:p%40ss@h1:1;sentinel://h2/3")
    assert addresses == [("h1", 1), ("h2", 26379)]
    assert params == {"password": "p@ss", "username": "u", "db": 3}
