"""What a Redis failover costs Errand's clients, fault by fault, in one run.

    .venv/bin/python bench/failover.py [--clients 8] [--before 4] [--after 6]

For each fault, a fresh private primary, replicas and three sentinels
(tests/sentinels.py; Sentinel's timeouts shrunk as in the tests), an API and two
workers that know only the sentinels, and ``--clients`` clients submitting on
fresh connections from ``--before`` seconds before the fault to ``--after``
seconds after Sentinel's switch. Faults: the primary SIGKILLed, a planned
``SENTINEL FAILOVER``, a replica SIGKILLed (and started again 3 s later), each with
``REDIS_MIN_REPLICAS=1``; and the primary SIGKILLed with ``REDIS_MIN_REPLICAS=0``
for comparison. One JSON report, per fault:

- ``answers``: count per status (0: no answer at all);
- ``window_503_s``: from the first to the last 503 around the fault;
- ``resumed_s``: from Sentinel's switch (or the replica's return) to the next 202;
- ``accepted``, ``lost`` (answered 202, never final: must be 0 with replicas asked
  for), ``ran_twice`` (from the test task's run counter);
- ``submit_p99_ms``: submits within 2 s either side of the switch, and overall.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.sentinels import SERVICE, Load, SentinelSet, deployment, final_states, sentinel_env

JOB = {"task": "test.echo", "params": {"value": 1}}


def p99(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    return round(statistics.quantiles(values, n=100)[98] * 1000, 1)


def kill_primary(redis_set: SentinelSet) -> float:
    old = redis_set.primary()
    old.kill()
    return redis_set.wait_new_primary(old.port)


def switch_over(redis_set: SentinelSet) -> float:
    old = redis_set.primary_port()
    redis_set.ask("SENTINEL", "FAILOVER", SERVICE)
    return redis_set.wait_new_primary(old)


def lose_replica(redis_set: SentinelSet) -> float:
    replica = next(node for node in redis_set.nodes if node.port != redis_set.primary_port())
    replica.kill()
    time.sleep(3)
    replica.start()
    return time.monotonic()


def run(
    name: str, fault: Callable[[SentinelSet], float], replicas: int, min_replicas: int,
    args: argparse.Namespace, workdir: Path,
) -> dict[str, Any]:  # fmt: skip
    with SentinelSet(workdir / "redis", replicas=replicas) as redis_set:
        env = sentinel_env(redis_set, min_replicas)
        with deployment(env, workdir) as (api, _):
            with Load(api.port, JOB, clients=args.clients, pause=0.01) as load:
                time.sleep(args.before)
                faulted = time.monotonic()
                switched = fault(redis_set)
                time.sleep(args.after)
            accepted = load.accepted()
            states, lost = final_states(api, accepted, timeout=60)
            store = redis_set.primary().client()
            counts = [int(store.get(f"test:runs:{task_id}") or 0) for task_id in states]
    answers = load.answers
    refused = [a.at for a in answers if a.status == 503]
    after = [a.at for a in answers if a.status == 202 and a.at >= switched]
    near = [a.took for a in answers if abs(a.at - switched) <= 2]
    return {
        "fault": name,
        "min_replicas": min_replicas,
        "replicas": replicas,
        "answers": dict(Counter(str(a.status) for a in answers)),
        "window_503_s": round(max(refused) - min(refused), 2) if refused else 0,
        "switch_after_fault_s": round(switched - faulted, 2),
        "resumed_s": round(min(after) - switched, 2) if after else None,
        "accepted": len(accepted),
        "lost": len(lost),
        "ran_twice": sum(count > 1 for count in counts),
        "submit_p99_ms": {"near_switch": p99(near), "all": p99([a.took for a in answers])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--before", type=float, default=4)
    parser.add_argument("--after", type=float, default=6)
    args = parser.parse_args()
    faults = [
        ("primary killed", kill_primary, 2, 1),
        ("planned switch-over", switch_over, 1, 1),
        ("replica killed, back after 3 s", lose_replica, 1, 1),
        ("primary killed, no replicas asked for", kill_primary, 2, 0),
    ]
    report = []
    with tempfile.TemporaryDirectory(prefix="errand-failover-") as tmp:
        for i, (name, fault, replicas, min_replicas) in enumerate(faults):
            workdir = Path(tmp) / str(i)
            workdir.mkdir()
            report.append(run(name, fault, replicas, min_replicas, args, workdir))
            print(json.dumps(report[-1]), file=sys.stderr)
    print(json.dumps({"failover": report}, indent=2))


if __name__ == "__main__":
    main()
