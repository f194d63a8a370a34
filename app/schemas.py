"""The shapes of requests, as pydantic models: what the API validates."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Options(BaseModel):
    """How to run a job: the only options a client may set."""

    model_config = ConfigDict(extra="forbid", strict=True)
    countdown: int = Field(0, ge=0, le=3600, description="seconds to wait before it runs")
    priority: int | None = Field(None, ge=0, le=9, description="0 to 9")


class Submission(BaseModel):
    """The body of ``POST /api/v1/tasks``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    task: str = Field(description="a name from /api/v1/task-types")
    params: dict[str, Any] = Field(default_factory=dict)
    options: Options = Field(default_factory=Options)


class Filters(BaseModel):
    """The query of ``GET /api/v1/tasks``."""

    state: str | None = None
    task: str | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = None
