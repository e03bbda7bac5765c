"""Registry tables: models, immutable numbered versions, mutable aliases and their moves."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow

PRODUCTION = "production"
READY, PURGED = "READY", "PURGED"
# models.status: version 1 exists ("ready"), a training run will publish it ("training"), or it failed
MODEL_READY, MODEL_TRAINING, MODEL_FAILED = "ready", "training", "failed"


class RegisteredModel(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(64))
    input_shape: Mapped[list] = mapped_column(JSON)
    classes: Mapped[list] = mapped_column(JSON)
    # "instance": versions are single checkpoints; "sisa" / "arcane": versions are bundles
    family: Mapped[str] = mapped_column(String(16), default="instance", server_default="instance")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # migration 0005: the architecture's constructor parameters (None = its defaults), the
    # training recipe (models.train.Recipe as JSON; None = the demo recipe) and the status
    arch_params: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    recipe: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=MODEL_READY, server_default=MODEL_READY)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_name", "version", name="uq_model_versions_model_version"),
        UniqueConstraint("job_id", name="uq_model_versions_job"),  # a job publishes at most one version
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_path: Mapped[str] = mapped_column(String(1024))
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="READY")
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # weights deleted because they still held erased data (status PURGED; row and sha256 stay)
    purged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # migration 0012, consolidation (app/jobs/consolidation.py): whether the weights are what
    # training from scratch on the retained data gives (version 1, a retrain, a sharded model),
    # and else the approximation debt since the last exact version in the lineage: instances
    # and versions unlearned approximately, and the earliest due date among their requests
    exact: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    debt_instances: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    debt_versions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    debt_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ModelAlias(Base):
    __tablename__ = "model_aliases"

    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class AliasMove(Base):
    __tablename__ = "alias_moves"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    moved_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # operator moves (rollback) say why


class TrainingRun(Base):
    """Lethe training a registered model on a registered dataset (POST /v1/models/{name}/train)."""

    __tablename__ = "training_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    dataset: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued | running | completed | failed
    stage: Mapped[str] = mapped_column(String(128), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    worker: Mapped[str | None] = mapped_column(String(256), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RowRisk(Base):
    """Per training row of an exact version: its membership risk (models/risk.py), measured once
    by the risk job (worker/risk.py) when the version is published; the planner reads it."""

    __tablename__ = "membership_risks"

    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    risk: Mapped[float] = mapped_column(Float)   # effect size of being trained on the row
    gap: Mapped[float] = mapped_column(Float)    # mu_in - mu_out of its logit confidence: its own target drop


class RetrainOrder(Base):
    """An exact version to be trained by the customer's own pipeline (migration 0019,
    app/registry/orders.py): the retained rows' snapshot, the recipe (trainer parameters,
    starting point), a due date and a one-time upload credential (only its SHA-256 here)."""

    __tablename__ = "retrain_orders"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # open | fulfilled | cancelled
    base_version: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    snapshot_path: Mapped[str] = mapped_column(String(1024))
    snapshot_sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    forget_ids: Mapped[list] = mapped_column(JSON)  # rows erased since the last exact version: scored on upload
    recipe: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    token_sha256: Mapped[str] = mapped_column(String(64))
    due_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    escalated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    fulfilled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    refusals: Mapped[list | None] = mapped_column(JSON, nullable=True)  # every refused upload: when and why
    # migration 0021: issued because its starting point forgot (app/jobs/restarts.py): the move
    # and the starting model's requests it follows; its upload completes a request per one
    follows: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class SealedProbe(Base):
    """The forget rows of one approximate job of a model its own pipeline retrains, sealed
    until an order's upload is scored on them or their requests' due date (migration 0020,
    app/registry/probes.py): AES-256-GCM ciphertext under the registry, its key here only
    (None once shredded)."""

    __tablename__ = "sealed_probes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    instance_ids: Mapped[list] = mapped_column(JSON)
    rows: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))         # of the ciphertext file
    key_hex: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    keep_until: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    shredded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    shred_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    scored_by: Mapped[list | None] = mapped_column(JSON, nullable=True)  # order ids whose upload was scored on it
