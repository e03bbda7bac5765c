from __future__ import annotations

import datetime as dt

from pydantic import BaseModel


class JobRead(BaseModel):
    id: str
    model: str
    objective: str
    method: str
    status: str
    stage: str
    progress: float
    attempts: int
    max_attempts: int
    worker: str | None = None
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    base_version: int | None = None
    result_version: int | None = None
    metrics: dict | None = None
    stats: dict | None = None
    plan: dict | None = None  # which way the job forgets and why (method, exact, reason, inputs)
    error: str | None = None
    request_ids: list[str]
