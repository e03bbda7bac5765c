"""Hash-chained audit log: append (serialised writers), an outbox for hot paths, and verify.

hash_n = sha256(prev_hash || canonical({seq, ts, actor, action, subject_ref, payload}))
Each event names its predecessor's hash; ``prev_hash`` is UNIQUE, so the chain cannot fork
even if the serialisation below were bypassed.

Two ways in:
- ``append`` chains an event at once, under the writers' lock held to the end of the
  caller's transaction (workers, operators: rare, and they need the entry now — a
  certificate cites ``forget.completed``).
- ``record`` (``POST /v1/forget``) only inserts an ``audit_outbox`` row in the caller's
  transaction, so submitters do not queue behind one lock. ``drain`` chains outbox rows in
  ``id`` order and deletes them, in one transaction under the same lock; it runs in the
  gateway's ``AuditDrainer`` thread (every ``LETHE_AUDIT_DRAIN_S``), at the start of every
  ``append`` (so an event is chained before anything a worker later records about the same
  request), and before the audit routes read the chain (``drain_pending``), so a reader
  sees every event committed before its call. An accepted request's event is in the outbox
  or in the chain, never missing: both are written by the request's own commit.
"""
from __future__ import annotations

import hashlib
import json
import threading
from typing import Any, Callable

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.orm import Session

from ..db import read_scope, session_scope, utcnow
from ..periodic import PeriodicThread
from .models import GENESIS, AuditEvent, AuditOutbox

AUDIT_LOCK_KEY = 0x1E7E_A0D1  # advisory lock id on Postgres


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def compute_hash(prev_hash: str, seq: int, ts: str, actor: str, action: str,
                 subject_ref: str | None, payload: str) -> str:
    body = canonical_json({"seq": seq, "ts": ts, "actor": actor, "action": action,
                           "subject_ref": subject_ref, "payload": payload})
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def _lock_writers(session: Session, wait: bool = True) -> bool:
    """Serialise appenders for the rest of the transaction. SQLite transactions are already
    BEGIN IMMEDIATE (one writer at a time); Postgres takes a transaction-scoped advisory lock.
    ``wait=False``: True only if the lock was free."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    if wait:
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})
        return True
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY}).scalar())


def head(session: Session) -> tuple[int, str]:
    row = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    return (row[0], row[1]) if row else (0, GENESIS)


def _chain(session: Session, after: tuple[int, str], ts: str, actor: str, action: str, subject_ref: str | None,
           body: str) -> AuditEvent:
    seq, prev = after[0] + 1, after[1]
    event = AuditEvent(seq=seq, ts=ts, actor=actor, action=action, subject_ref=subject_ref, payload=body,
                       prev_hash=prev, hash=compute_hash(prev, seq, ts, actor, action, subject_ref, body))
    session.add(event)
    return event


def _drain_locked(session: Session, batch: int) -> tuple[int, tuple[int, str]]:
    """Chain every outbox row (the caller holds the writers' lock). Returns (rows moved, head).
    Core on the session's connection (the gateway drains every submission's event: as ORM
    entities, loading and inserting them cost more than the queries), after a flush, so
    whatever the session holds is written first."""
    session.flush()
    conn, last, moved = session.connection(), head(session), 0
    while True:
        rows = conn.execute(_OUTBOX_BATCH, {"n": batch}).all()
        events = []
        for r in rows:
            seq, prev = last[0] + 1, last[1]
            h = compute_hash(prev, seq, r.ts, r.actor, r.action, r.subject_ref, r.payload)
            events.append({"seq": seq, "ts": r.ts, "actor": r.actor, "action": r.action,
                           "subject_ref": r.subject_ref, "payload": r.payload, "prev_hash": prev, "hash": h})
            last = (seq, h)
        if rows:
            conn.execute(_EVENTS_INSERT, events)
            conn.execute(_OUTBOX_DELETE, {"ids": [r.id for r in rows]})
            moved += len(rows)
        if len(rows) < batch:
            return moved, last


_O = AuditOutbox.__table__
_OUTBOX_BATCH = select(_O).order_by(_O.c.id).limit(bindparam("n"))
_EVENTS_INSERT = AuditEvent.__table__.insert()
_OUTBOX_DELETE = _O.delete().where(_O.c.id.in_(bindparam("ids", expanding=True)))


def drain(session: Session, *, batch: int = 1000, wait: bool = True) -> int:
    """Move outbox rows into the chain (see the module docstring). ``wait=False`` gives up
    at once when another writer holds the lock (the background drainer: that writer drains
    too). Returns how many rows were chained."""
    session.flush()
    if session.execute(select(AuditOutbox.id).limit(1)).first() is None:
        return 0
    if not _lock_writers(session, wait=wait):
        return 0
    return _drain_locked(session, batch)[0]


def pending(session: Session) -> int:
    """Events committed to the outbox and not yet chained."""
    return int(session.execute(select(func.count()).select_from(AuditOutbox)).scalar() or 0)


def record(session: Session, *, actor: str, action: str, payload: dict | None = None,
           subject_ref: str | None = None) -> None:
    """Record one event through the outbox, inside the caller's transaction, without the
    writers' lock; it is chained by the next ``drain`` (in order of recording). A Core insert
    on the session's connection."""
    session.connection().execute(OUTBOX.insert(), outbox_row(actor=actor, action=action, payload=payload,
                                                             subject_ref=subject_ref))


