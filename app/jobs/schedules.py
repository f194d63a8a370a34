"""``Schedules``: periodic jobs for a ``Principal``, and each of their runs, which beat asks for.

A schedule names a task type, its params and options, and when it runs: a
crontab (five fields, in a time zone) or an interval in seconds. Beat keeps
time with celery-redbeat (``app.worker.schedules``); each run is an ordinary
task, submitted through ``Jobs.submit`` as the schedule's owner, whose record
links back to the schedule.

When it runs: first at the crontab's next time after it was made (or resumed,
or its timing changed), or one interval after; then at each time after the
last run. A run missed while beat was down is made once, as soon as beat is
back (celery's ``is_due`` compares the last run with now): never once per
missed time. A paused schedule makes no runs and catches none up. A schedule's
``callback_url`` goes with every run, as a submit's would: each run's final task
resource is POSTed to it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import redis
from celery.schedules import BaseSchedule, crontab, schedule
from redbeat.decoder import RedBeatJSONDecoder, RedBeatJSONEncoder

from app.clock import isotime
from app.errors import (
    ErrandError,
    ScheduleNotFound,
    StateConflict,
    StoreUnavailable,
    Unprocessable,
)
from app.jobs.resource import encode_cursor
from app.jobs.service import PAGE_BYTES, Jobs, Principal
from app.store import apikeys, keys, webhooks
from app.store import schedules as store
from app.tasks.registry import Registry, TaskType
from app.webhooks import url_problem

log = logging.getLogger(__name__)

CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
MAX_INTERVAL = 365 * 24 * 3600  # a year
# A schedules file's names: short, plain, and never shaped like the API's UUIDs.
FILE_ID = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# Who a run is submitted as when the schedule has no owner (a schedules file's, or
# one made with AUTH_DISABLED): no key, so no key's in-flight cap.
NO_OWNER = Principal("", "schedule without an owner", admin=True)
Validate = Callable[[TaskType, dict[str, Any]], dict[str, Any]]


class ZonedCrontab(crontab):
    """A five-field crontab read in its own IANA time zone (Celery's reads the app's)."""

    def __init__(self, expression: str, zone: str, **kwargs: Any) -> None:
        parts = expression.split()
        if len(parts) != 5:
            raise ValueError("a crontab has five fields: minute hour day month weekday")
        super().__init__(**dict(zip(CRON_FIELDS, parts, strict=True)), **kwargs)
        self.expression, self.zone = expression, zone

    @property
    def tz(self) -> ZoneInfo:  # type: ignore[override]
        return ZoneInfo(self.zone)


class Decoder(RedBeatJSONDecoder):
    """redbeat's decoder, which also reads Errand's crontab with its time zone."""

    def dict_to_object(self, d: dict[str, Any]) -> Any:
        if d.get("__type__") == "errand_crontab":
            return ZonedCrontab(d["crontab"], d["timezone"])
        return super().dict_to_object(d)


@cache
def time_zones() -> frozenset[str]:
    """Every IANA time zone name this machine knows."""
    return frozenset(available_timezones())


@dataclass(frozen=True)
class Spec:
    """What a client says about a schedule: what it runs, and when."""

    task: str
    params: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    crontab: str | None = None
    timezone: str | None = None
    interval: int | None = None
    paused: bool = False
    callback_url: str | None = None

    @classmethod
    def of(cls, body: Any) -> Spec:
        """The spec of a validated create (``app.schemas.ScheduleCreate``): API or file."""
        return cls(
            task=body.task,
            params=body.params,
            options=body.options.model_dump(exclude_none=True),
            crontab=body.crontab,
            timezone=body.timezone,
            interval=body.interval,
            paused=body.paused,
            callback_url=body.callback_url,
        )

    def timing(self) -> BaseSchedule:
        """The Celery schedule (the spec must have been checked)."""
        if self.crontab is not None:
            return ZonedCrontab(self.crontab, self.timezone or "UTC")
        return schedule(run_every=timedelta(seconds=self.interval or 0))

    def encoded_timing(self) -> dict[str, Any]:
        """The timing as the redbeat entry's definition holds it."""
        if self.crontab is not None:
            return {
                "__type__": "errand_crontab",
                "crontab": self.crontab,
                "timezone": self.timezone or "UTC",
            }
        return {"__type__": "interval", "every": float(self.interval or 0), "relative": False}


