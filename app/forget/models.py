"""Forget (deletion) requests."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow

QUEUED, RUNNING, COMPLETED, FAILED, REJECTED = "queued", "running", "completed", "failed", "rejected"
DENIED, CANCELED = "denied", "canceled"
OPEN = (QUEUED, RUNNING)  # still to be worked on; everything else is closed
RAN = (COMPLETED, FAILED)  # closed by a run (a job, or the no-data resolver): shown a tenant at reveal_at
STATUSES = (QUEUED, RUNNING, COMPLETED, FAILED, DENIED, CANCELED)
# why a request is denied (Fides / Data Rights Protocol style); the free-text reason says more
DENY_REASONS = ("legal_exemption",       # GDPR Art. 17(3): legal obligation, public interest, legal claims...
                "no_match",              # nothing of this subject in the model's training data
                "identity_unverified",   # the requester could not be verified as the subject
                "manifestly_unfounded",  # Art. 12(5): unfounded or excessive
                "duplicate",             # the same erasure was already requested
                "other")
DUE_DAYS = 30  # GDPR Art. 12(3): one month


class ForgetRequest(Base):
    __tablename__ = "forget_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    external_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(256), unique=True, nullable=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    subject_ref: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    instance_ids: Mapped[list] = mapped_column(JSON)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    objective: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(32))
    target_label: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    due_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    version_before: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version_after: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True, nullable=True)
    # governance (migration 0002)
    reason_code: Mapped[str | None] = mapped_column(String(32), nullable=True)  # denied: one of DENY_REASONS
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # denied / canceled: free text
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)  # denied or canceled
    closed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)  # actor who denied / canceled
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # operator retries
    callback_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)  # signed webhooks go here
    # migration 0005: one request of an erasure group (a subject forgotten from every model)
    group_id: Mapped[str | None] = mapped_column(ForeignKey("erasure_groups.id"), index=True, nullable=True)
    # migration 0010: the tenant of the key that submitted it (app/security/tenants.py)
    tenant: Mapped[str] = mapped_column(String(64), default="default", server_default="default", index=True)
    # migration 0012: the exact version that holds this erasure exactly: version_after when the
    # job retrained, else the consolidation that retrained later (None: served approximately,
    # not consolidated yet)
    exact_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # migration 0022: set when a tenant's key submitted it (no oracle, app/forget/timeline.py):
    # until then, and while it is open, that tenant sees it ``queued``; None: shown as it is
    reveal_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ErasureGroup(Base):
    """``POST /v1/forget`` with a subject and no model: one request per model that holds
    the subject's data, created together; one certificate lists every model and version."""

    __tablename__ = "erasure_groups"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject_ref: Mapped[str] = mapped_column(String(64), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(256), unique=True, nullable=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    models: Mapped[list] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(128))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # {dataset: {"rows": {split: n}, ...}}: the subject's rows in every dataset store, every
    # split (app/catalogue/subjects.py); rows_erased_at: when those no model holds were removed
    datasets: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    rows_erased_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PendingClaim(Base):
    """One row per instance that an open (queued/running) request covers. The primary key
    (model, instance) makes "already pending in another request" a unique-constraint
    conflict: checking overlap costs one indexed insert, whatever the number of pending
    requests (it was a scan of every pending request). Rows are taken when a request opens
    (submit, retry) and released when it closes (``app/forget/status.py``)."""

    __tablename__ = "forget_claims"

    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id"), index=True)
