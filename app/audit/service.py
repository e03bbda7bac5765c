"""Hash-chained audit log: append (serialised writers) and verify.

hash_n = sha256(prev_hash || canonical({seq, ts, actor, action, subject_ref, payload}))
Each event names its predecessor's hash; ``prev_hash`` is UNIQUE, so the chain cannot fork
even if the serialisation below were bypassed.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from ..db import utcnow
from .models import GENESIS, AuditEvent

AUDIT_LOCK_KEY = 0x1E7E_A0D1  # advisory lock id on Postgres


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def compute_hash(prev_hash: str, seq: int, ts: str, actor: str, action: str,
                 subject_ref: str | None, payload: str) -> str:
    body = canonical_json({"seq": seq, "ts": ts, "actor": actor, "action": action,
                           "subject_ref": subject_ref, "payload": payload})
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def _lock_writers(session: Session) -> None:
    """Serialise appenders for the rest of the transaction. SQLite transactions are already
    BEGIN IMMEDIATE (one writer at a time); Postgres takes a transaction-scoped advisory lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})


def head(session: Session) -> tuple[int, str]:
    row = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    return (row[0], row[1]) if row else (0, GENESIS)


def append(session: Session, *, actor: str, action: str, payload: dict | None = None,
           subject_ref: str | None = None) -> AuditEvent:
    """Append one event inside the caller's transaction (it commits or rolls back with it)."""
    _lock_writers(session)
    session.flush()
    last_seq, last_hash = head(session)
    seq = last_seq + 1
    ts = utcnow().isoformat(timespec="microseconds")
    body = canonical_json(payload or {})
    event = AuditEvent(seq=seq, ts=ts, actor=actor, action=action, subject_ref=subject_ref,
                       payload=body, prev_hash=last_hash,
                       hash=compute_hash(last_hash, seq, ts, actor, action, subject_ref, body))
    session.add(event)
    session.flush()
    return event


def verify(session: Session, batch: int = 1000) -> dict:
    """Recompute the whole chain. Returns {ok, entries, head, first_bad_seq, reason}."""
    prev, expected_seq, count, last_seq = GENESIS, 1, 0, 0
    while True:
        rows = session.execute(select(AuditEvent).where(AuditEvent.seq > last_seq)
                               .order_by(AuditEvent.seq).limit(batch)).scalars().all()
        if not rows:
            break
        for ev in rows:
            problem = None
            if ev.seq != expected_seq:
                problem = f"sequence gap: expected {expected_seq}, found {ev.seq}"
            elif ev.prev_hash != prev:
                problem = f"event {ev.seq} does not link to its predecessor's hash"
            elif compute_hash(ev.prev_hash, ev.seq, ev.ts, ev.actor, ev.action, ev.subject_ref, ev.payload) != ev.hash:
                problem = f"event {ev.seq} content does not match its hash"
            if problem:
                return {"ok": False, "entries": count, "head": prev, "first_bad_seq": ev.seq, "reason": problem}
            prev, expected_seq, count, last_seq = ev.hash, ev.seq + 1, count + 1, ev.seq
    return {"ok": True, "entries": count, "head": prev, "first_bad_seq": None, "reason": None}


def page(session: Session, *, after_seq: int = 0, limit: int = 100, action: str | None = None) -> list[AuditEvent]:
    q = select(AuditEvent).where(AuditEvent.seq > after_seq)
    if action:
        q = q.where(AuditEvent.action == action)
    return list(session.execute(q.order_by(AuditEvent.seq).limit(limit)).scalars())


def verify_lines(lines) -> dict:
    """Recompute a chain exported by ``GET /v1/audit/export`` (an iterable of JSON lines),
    without the database. Same result shape as ``verify``."""
    prev, expected_seq, count = GENESIS, None, 0
    for raw in lines:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        if not raw.strip():
            continue
        ev = json.loads(raw)
        seq = ev["seq"]
        problem = None
        if expected_seq is not None and seq != expected_seq:
            problem = f"sequence gap: expected {expected_seq}, found {seq}"
        elif expected_seq is not None and ev["prev_hash"] != prev:
            problem = f"event {seq} does not link to its predecessor's hash"
        elif compute_hash(ev["prev_hash"], seq, ev["ts"], ev["actor"], ev["action"], ev["subject_ref"],
                          ev["payload"]) != ev["hash"]:
            problem = f"event {seq} content does not match its hash"
        if problem:
            return {"ok": False, "entries": count, "head": prev, "first_bad_seq": seq, "reason": problem}
        if expected_seq is None and seq == 1 and ev["prev_hash"] != GENESIS:
            return {"ok": False, "entries": 0, "head": prev, "first_bad_seq": 1, "reason": "event 1 is not the genesis"}
        prev, expected_seq, count = ev["hash"], seq + 1, count + 1
    return {"ok": True, "entries": count, "head": prev, "first_bad_seq": None, "reason": None}
