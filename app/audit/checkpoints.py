"""Signed checkpoints of the audit chain head: evidence that does not trust the database.

A hash chain proves only that its rows agree with each other. Whoever controls the database
can drop the append-only triggers, delete the newest events, or rewrite one and re-hash every
event after it, and the chain still verifies. A checkpoint pins the head: the service signs
``{type: "lethe.audit_checkpoint", seq, head (that event's hash), at}`` with its Ed25519 key
(``app.audit.signing``; the private key is a file, not a row) once the chain up to ``seq`` has
verified. Checkpoints are

- made every ``LETHE_AUDIT_CHECKPOINT_EVENTS`` events or ``LETHE_AUDIT_CHECKPOINT_INTERVAL_S``
  seconds (whichever comes first, when there is something new) by a gateway thread;
- stored in ``audit_checkpoints`` (append-only), served at ``GET /v1/audit/checkpoints`` and
  interleaved in ``GET /v1/audit/export`` after the event each pins;
- optionally appended to ``LETHE_AUDIT_CHECKPOINT_FILE`` (JSON lines), a file outside the
  database (ship it to write-once storage);
- checked by ``GET /v1/audit/verify`` (the newest of the database and of the file) and by
  ``lethe audit verify --checkpoint SAVED.json``, which needs nothing from the server but the
  export: a checkpoint whose event is missing means the chain was truncated, one whose event
  has another hash means it was rewritten.

A checkpoint has the format of a deletion certificate (``{certificate, canonical,
signature}``, ``signing.sign_document``), so the same verifier checks both.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
from typing import Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import read_scope, session_scope, utcnow
from ..periodic import PeriodicThread
from . import service, signing
from .models import AuditCheckpoint, AuditEvent

log = logging.getLogger("lethe.audit")
TYPE = "lethe.audit_checkpoint"


def document(seq: int, head: str, at: str) -> dict:
    return {"type": TYPE, "format_version": 1, "seq": seq, "head": head, "at": at}


def signed(row: AuditCheckpoint) -> dict:
    """The stored row as the signed document ``{certificate, canonical, signature}``."""
    doc = document(row.seq, row.head, row.at)
    return {"certificate": doc, "canonical": signing.canonical(doc),
            "signature": {"alg": "Ed25519", "key_id": row.key_id, "value": row.signature}}


def latest(session: Session) -> AuditCheckpoint | None:
    return session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1)).scalar_one_or_none()


def page(session: Session, *, after_seq: int = 0, upto_seq: int | None = None, limit: int = 100) -> list[AuditCheckpoint]:
    q = select(AuditCheckpoint).where(AuditCheckpoint.seq > after_seq)
    if upto_seq is not None:
        q = q.where(AuditCheckpoint.seq <= upto_seq)
    return list(session.execute(q.order_by(AuditCheckpoint.seq).limit(limit)).scalars())


def _due(settings, last: AuditCheckpoint | None, seq: int, now: dt.datetime) -> bool:
    if last is None:
        return True
    if seq - last.seq >= settings.audit_checkpoint_events:
        return True
    age = (now - dt.datetime.fromisoformat(last.at)).total_seconds()
    return age >= settings.audit_checkpoint_interval_s


def create(settings, *, force: bool = False) -> dict | None:
    """Verify the chain (incrementally) and, when a checkpoint is due (``force``: whenever the
    head moved), sign the verified head, store it and append it to the checkpoint file.
    Returns the signed checkpoint, or None (nothing new, not due, or the chain is broken:
    a broken chain is never signed)."""
    url = settings.database_url
    res = service.verify_incremental(url)
    if not res["ok"]:
        log.error("audit chain broken at event %s (%s): no checkpoint signed", res["first_bad_seq"], res["reason"])
        return None
    seq, head = res["entries"], res["head"]
    if seq == 0:
        return None
    now = utcnow()
    with read_scope(url) as db:
        last = latest(db)
    if last is not None and last.seq >= seq:
        return None
    if not force and not _due(settings, last, seq, now):
        return None
    out = signing.sign_document(settings, document(seq, head, now.isoformat(timespec="microseconds")))
    row = AuditCheckpoint(seq=seq, head=head, at=out["certificate"]["at"], key_id=out["signature"]["key_id"],
                          signature=out["signature"]["value"])
    try:
        with session_scope(url) as db:
            db.add(row)
    except IntegrityError:  # another gateway pinned the same event first
        return None
    if settings.audit_checkpoint_file:
        append_file(settings.audit_checkpoint_file, out)
    log.info("audit checkpoint: event %d signed (head %s)", seq, head[:16])
    return out


def append_file(path: str, checkpoint: dict) -> None:
    """One JSON line per checkpoint, flushed to disk (mode 0600 when created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps(checkpoint, sort_keys=True, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_file(path: str) -> list[dict]:
    """Checkpoints saved in a file: one JSON document, or JSON lines (the checkpoint file)."""
    with open(path) as f:
        text = f.read()
    try:
        one = json.loads(text)
        docs = one if isinstance(one, list) else [one]
    except ValueError:
        docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [d.get("checkpoint", d) if isinstance(d, dict) else d for d in docs]


def holds(checkpoint: dict, hash_at: Callable[[int], str | None]) -> str | None:
    """None when the chain still has the pinned event with the pinned hash; else why not
    (``truncated`` / ``rewritten``). The signature is checked separately (verify_signed)."""
    doc = checkpoint.get("certificate") if isinstance(checkpoint, dict) else None
    if not isinstance(doc, dict) or doc.get("type") != TYPE or not isinstance(doc.get("seq"), int):
        return "not a Lethe audit checkpoint"
    seq, head = doc["seq"], doc.get("head")
    found = hash_at(seq)
    if found is None:
        return f"truncated: the chain has no event {seq}, which the checkpoint signed at {doc.get('at')} pins"
    if found != head:
        return (f"rewritten: event {seq} has hash {found[:16]}..., the checkpoint signed at {doc.get('at')} "
                f"pins {str(head)[:16]}...")
    return None


def verify_signed(settings, checkpoint: dict) -> bool:
    """The checkpoint was signed by this service's key and says what its canonical text says."""
    return signing.verify_certificate(checkpoint, signing.private_key(settings).public_key())[0]


def check_server_side(settings) -> tuple[int, str | None]:
    """The newest checkpoint of the database and of the checkpoint file must hold.
    Returns (how many were checked, the first problem or None)."""
    cps: list[dict] = []
    with read_scope(settings.database_url) as db:
        last = latest(db)
        if last is not None:
            cps.append(signed(last))
    path = settings.audit_checkpoint_file
    if path and os.path.exists(path):
        try:
            saved = read_file(path)
        except (OSError, ValueError) as e:
            return len(cps), f"checkpoint file {path} is unreadable: {e.__class__.__name__}"
        if saved:
            newest = max(saved, key=lambda c: (c.get("certificate") or {}).get("seq", 0))
            if not verify_signed(settings, newest):
                return len(cps) + 1, f"the newest checkpoint in {path} does not carry this service's signature"
            cps.append(newest)

    def hash_at(seq: int) -> str | None:
        with read_scope(settings.database_url) as db:
            ev = db.get(AuditEvent, seq)
            return ev.hash if ev is not None else None

    for cp in cps:
        problem = holds(cp, hash_at)
        if problem:
            return len(cps), problem
    return len(cps), None


class Checkpointer(PeriodicThread):
    """Gateway thread: ``create`` every ``audit_checkpoint_poll_s`` (0 = off)."""

    def __init__(self, settings):
        super().__init__("lethe-audit-checkpoints", settings.audit_checkpoint_poll_s, lambda: create(settings))
