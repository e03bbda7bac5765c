"""Tenants and what each may do: the models it may target, the methods it may ask for,
its quotas (migration 0011). Keys and requests name their tenant (migration 0010)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow


class Tenant(Base):
    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # every registered model, present and future (the `default` tenant of an upgraded install)
    all_models: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    methods: Mapped[list | None] = mapped_column(JSON, nullable=True)  # None: every method
    # None: the LETHE_TENANT_MAX_* setting; 0: unlimited
    max_open_requests: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_requests_per_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class TenantModel(Base):
    """One grant: ``tenant`` may target ``model_name`` (forget, predict, registry reads)."""

    __tablename__ = "tenant_models"

    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name"), primary_key=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    granted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    granted_by: Mapped[str] = mapped_column(String(128))
