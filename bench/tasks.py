"""Task types for the benchmarks (``TASK_MODULES=bench.tasks``).

``bench.noop`` does nothing (bench/speed.py). ``bench.cpu`` and ``bench.io`` are the
CPU-bound and the I/O-bound job of bench/pools.py, each declared on its own queue, as a
team would send them to differently pooled workers.
"""

from __future__ import annotations

import hashlib
import urllib.request

from pydantic import Field

from app.tasks.registry import Params, task_type


class Nothing(Params):
    pass


@task_type("bench.noop", Nothing)
def noop(params: Nothing) -> None:
    """Do nothing: what is measured is everything around the task."""


class Crunch(Params):
    rounds: int = Field(ge=1, le=10_000_000, description="SHA-256 rounds (about 0.5 µs each)")


def crunch(rounds: int) -> bytes:
    """Hash a short value ``rounds`` times: the GIL is held throughout (short inputs)."""
    digest = b"errand"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest


@task_type("bench.cpu", Crunch, queue="cpu")
def cpu(params: Crunch) -> str:
    """CPU-bound: hash a value many times over."""
    return crunch(params.rounds).hex()[:16]


class Fetch(Params):
    # The bench's own server on loopback, never anywhere else.
    url: str = Field(pattern=r"^http://127\.0\.0\.1:[0-9]{1,5}/[a-z0-9/]{0,50}$")


@task_type("bench.io", Fetch, queue="io")
def io(params: Fetch) -> int:
    """I/O-bound: one HTTP call to a local server that answers after a fixed delay."""
    with urllib.request.urlopen(params.url, timeout=10) as reply:
        return len(reply.read())


task_types = [noop, cpu, io]
