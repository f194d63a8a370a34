"""Instructions per submit and per status read, in process, counted by valgrind's callgrind.

    .venv/bin/python bench/instructions.py [status|submit ...]

Wall-clock rates move by a fifth between runs on a shared machine; instruction
counts do not. For each route this runs itself under ``valgrind --tool=callgrind``
twice, making 300 and then 1,300 requests through the WSGI app (keys, rate limits
and the in-flight cap on, against a private Redis, no client sockets), and prints
the difference over the 1,000 extra requests: one request's instructions, start-up
and warm-up left out. valgrind has no SHA extensions, so hashing counts dearer there
than it runs. Needs valgrind (Debian's package; installed here when missing).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HIGH = "1000000000 per second"  # counted, never reached
COUNTS = (300, 1300)


def requests(route: str, count: int) -> None:
    """Make ``count`` requests of ``route`` through the app (after 50 to warm it up)."""
    from tests.support import RedisServer, errand_env

    redis = RedisServer(Path(tempfile.mkdtemp(prefix="errand-instructions-")))
    redis.start()
    try:
        settings = errand_env(
            redis.url, TASK_MODULES="bench.tasks", AUTH_DISABLED="false", LOG_LEVEL="WARNING",
            RATE_LIMIT_SUBMIT=HIGH, RATE_LIMIT_READ=HIGH, IN_FLIGHT_LIMIT="1000000000",
        )  # fmt: skip
        os.environ.update(settings)
        from app import create_app
        from app.store.apikeys import create_key

        key = create_key(redis.client(), "bench")
        app = create_app().wsgi_app
        body = json.dumps({"task": "bench.noop", "params": {}}).encode()
        answers: list[str] = []

        def call(method: str, path: str, data: bytes = b"") -> bytes:
            environ = {
                "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
                "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
                "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(data),
                "wsgi.errors": sys.stderr, "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "bench",
                "HTTP_AUTHORIZATION": f"Bearer {key}",
                "CONTENT_TYPE": "application/json" if data else "",
                "CONTENT_LENGTH": str(len(data)) if data else "",
            }  # fmt: skip
            return b"".join(app(environ, lambda status, *_: answers.append(status)))

        task = json.loads(call("POST", "/api/v1/tasks", body))
        actions: dict[str, Callable[[], Any]] = {
            "submit": lambda: call("POST", "/api/v1/tasks", body),
            "status": lambda: call("GET", task["links"]["self"]),
        }
        for _ in range(50):
            actions[route]()
        for _ in range(count):
            actions[route]()
        assert set(answers) <= {"200 OK", "202 ACCEPTED"}, set(answers)
    finally:
        redis.stop()


def counted(route: str, count: int) -> int:
    """All the instructions of a process that makes ``count`` requests of ``route``."""
    with tempfile.TemporaryDirectory() as work:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/out",
             sys.executable, __file__, "--run", route, str(count)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    found = re.search(r"Collected : ([\d,]+)", done.stderr)
    if found is None:
        sys.exit(done.stderr[-2000:])
    return int(found[1].replace(",", ""))


def main() -> None:
    if sys.argv[1:2] == ["--run"]:
        requests(sys.argv[2], int(sys.argv[3]))
        return
    if not shutil.which("valgrind"):
        print("installing valgrind with apt-get ...", file=sys.stderr)
        install = ["apt-get", "install", "-y", "-qq", "valgrind"]
        subprocess.run(install, check=True, stdout=sys.stderr)
    report = {}
    for route in sys.argv[1:] or ["status", "submit"]:
        few, many = (counted(route, count) for count in COUNTS)
        report[f"instructions_per_{route}"] = (many - few) // (COUNTS[1] - COUNTS[0])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
