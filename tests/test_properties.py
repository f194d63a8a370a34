"""Property-based tests: any body a client can send gets 202 or a 4xx problem+json,
never a 500, and nothing is queued or recorded for a 4xx."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import InvalidBody, Unprocessable
from app.web import tasks
from tests.support import RedisServer, make_app

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
OUTCOMES: Counter[int] = Counter()
FIELDS = ["steps", "delay", "to", "subject", "body", "html", "cc", "bcc", "reply_to", "recipients"]
TASKS = ["demo.progress", "email.send", "email.bulk", "test.echo", "errand.prune_index", "x"]
NEAR = st.fixed_dictionaries(
    {
        "task": st.sampled_from(TASKS) | JSON,
        "params": st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), JSON, max_size=5)
        | JSON,
    },
    optional={
        "options": st.dictionaries(
            st.sampled_from(["countdown", "priority", "eta", "queue"]),
            st.integers(-5, 4000) | JSON,
            max_size=3,
        ),
        "queue": JSON,
    },
)
VALID_ISH = st.fixed_dictionaries(
    {
        "task": st.just("demo.progress"),
        "params": st.fixed_dictionaries(
            {"steps": st.integers(-2, 1002), "delay": st.floats(-1, 11, allow_nan=False)}
        ),
    },
    optional={"options": st.fixed_dictionaries({"countdown": st.integers(-1, 3601)})},
)
EMAILS = st.fixed_dictionaries(
    {
        "task": st.just("email.send"),
        "params": st.fixed_dictionaries(
            {
                "to": st.lists(st.emails() | st.text(max_size=30), min_size=0, max_size=3),
                "subject": st.text(max_size=40),
                "body": st.text(max_size=40),
            }
        ),
    }
)


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FlaskClient, Any]]:
    server = RedisServer(tmp_path_factory.mktemp("props"))  # no worker: what is queued stays
    server.start()
    try:
        yield make_app(server.url).test_client(), server.client()
    finally:
        server.stop()


def footprint(store: Any) -> tuple[int, int, int]:
    queued = sum(int(store.llen(k)) for k in store.scan_iter("celery*") if store.type(k) == b"list")
    return int(store.zcard("errand:index")), queued, len(store.keys("errand:task:*"))


def check(client: FlaskClient, store: Any, data: bytes, content_type: str) -> None:
    before = footprint(store)
    response = client.post("/api/v1/tasks", data=data, content_type=content_type)
    OUTCOMES[response.status_code] += 1
    assert response.status_code == 202 or 400 <= response.status_code < 500, response.data
    after = footprint(store)
    if response.status_code == 202:
        assert after[0] == before[0] + 1 and after[2] == before[2] + 1
    else:
        assert response.mimetype == "application/problem+json"
        body = response.json
        assert body["status"] == response.status_code and body["title"] and body["detail"]
        assert after == before, "a rejected submit left something behind"


PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(body=JSON | NEAR | VALID_ISH | EMAILS)
def test_any_json_body(quiet: tuple[FlaskClient, Any], body: Any) -> None:
    check(*quiet, json.dumps(body).encode(), "application/json")


@PROPERTY
@given(
    data=st.binary(max_size=200),
    content_type=st.sampled_from(["application/json", "text/plain", ""]),
)
def test_any_bytes(quiet: tuple[FlaskClient, Any], data: bytes, content_type: str) -> None:
    check(*quiet, data, content_type)


def _read_by_the_standard_library(raw: bytes) -> Any:
    """What ``parse_object`` answered before it read with orjson: its reference."""
    try:
        body = json.loads(
            raw,
            parse_constant=tasks._reject_constant,
            parse_float=tasks._finite,
            parse_int=tasks._integer,
        )
    except tasks.NotFinite:
        return Unprocessable
    except (ValueError, RecursionError):
        return InvalidBody
    return body if isinstance(body, dict) else InvalidBody


def _read(raw: bytes) -> Any:
    try:
        return tasks.parse_object(raw)
    except (Unprocessable, InvalidBody) as exc:
        return type(exc)


NUMBERS = st.integers() | st.floats() | st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30])


@settings(max_examples=400, deadline=None)
@given(
    body=st.dictionaries(st.text(max_size=8), JSON | NUMBERS, max_size=4)
    | st.lists(NUMBERS, max_size=3),
    spaces=st.sampled_from(["", " ", "\n"]),
)
def test_orjson_and_the_standard_library_read_any_json_alike(body: Any, spaces: str) -> None:
    raw = json.dumps(body, indent=spaces or None).encode()  # NaN and Infinity included
    assert repr(_read(raw)) == repr(_read_by_the_standard_library(raw))


@settings(max_examples=400, deadline=None)
@given(raw=st.binary(max_size=60) | st.text(max_size=60).map(str.encode))
def test_orjson_and_the_standard_library_read_any_bytes_alike(raw: bytes) -> None:
    assert repr(_read(raw)) == repr(_read_by_the_standard_library(raw))


def test_the_bodies_reached_both_outcomes() -> None:
    # Runs after the properties above: they must have met valid bodies as well as bad ones.
    assert OUTCOMES[202] > 0
    assert sum(n for status, n in OUTCOMES.items() if status != 202) > 0