def outbox_row(*, actor: str, action: str, payload: dict | None = None, subject_ref: str | None = None) -> dict:
    """The ``audit_outbox`` row ``record`` inserts, for a caller that inserts it in a
    statement of its own (a submission on Postgres: with the request, app/forget/service.py)."""
    return {"ts": utcnow().isoformat(timespec="microseconds"), "actor": actor, "action": action,
            "subject_ref": subject_ref, "payload": canonical_json(payload or {})}


OUTBOX = AuditOutbox.__table__


def append(session: Session, *, actor: str, action: str, payload: dict | None = None,
           subject_ref: str | None = None) -> AuditEvent:
    """Append one event inside the caller's transaction (it commits or rolls back with it),
    after every event already waiting in the outbox."""
    _lock_writers(session)
    session.flush()
    _, last = _drain_locked(session, 1000)
    event = _chain(session, last, utcnow().isoformat(timespec="microseconds"), actor, action, subject_ref,
                   canonical_json(payload or {}))
    session.flush()
    return event


def _check_rows(rows, prev: str, expected_seq: int, count: int) -> tuple[dict | None, str, int, int]:
    """Check consecutive events against the chain state (prev hash, next seq, count)."""
    for ev in rows:
        problem = None
        if ev.seq != expected_seq:
            problem = f"sequence gap: expected {expected_seq}, found {ev.seq}"
        elif ev.prev_hash != prev:
            problem = f"event {ev.seq} does not link to its predecessor's hash"
        elif compute_hash(ev.prev_hash, ev.seq, ev.ts, ev.actor, ev.action, ev.subject_ref, ev.payload) != ev.hash:
            problem = f"event {ev.seq} content does not match its hash"
        if problem:
            return ({"ok": False, "entries": count, "head": prev, "first_bad_seq": ev.seq, "reason": problem},
                    prev, expected_seq, count)
        prev, expected_seq, count = ev.hash, ev.seq + 1, count + 1
    return None, prev, expected_seq, count


def verify(session: Session, batch: int = 1000) -> dict:
    """Drain the outbox, then recompute the whole chain in the caller's session. Returns
    {ok, entries, head, first_bad_seq, reason}. The routes use ``verify_incremental``, which
    never holds the write lock (after ``drain_pending``)."""
    drain(session)
    return _rehash(lambda after: _events_after(session, after, batch), 0, GENESIS)


def _events_after(session: Session, seq: int, batch: int) -> list[AuditEvent]:
    return session.execute(select(AuditEvent).where(AuditEvent.seq > seq)
                           .order_by(AuditEvent.seq).limit(batch)).scalars().all()


def _rehash(fetch: Callable[[int], list[AuditEvent]], seq: int, head: str) -> dict:
    """Re-hash the chain after event ``seq`` (whose hash is ``head``) to the newest event,
    ``fetch(after_seq)`` giving the next batch. Same result shape as ``verify``."""
    prev, expected_seq, count, last_seq = head, seq + 1, seq, seq
    while rows := fetch(last_seq):
        bad, prev, expected_seq, count = _check_rows(rows, prev, expected_seq, count)
        if bad:
            return bad
        last_seq = rows[-1].seq
    return {"ok": True, "entries": count, "head": prev, "first_bad_seq": None, "reason": None}


# verified-up-to marks of this process: database url -> (seq, hash) of the last verified event
_marks: dict[str, tuple[int, str]] = {}
_marks_lock = threading.Lock()