def next_run(timing: BaseSchedule, last: datetime, now: datetime) -> datetime:
    """When a schedule that last ran (or was set going) at ``last`` runs next: never before now."""
    if isinstance(timing, crontab):
        due = now + timing.remaining_estimate(last)
    else:
        due = last + timing.run_every
    return max(due, now)


def timing_errors(spec: Spec, min_interval: int) -> list[dict[str, Any]]:
    """What is wrong with a spec's timing: both or neither, a bad crontab, zone or interval."""
    if (spec.crontab is None) == (spec.interval is None):
        return [{"loc": ["crontab"], "msg": "give either crontab or interval (not both)"}]
    if spec.interval is not None:
        if spec.timezone is not None:
            return [{"loc": ["timezone"], "msg": "a time zone goes with a crontab only"}]
        if not min_interval <= spec.interval <= MAX_INTERVAL:
            msg = f"seconds, {min_interval} to {MAX_INTERVAL} (SCHEDULE_MIN_INTERVAL to a year)"
            return [{"loc": ["interval"], "msg": msg}]
        return []
    if spec.timezone is not None and spec.timezone not in time_zones():
        return [{"loc": ["timezone"], "msg": "not an IANA time zone name, e.g. Europe/Berlin"}]
    expression = spec.crontab or ""
    if not expression.isascii() or not expression.replace(" ", "").isprintable():
        return [{"loc": ["crontab"], "msg": "printable ASCII only, e.g. '0 8 * * *'"}]
    try:
        timing = spec.timing()
        now = datetime.now(UTC)
        next_run(timing, now, now)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        return [{"loc": ["crontab"], "msg": f"not a crontab: {str(exc)[:200]}"}]
    return []


def params_checked(task_type: TaskType, raw: dict[str, Any]) -> dict[str, Any]:
    """Params validated as a submit validates them (outside a request: beat, the file)."""
    return task_type.validate(raw).model_dump(mode="json")


def _iso_of_meta(meta: str | None) -> datetime | None:
    if not meta:
        return None
    found = json.loads(meta, cls=Decoder).get("last_run_at")
    return found if isinstance(found, datetime) else None


def _meta(anchor: datetime) -> str:
    return json.dumps({"last_run_at": anchor, "total_run_count": 0}, cls=RedBeatJSONEncoder)


def spec_of(record: Mapping[str, str]) -> Spec:
    """The spec a stored record holds."""
    return Spec(
        task=record.get("task", ""),
        params=json.loads(record.get("params") or "{}"),
        options=json.loads(record.get("options") or "{}"),
        crontab=record.get("crontab"),
        timezone=record.get("timezone"),
        interval=int(record["interval"]) if record.get("interval") else None,
        paused=record.get("paused") == "1",
        callback_url=record.get("callback_url") or None,
    )


def run_fields(schedule_id: str, spec: Spec) -> dict[str, str]:
    """The record fields of a run: its schedule, and the schedule's webhook if it has one."""
    fields = {"schedule": schedule_id}
    if spec.callback_url is not None:
        fields.update(webhooks.submit_fields(spec.callback_url))
    return fields


