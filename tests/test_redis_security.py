"""Redis with an ACL user, a password and TLS (rediss://), for the API and the workers."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devtools.devstack import free_port, redis_server_binary
from tests.support import Process, errand_env, make_app, submit, wait_for, wait_state


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture()
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server that speaks only TLS and knows only the ACL user ``errand``."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "1", "-subj", "/CN=errand-test-ca", cwd=tmp_path)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1", cwd=tmp_path)  # fmt: skip
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "ext.cnf",
            cwd=tmp_path)  # fmt: skip
    port = free_port()
    command = [
        redis_server_binary(),
        *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
        *("--tls-cert-file", str(tmp_path / "server.crt")),
        *("--tls-key-file", str(tmp_path / "server.key")),
        *("--tls-ca-cert-file", str(tmp_path / "ca.crt"), "--tls-auth-clients", "no"),
        *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        *("--user", "default", "off", "--user", "errand", "on", ">s3cret", "~*", "&*", "+@all"),
    ]
    server = Process(command, tmp_path / "redis.log")
    server.start()
    ca = tmp_path / "ca.crt"
    url = f"rediss://errand:s3cret@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    try:
        wait_for(lambda: _pings(url), 10)
        yield url
    finally:
        server.stop()


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def test_acl_user_and_tls_end_to_end(tls_redis: str, stack: Any, tmp_path: Path) -> None:
    stack("worker", errand_env(tls_redis), tmp_path / "w.log", "tls", concurrency=1)
    client = make_app(tls_redis).test_client()
    task = wait_state(client, submit(client, "test.echo", {"value": 8}), timeout=30)
    assert task["state"] == "SUCCESS" and task["result"] == 8
    assert wait_for(lambda: client.get("/readyz").status_code == 200, 15)
    assert "s3cret" not in (tmp_path / "w.log").read_text()  # no secret in the logs


def test_wrong_password_is_a_clear_503(tls_redis: str) -> None:
    client = make_app(tls_redis.replace(":s3cret@", ":wrong@")).test_client()
    response = client.post("/api/v1/tasks", json={"task": "test.echo", "params": {"value": 1}})
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert "wrong" not in response.get_data(as_text=True)
    readiness = client.get("/readyz")
    assert readiness.status_code == 503
    assert "broker" in readiness.json["detail"]
