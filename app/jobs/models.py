"""Jobs: one job runs one unlearning step for one model and may serve several requests."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow

QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"
CANCELED = "canceled"  # every request of a job not yet started was canceled or denied
# the objective of a consolidation job (app/jobs/consolidation.py): retrain from scratch to
# pay the approximation debt; never a request's objective, so no request attaches to it
CONSOLIDATE = "consolidate"


class Job(Base):
    __tablename__ = "jobs"
    # attach() looks up the model's queued job on every submission
    __table_args__ = (Index("ix_jobs_model_status", "model_name", "status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    objective: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str] = mapped_column(String(128), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(256), nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    base_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    stats: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the sweeper (migration 0002): how often this job was found stuck and re-queued, and when last
    sweeps: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    swept_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # migration 0007: the fixed relabel target of the one request this job serves (such a job
    # takes no other request); None for jobs that coalesce requests
    target_label: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the planner (migration 0008): which way this job forgets and why (app/jobs/planner.py)
    plan: Mapped[dict | None] = mapped_column(JSON, nullable=True)