def resource(schedule_id: str, record: Mapping[str, str], meta: str | None) -> dict[str, Any]:
    """The schedule resource: what ``GET /api/v1/schedules/<id>`` answers."""
    spec = spec_of(record)
    next_at = None
    if not spec.paused:
        now = datetime.now(UTC)
        anchor = _iso_of_meta(meta) or datetime.fromisoformat(record["created_at"])
        try:
            next_at = isotime(round(next_run(spec.timing(), anchor, now).timestamp()))
        except ValueError:
            next_at = None  # a crontab this Celery no longer reads (beat says so too)
    links = {"self": f"/api/v1/schedules/{schedule_id}"}
    if record.get("last_task"):
        links["last_task"] = f"/api/v1/tasks/{record['last_task']}"
    return {
        "id": schedule_id,
        "task": spec.task,
        "params": spec.params,
        "options": spec.options,
        "crontab": spec.crontab,
        "timezone": (spec.timezone or "UTC") if spec.crontab is not None else None,
        "interval": spec.interval,
        "paused": spec.paused,
        "source": record.get("source", "api"),
        "created_at": record.get("created_at"),
        "next_run_at": next_at,
        "last_run_at": record.get("last_run_at"),
        "last_error": record.get("last_error"),
        "callback_url": spec.callback_url,
        "links": links,
    }


