"""Beat's scheduler: celery-redbeat's, running Errand's schedules through ``Jobs``.

``celery -A worker:celery_app beat`` uses it (``beat_scheduler``, set in
``app.worker``). redbeat keeps every entry in Redis, so beat keeps no file and
survives restarts, and holds a lock (``errand:redbeat::lock``, renewed at every
tick, ``BEAT_LOCK_TIMEOUT``): a second beat waits until the first is gone.
Errand's own periodic job (the index prune) is a plain redbeat entry; a
schedule's entry (``schedule:<id>``) is run by ``Schedules.run``, which submits
an ordinary task as the schedule's owner, so every run has its record. At
start, the schedules of ``SCHEDULES_FILE`` are checked and put in step.
"""

from __future__ import annotations

import json
import logging
import tomllib
import uuid
from pathlib import Path
from typing import Any

import redis
from flask import Flask
from pydantic import ValidationError
from redbeat import RedBeatScheduler, RedBeatSchedulerEntry
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis

from app.errors import Unprocessable
from app.jobs.schedules import FILE_ID, Decoder, Schedules, Spec, params_checked
from app.schemas import ScheduleCreate
from app.store import keys

MAX_FILE_SCHEDULES = 1000

log = logging.getLogger(__name__)


class Entry(RedBeatSchedulerEntry):
    """redbeat's entry, reading Errand's crontabs with their time zones."""

    @staticmethod
    def decode_definition(definition: str) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(definition, cls=Decoder)
        return decoded


class Scheduler(RedBeatScheduler):
    """redbeat's scheduler; a schedule's run is submitted through Errand's ``Jobs``."""

    Entry = Entry

    @property
    def flask_app(self) -> Flask:
        found: Flask = self.app.flask_app
        return found

    @property
    def service(self) -> Schedules:
        found: Schedules = self.flask_app.extensions["errand.schedules"]
        return found

    def setup_schedule(self) -> None:
        path = self.flask_app.config["SCHEDULES_FILE"]
        specs = read_file(Path(path), self.service) if path else {}
        super().setup_schedule()  # Errand's own jobs (beat_schedule)
        self.service.sync_file(specs)  # no file (any more): its schedules go

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """redbeat's tick, which waits out a Redis that went away (a restart, a failover).

        redbeat extends its lock with a call it does not retry, and beat dies of the
        error ("beat raised exception ConnectionError"). Here the tick is tried again a
        second later; a lock that ran out meanwhile (or was never taken: Redis was away
        at start) is taken again first, waiting while another beat holds it, so that
        one beat acts at a time.
        """
        try:
            if self.lock_key and self.lock is None:
                self.take_lock()
            return float(super().tick(*args, **kwargs))
        except redis.exceptions.LockError:
            log.warning("beat: the lock ran out while Redis was away; taking it again")
            self.lock = None
            return 0.0
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("beat: Redis did not answer (%s); trying again in 1 s", exc)
            return 1.0

    def take_lock(self) -> None:
        """Take beat's lock as redbeat does at start (blocking while another beat holds it)."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        lock.acquire()
        log.info("beat: Acquired lock")
        self.lock = lock

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        if not entry.name.startswith(keys.SCHEDULE_ENTRY):
            return super().apply_async(entry, producer, advance, **kwargs)
        schedule_id = entry.name[len(keys.SCHEDULE_ENTRY) :]
        with self.flask_app.app_context():
            return self.service.run(schedule_id, lambda: self.reserve(entry))


def _problem(path: Path, where: str, errors: list[dict[str, Any]] | None, detail: str) -> str:
    first = (errors or [{}])[0]
    loc = ".".join(str(part) for part in first.get("loc", []))
    what = f"{loc}: {first['msg']}" if first.get("msg") else detail
    return f"errand: SCHEDULES_FILE {path}: {where}: {what}"


def read_file(path: Path, service: Schedules) -> dict[str, Spec]:
    """The schedules a TOML file declares, each checked as a POST would be.

    A file that cannot be read or holds anything not valid stops beat with one
    line saying where (``SystemExit``).
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"errand: SCHEDULES_FILE {path}: cannot be read: {exc}") from None
    tables = data.get("schedules", {})
    if set(data) - {"schedules"} or not isinstance(tables, dict):
        raise SystemExit(f"errand: SCHEDULES_FILE {path}: holds only [schedules.<name>] tables")
    if len(tables) > MAX_FILE_SCHEDULES:
        raise SystemExit(f"errand: SCHEDULES_FILE {path}: more than {MAX_FILE_SCHEDULES}")
    specs = {}
    for name, table in tables.items():
        where = f"schedule {name!r}"
        if not FILE_ID.match(name) or _is_uuid(name):
            raise SystemExit(
                f"errand: SCHEDULES_FILE {path}: {where}: a name is a lower-case letter, "
                "then up to 63 of a-z 0-9 _ -"
            )
        try:
            body = ScheduleCreate.model_validate(table)
        except ValidationError as exc:
            errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
            raise SystemExit(_problem(path, where, errors, "not valid")) from None
        spec = Spec.of(body)
        try:
            specs[name] = service.check(spec, params_checked)
        except Unprocessable as exc:
            raise SystemExit(_problem(path, where, exc.errors, exc.detail)) from None
    return specs


def _is_uuid(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True
