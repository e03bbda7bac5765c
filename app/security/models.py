"""API keys: only a SHA-256 of the key is stored; the plaintext is shown once at creation."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    # sha256(plaintext key), hex: keys are 256-bit random tokens, so a fast hash is enough
    # (nothing to brute-force); the lookup is by this hash, the plaintext is never stored
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to recognise a key in a list
    scopes: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # migration 0010: whose requests this key sees (app/security/tenants.py)
    tenant: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