class Schedules:
    """What a client can do with schedules, and what beat does for each run."""

    def __init__(
        self, client: redis.Redis, jobs: Jobs, task_types: Registry, settings: Mapping[str, Any]
    ) -> None:
        self.client, self.jobs, self.task_types = client, jobs, task_types
        self.limit = int(settings["SCHEDULE_LIMIT"])
        self.min_interval = int(settings["SCHEDULE_MIN_INTERVAL"])
        self.webhook_rules = (
            bool(settings.get("WEBHOOK_ALLOW_PRIVATE", False)),
            frozenset(settings.get("WEBHOOK_ALLOWED_HOSTS", ())),
        )

    # -- for clients ----------------------------------------------------------------------------

    def check(self, spec: Spec, validate: Validate) -> Spec:
        """The spec with its params validated (``validate``), or a 422 naming what is wrong.

        A ``callback_url`` is checked as a submit's is (``url_problem``).
        """
        errors = timing_errors(spec, self.min_interval)
        if spec.callback_url is not None:
            problem = url_problem(spec.callback_url, *self.webhook_rules)
            if problem:
                errors.append({"loc": ["callback_url"], "msg": problem})
        task_type = self.task_types.get(spec.task)
        if task_type is None:
            names = ", ".join(sorted(self.task_types))
            errors.append({"loc": ["task"], "msg": f"not one of {names}"})
        if errors:
            raise Unprocessable("the schedule is not valid", errors)
        assert task_type is not None
        return replace(spec, params=validate(task_type, spec.params))

    def create(self, principal: Principal, spec: Spec, validate: Validate) -> dict[str, Any]:
        """Make a schedule owned by the caller's key; 409 past ``SCHEDULE_LIMIT`` of them."""
        spec = self.check(spec, validate)
        schedule_id = str(uuid.uuid4())
        created = time.time()
        fields = self._fields(spec)
        fields.update(owner=principal.key_id, source="api", created_at=isotime(created))
        verdict = self._save("create", schedule_id, principal.key_id, created, spec, True, fields)
        if verdict == store.AT_CAP:
            raise StateConflict(
                f"this key has {self.limit} schedules (SCHEDULE_LIMIT); delete one first"
            )
        return self.get(principal, schedule_id)

    def get(self, principal: Principal, schedule_id: str) -> dict[str, Any]:
        """The schedule, or 404: unknown, or another key's (the same answer)."""
        record, meta = self._load(principal, schedule_id)
        return resource(schedule_id, record, meta)

    def update(
        self, principal: Principal, schedule_id: str, changes: Mapping[str, Any], validate: Validate
    ) -> dict[str, Any]:
        """Change some of a schedule's fields; a new timing or a resume sets it going anew."""
        record, _ = self._load(principal, schedule_id)
        self._not_from_file(record, schedule_id)
        old = spec_of(record)
        merged = dict(changes)
        if "crontab" in changes and "interval" not in changes:
            merged["interval"] = None  # a crontab replaces the interval, and the other way
        if "interval" in changes and "crontab" not in changes:
            merged.update(crontab=None, timezone=None)
        spec = replace(old, **merged)
        unchanged = "task" not in changes and "params" not in changes
        spec = self.check(spec, (lambda _type, params: params) if unchanged else validate)
        retime = (spec.crontab, spec.timezone or "UTC", spec.interval) != (
            old.crontab,
            old.timezone or "UTC",
            old.interval,
        ) or (old.paused and not spec.paused)
        fields = self._fields(spec)
        created = datetime.fromisoformat(record["created_at"]).timestamp()
        verdict = self._save("update", schedule_id, record.get("owner", ""), created, spec, retime,
                             fields)  # fmt: skip
        if verdict == store.MISSING:
            raise ScheduleNotFound(f"no schedule {schedule_id}")
        return self.get(principal, schedule_id)

    def delete(self, principal: Principal, schedule_id: str) -> None:
        """Remove a schedule: it makes no more runs (the runs it made stay)."""
        record, _ = self._load(principal, schedule_id)
        self._not_from_file(record, schedule_id)
        try:
            store.delete(self.client, schedule_id, record.get("owner", ""))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the task store did not answer: {exc}") from exc

    def list(
        self, principal: Principal, limit: int, cursor: tuple[int, str] | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of schedules, oldest first, and the cursor of the next page."""
        owner = None if principal.admin else principal.key_id
        try:
            rows = store.page(self.client, owner, cursor, limit)
            found = store.load_many(self.client, [schedule_id for _, schedule_id in rows])
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
        items, size = [], 0
        for row, loaded in zip(rows, found, strict=True):
            if loaded is not None:
                item = resource(row[1], *loaded)
                items.append(item)
                size += len(json.dumps(item))
            if size > PAGE_BYTES:
                return items, encode_cursor(*row)
        return items, encode_cursor(*rows[-1]) if len(rows) == limit else None

    # -- for beat -------------------------------------------------------------------------------

    def run(self, schedule_id: str, advance: Callable[[], object]) -> str | None:
        """Make one run of a due schedule: ``advance`` (redbeat's) first, then the submit.

        The run's task id, or None when nothing ran: the schedule is gone or paused
        (its redbeat entry is tidied), or the run was refused (``last_error`` says why).
        """
        if self._gone_or_paused(schedule_id) is None:
            return None
        advance()  # the next run is set before this one is made: one run per due time
        # Looked at again: a DELETE or a pause that came meanwhile wins (and advance's
        # write of the entry is undone).
        record = self._gone_or_paused(schedule_id)
        if record is None:
            return None
        spec = spec_of(record)
        now = isotime()
        try:
            principal = self._principal_of(record.get("owner", ""))
            task_type = self.task_types.get(spec.task)
            if task_type is None:
                raise Unprocessable(f"the task type {spec.task} is no longer known")
            params = params_checked(task_type, spec.params)
            task, _ = self.jobs.submit(
                principal,
                task_type,
                params,
                spec.options,
                request_id=uuid.uuid4().hex,
                fields=run_fields(schedule_id, spec),
            )
        except ErrandError as exc:
            log.warning("schedule %s: run skipped: %s", schedule_id, exc.detail)
            store.record_run(self.client, schedule_id, {"last_error": exc.detail[:500]})
            return None
        store.record_run(
            self.client,
            schedule_id,
            {"last_run_at": now, "last_task": task["id"], "last_error": None},
        )
        log.info("schedule %s: run %s submitted", schedule_id, task["id"])
        return str(task["id"])

    def _gone_or_paused(self, schedule_id: str) -> dict[str, str] | None:
        """The record of a schedule that may run; None (its entry tidied) if gone or paused."""
        loaded = store.load(self.client, schedule_id)
        if loaded is None:
            store.delete(self.client, schedule_id, "")  # the entry of a deleted schedule
            return None
        if loaded[0].get("paused") == "1":
            store.unschedule(self.client, schedule_id)
            return None
        return loaded[0]

    def sync_file(self, specs: Mapping[str, Spec]) -> None:
        """Make the schedules of a schedules file exactly ``specs``; no key owns them."""
        for schedule_id, spec in specs.items():
            loaded = store.load(self.client, schedule_id)
            old = spec_of(loaded[0]) if loaded else None
            retime = old is None or (spec.crontab, spec.timezone or "UTC", spec.interval) != (
                old.crontab,
                old.timezone or "UTC",
                old.interval,
            )
            created = time.time()
            if loaded and loaded[0].get("created_at"):
                created = datetime.fromisoformat(loaded[0]["created_at"]).timestamp()
            fields = self._fields(spec)
            fields.update(owner="", source="file", created_at=isotime(created))
            self._save("put", schedule_id, "", created, spec, retime, fields)
        for schedule_id in store.ids_from(self.client, "file"):
            if schedule_id not in specs:
                store.delete(self.client, schedule_id, "")
                log.info("schedule %s: no longer in SCHEDULES_FILE, removed", schedule_id)

    # -- the rest -------------------------------------------------------------------------------

    def _principal_of(self, owner: str) -> Principal:
        if not owner:
            return NO_OWNER
        record = apikeys.lookup(self.client, owner)
        if not record.get("hash") or record.get("revoked_at"):
            raise StateConflict("the key that owns this schedule was revoked: runs are skipped")
        return Principal(owner, record.get("name", ""), record.get("admin") == "1")

    def _load(self, principal: Principal, schedule_id: str) -> tuple[dict[str, str], str | None]:
        try:
            loaded = store.load(self.client, schedule_id)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
        # Another key's schedule answers exactly as an unknown id does.
        if loaded is None or (not principal.admin and loaded[0].get("owner") != principal.key_id):
            raise ScheduleNotFound(f"no schedule {schedule_id}")
        return loaded

    @staticmethod
    def _not_from_file(record: Mapping[str, str], schedule_id: str) -> None:
        if record.get("source") == "file":
            raise StateConflict(
                f"schedule {schedule_id} is declared in SCHEDULES_FILE: change it there"
            )

    @staticmethod
    def _fields(spec: Spec) -> dict[str, str | bool]:
        return {
            "task": spec.task,
            "params": json.dumps(spec.params, separators=(",", ":")),
            "options": json.dumps(spec.options, separators=(",", ":")),
            "crontab": spec.crontab if spec.crontab is not None else False,
            "timezone": (spec.timezone or "UTC") if spec.crontab is not None else False,
            "interval": str(spec.interval) if spec.interval is not None else False,
            "paused": "1" if spec.paused else "0",
            "callback_url": spec.callback_url if spec.callback_url is not None else False,
        }

    def _save(
        self,
        mode: str,
        schedule_id: str,
        owner: str,
        created: float,
        spec: Spec,
        retime: bool,
        fields: Mapping[str, str | bool],
    ) -> int:
        """Write record and redbeat entry; ``retime``: set it going from now."""
        definition = {
            "name": keys.SCHEDULE_ENTRY + schedule_id,
            "task": spec.task,
            "args": [],
            "kwargs": {},
            "options": {},
            "schedule": spec.encoded_timing(),
            "enabled": not spec.paused,
        }
        now = datetime.now(UTC)
        meta = _meta(now) if retime else ""
        next_at: int | None = None
        try:
            if not spec.paused:
                anchor = now
                if not retime:
                    loaded = store.load(self.client, schedule_id)
                    anchor = (_iso_of_meta(loaded[1]) if loaded else None) or now
                next_at = int(next_run(spec.timing(), anchor, now).timestamp())
            return store.save(
                self.client, mode, schedule_id, owner, int(created * 1_000_000),
                self.limit, json.dumps(definition), meta, next_at, fields,
            )  # fmt: skip
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the task store did not answer: {exc}") from exc
