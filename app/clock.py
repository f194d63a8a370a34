"""Time as the HTTP contract writes it: UTC, ISO 8601, milliseconds, ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def isotime(moment: datetime | float | None = None) -> str:
    """``moment`` (a datetime or a Unix time; now if None) as ``2026-11-21T20:31:07.412Z``."""
    if moment is None:
        moment = datetime.now(UTC)
    elif isinstance(moment, float | int):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