def verify_incremental(url: str, *, full: bool = False, batch: int = 1000) -> dict:
    """Verify the chain from this process's verified-up-to mark (``full``: from the genesis).

    Each call re-reads the marked event (its hash must not have changed: a truncation or a
    rewrite behind the mark shows there), then hashes only the events after it, in batches,
    each in its own read-only transaction: it never holds the write lock, so writers go on
    while it runs (SQLite WAL readers do not block writers; Postgres reads take no lock).
    The first call of a process hashes the whole chain once.
    Returns {ok, entries, head, first_bad_seq, reason, checked (events hashed by this call)}.
    A rewrite of the whole chain, re-hashed, is what no hash chain can see by itself: signed
    checkpoints (``app.audit.checkpoints``) pin the head for that."""
    with _marks_lock:
        last_seq, prev = (0, GENESIS) if full else _marks.get(url, (0, GENESIS))
    if last_seq:
        with read_scope(url) as db:
            ev = db.get(AuditEvent, last_seq)
            found = ev.hash if ev is not None else None
        if found != prev:
            with _marks_lock:
                _marks.pop(url, None)
            what = "is missing (truncated)" if found is None else "has changed since it was verified"
            return {"ok": False, "entries": last_seq - 1, "head": prev, "first_bad_seq": last_seq,
                    "reason": f"event {last_seq} {what}", "checked": 0}
    expected_seq, count, checked = last_seq + 1, last_seq, 0
    while True:
        with read_scope(url) as db:
            rows = db.execute(select(AuditEvent).where(AuditEvent.seq > last_seq)
                              .order_by(AuditEvent.seq).limit(batch)).scalars().all()
        if not rows:
            break
        bad, prev, expected_seq, count = _check_rows(rows, prev, expected_seq, count)
        checked += len(rows)
        if bad:
            return {**bad, "checked": checked}
        last_seq = rows[-1].seq
        with _marks_lock:
            if _marks.get(url, (0, GENESIS))[0] < last_seq:
                _marks[url] = (last_seq, prev)
    return {"ok": True, "entries": count, "head": prev, "first_bad_seq": None, "reason": None, "checked": checked}


def verify_after(url: str, seq: int, head: str, *, batch: int = 1000) -> dict:
    """Re-hash the chain after event ``seq``, whose hash must be ``head`` (a signed
    checkpoint's: the caller checked the event still carries it), up to the newest event; each
    batch in its own read-only transaction. Same result shape as ``verify``."""
    def fetch(after: int) -> list[AuditEvent]:
        with read_scope(url) as db:
            return _events_after(db, after, batch)

    return _rehash(fetch, seq, head)


def page(session: Session, *, after_seq: int = 0, limit: int = 100, action: str | None = None) -> list[AuditEvent]:
    q = select(AuditEvent).where(AuditEvent.seq > after_seq)
    if action:
        q = q.where(AuditEvent.action == action)
    return list(session.execute(q.order_by(AuditEvent.seq).limit(limit)).scalars())


def verify_lines(lines) -> dict:
    """Recompute a chain exported by ``GET /v1/audit/export`` (an iterable of JSON lines),
    without the database. Same result shape as ``verify``. A checkpoint line (``{"checkpoint":
    ...}``, after the event it pins) must match the chain at that point; its signature is
    checked by ``app.audit.checkpoints.verify_export``."""
    prev, expected_seq, count = GENESIS, None, 0
    for raw in lines:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        if not raw.strip():
            continue
        ev = json.loads(raw)
        if "checkpoint" in ev:
            cp = (ev["checkpoint"] or {}).get("certificate") or {}
            if expected_seq is not None and (cp.get("seq") != expected_seq - 1 or cp.get("head") != prev):
                return {"ok": False, "entries": count, "head": prev, "first_bad_seq": cp.get("seq"),
                        "reason": f"checkpoint of event {cp.get('seq')} does not match the chain"}
            continue
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


def drain_pending(url: str) -> int:
    """Chain what waits in the outbox, if anything (checked first on a read-only session, so an
    empty outbox costs no write transaction — on SQLite, no write lock). Never waits for
    another writer on Postgres: that one drains. Returns how many events were chained."""
    with read_scope(url) as db:
        if db.execute(select(AuditOutbox.id).limit(1)).first() is None:
            return 0
    with session_scope(url) as db:
        return drain(db, wait=False)


class AuditDrainer(PeriodicThread):
    """The gateway's background writer: drains the outbox every ``LETHE_AUDIT_DRAIN_S``."""

    def __init__(self, settings):
        super().__init__("lethe-audit-drain", settings.audit_drain_s, lambda: drain_pending(settings.database_url))
