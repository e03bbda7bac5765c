"""Append-only, hash-chained audit events. The application only ever INSERTs here; the
migration adds triggers that refuse UPDATE and DELETE on both SQLite and Postgres."""
from __future__ import annotations

from sqlalchemy import BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base

GENESIS = "0" * 64


class AuditEvent(Base):
    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(40))  # ISO-8601 UTC, hashed exactly as stored
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject_ref: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON text, hashed exactly as stored
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)  # one successor per event: no forks
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditCheckpoint(Base):
    """A signed statement of the chain head at one moment (``app.audit.checkpoints``);
    append-only like the events."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # the pinned event
    head: Mapped[str] = mapped_column(String(64))  # that event's hash
    at: Mapped[str] = mapped_column(String(40))  # ISO-8601 UTC, signed exactly as stored
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(Text)  # base64 Ed25519 over the canonical document


class AuditOutbox(Base):
    """Events recorded by hot paths (``audit.service.record``: a forget request received)
    in the same transaction as what they describe, without taking the chain's writer lock.
    ``audit.service.drain`` moves them into ``audit_events`` in ``id`` order, one writer at a
    time, and deletes them in the same transaction: every committed event reaches the chain
    exactly once."""

    __tablename__ = "audit_outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    ts: Mapped[str] = mapped_column(String(40))  # when it happened; hashed as is once chained
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    subject_ref: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON text
