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

    @classmethod
    def of(cls, job, request_ids: list[str]) -> "JobRead":
        return cls(id=job.id, model=job.model_name, objective=job.objective, method=job.method,
                   status=job.status, stage=job.stage, progress=job.progress, attempts=job.attempts,
                   max_attempts=job.max_attempts, worker=job.worker, created_at=job.created_at,
                   started_at=job.started_at, finished_at=job.finished_at, base_version=job.base_version,
                   result_version=job.result_version, metrics=job.metrics, stats=job.stats, plan=job.plan,
                   error=job.error, request_ids=request_ids)
