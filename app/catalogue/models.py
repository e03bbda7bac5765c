"""The training-data catalogue: one row per training instance of a served model."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime


class TrainingInstance(Base):
    __tablename__ = "catalogue_instances"
    __table_args__ = (UniqueConstraint("model_name", "instance_id", name="uq_catalogue_model_instance"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    instance_id: Mapped[str] = mapped_column(String(128))
    dataset: Mapped[str] = mapped_column(String(64))
    # HMAC-SHA256(server secret, subject id): the raw subject id is never stored
    subject_ref: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    label: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    storage_uri: Mapped[str] = mapped_column(String(1024))
    erased_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    erased_by_job: Mapped[str | None] = mapped_column(String(36), nullable=True)
    raw_deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # sharded (exact) models: SISA shard / ARCANE class sub-model, and slice (None: not trained on)
    shard: Mapped[int | None] = mapped_column(Integer, nullable=True)
    slice: Mapped[int | None] = mapped_column(Integer, nullable=True)
