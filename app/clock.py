"""Time as the HTTP contract writes it: UTC, ISO 8601, milliseconds, ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def isotime(moment: datetime | float | None = None) -> str:
    """``moment`` (a datetime or a Unix time; now if None) as ``2026-11-21T20:31:07.412Z``."""
    if moment is None:
        moment = datetime.now(UTC)
    elif isinstance(moment, float | int):
        moment = datetime.fromtimestamp(moment, UTC)
    # isoformat truncates to milliseconds as strftime's %f cut to three digits did, at a
    # third of its cost; a UTC time's "+00:00" is written "Z".
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
