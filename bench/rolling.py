"""A rolling restart under steady load: failed requests, lost jobs and jobs run twice.

    .venv/bin/python bench/rolling.py [--clients 8] [--web-concurrency 2] [--rounds 2]

Starts a private Redis, two API instances (gunicorn on 127.0.0.2 and 127.0.0.3)
and two workers, then, while ``--clients`` clients (half on fresh connections,
half keeping theirs alive) submit ``test.sleep`` jobs and read them back through
both addresses, runs each phase ``--rounds`` times, with its own client tally:

- ``reload``: each API in turn gets gunicorn's graceful reload (HUP to the master),
  its old workers serving until the new ones have loaded the app (gunicorn.conf.py);
- ``reload_without_wait``: the same with ``GUNICORN_RELOAD_WAIT=0``, gunicorn's own
  behaviour (the old workers stop at once): the comparison;
- ``restart_drained``: each API in turn is stopped (SIGTERM to the master) and
  started again while the clients, as a load balancer would, send it nothing from
  before the stop until it answers ``/readyz`` again (README, Deploying);
- ``restart_undrained``: the same without the balancer: the comparison, what the
  drain saves;
- ``workers``: each worker replaced (a new one started, the old one sent SIGTERM),
  with the seconds from the SIGTERM to the old one's exit.

Then every job answered ``202`` is polled to its final state, and its runs counted.
The report (JSON) gives, per phase, the requests, the answers that were not 2xx by
status, the connection errors and the slowest answer (a reload's pause while the
new gunicorn workers load the app), and for all the jobs: accepted, lost (not
SUCCESS), never run and run twice. Counts and ratios, not timings, are the point:
the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.load import (
    Traffic,
    address,
    final_states,
    reload_api,
    replace_worker,
    restart_api,
    run_counts,
)
from tests.support import Api, RedisServer, Worker, errand_env

HOSTS = ("127.0.0.2", "127.0.0.3")


def restart_undrained(api: Api) -> None:
    """Stop and start with no balancer in front: clients keep sending to it throughout."""
    assert api.process.proc is not None
    api.process.proc.terminate()
    api.process.proc.wait(60)
    api.__enter__()


def phase_report(traffic: Traffic) -> dict[str, Any]:
    answers: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for tally in traffic.tallies.values():
        answers.update(tally.answers)
        errors.update(tally.errors)
    return {
        "requests": traffic.requests(),
        "not_2xx": {k: v for k, v in sorted(answers.items()) if not k.split()[1].startswith("2")},
        "connection_errors": dict(errors),
        "honoured_429": traffic.honoured_429,
        "slowest_answer_s": round(max((t.slowest for t in traffic.tallies.values()), default=0), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--web-concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--job-seconds", type=float, default=0.02)
    args = parser.parse_args()

    report: dict[str, Any] = {"clients": args.clients, "web_concurrency": args.web_concurrency}
    accepted: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="errand-rolling-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        root = Path(tmp)
        server = RedisServer(root / "redis")
        server.start()
        stack.callback(server.stop)
        env = errand_env(server.url, IN_FLIGHT_LIMIT="100000")
        apis = [
            stack.enter_context(Api(env, root / f"api{n}.log", args.web_concurrency, host=host))
            for n, host in enumerate(HOSTS)
        ]
        workers: list[Worker] = []
        stack.callback(lambda: [w.stop() for w in workers])
        for n in range(2):
            workers.append(Worker(env, root / f"worker{n}.log", f"w{n}"))
            workers[-1].start()
        both = [address(api) for api in apis]
        plan = [(n % 2 == 1, both if n % 4 < 2 else both[::-1]) for n in range(args.clients)]

        def phase(name: str, action: Any) -> None:
            traffic = Traffic(plan, job_seconds=args.job_seconds).start()
            began = time.monotonic()
            try:
                time.sleep(1)
                extra = action(traffic)
                time.sleep(1)
            finally:
                traffic.stop()
            accepted.extend(traffic.accepted)
            seconds = {"seconds": round(time.monotonic() - began, 1)}
            report[name] = {**seconds, **phase_report(traffic), **(extra or {})}

        def reloads(traffic: Traffic) -> None:
            for _ in range(args.rounds):
                for api in apis:
                    reload_api(api)
                    time.sleep(0.5)

        def drained(traffic: Traffic) -> None:
            for _ in range(args.rounds):
                for api in apis:
                    restart_api(api, traffic)
                    time.sleep(0.5)

        def undrained(traffic: Traffic) -> None:
            for _ in range(args.rounds):
                for api in apis:
                    restart_undrained(api)
                    time.sleep(0.5)

        def replace(traffic: Traffic) -> dict[str, Any]:
            stops = []
            for _ in range(args.rounds):
                for n in range(2):
                    new = Worker(env, root / f"worker{len(workers)}.log", f"w{len(workers)}")
                    stops.append(round(replace_worker(workers[n], new), 1))
                    workers[n] = new
                    workers.append(new)  # stopped at the end like the others
            return {"seconds_from_sigterm_to_exit": stops}

        def settle_apis(**settings: str) -> None:
            for api in apis:
                api.process.env = {**(api.process.env or {}), **settings}
                restart_undrained(api)

        settle_apis(GUNICORN_RELOAD_WAIT="0")  # the comparison: gunicorn's own reload
        phase("reload_without_wait", reloads)
        settle_apis(GUNICORN_RELOAD_WAIT="15")  # the default
        phase("reload", reloads)
        phase("restart_drained", drained)
        phase("restart_undrained", undrained)
        phase("workers", replace)

        states = final_states(apis[0], accepted, timeout=300)
        runs = run_counts(server.client(), accepted)
        report["jobs"] = {
            "accepted": len(accepted),
            "states": dict(states),
            "lost": len(accepted) - states.get("SUCCESS", 0),
            "never_ran": runs.get(0, 0),
            "run_twice": sum(n for times, n in runs.items() if times > 1),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
