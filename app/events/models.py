"""Registry events and the subscriptions they are delivered to (migration 0014)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow


class Subscription(Base):
    """A receiver of registry events: one model's (``model_name``) or every model's (None)
    the subscriber may see. ``tenant`` None: an operator's subscription (every model, and the
    operator events ``forget.completed`` / ``forget.failed``); else only models granted to
    that tenant, checked again at every event (a revoked grant stops the deliveries)."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_name: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RegistryEvent(Base):
    """One event of a model, numbered per model (``seq`` 1, 2, ...): a receiver that sees a
    gap knows it missed one and resyncs from the API (``GET /v1/events``)."""

    __tablename__ = "registry_events"
    __table_args__ = (UniqueConstraint("model_name", "seq", name="uq_registry_events_model_seq"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: operator events (forget.*)
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # the exact JSON body delivered
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
