"""Signed checkpoints of the audit chain head: evidence that does not trust the database.

A hash chain proves only that its rows agree with each other. Whoever controls the database
can drop the append-only triggers, delete the newest events, or rewrite one and re-hash every
event after it, and the chain still verifies. A checkpoint pins the head: the service signs
``{type: "lethe.audit_checkpoint", seq, head (that event's hash), at}`` with its Ed25519 key
(``app.audit.signing``; the private key is a file, not a row) once the chain up to ``seq`` has
verified. Checkpoints are

- made only over a chain that follows from every checkpoint held (``create``: a chain
  rewritten and re-hashed, or truncated, is refused loudly, never signed);
- made every ``LETHE_AUDIT_CHECKPOINT_EVENTS`` events or ``LETHE_AUDIT_CHECKPOINT_INTERVAL_S``
  seconds (whichever comes first, when there is something new) by a gateway thread;
- stored in ``audit_checkpoints`` (append-only), served at ``GET /v1/audit/checkpoints`` and
  interleaved in ``GET /v1/audit/export`` after the event each pins;
- appended to ``LETHE_AUDIT_CHECKPOINT_FILE`` (JSON lines), a file outside the database
  (ship it to write-once storage); a deployment (not the embedded demo) must set it: the
  database's own checkpoints can be deleted with the events they pin;
- checked by ``GET /v1/audit/verify`` (every checkpoint of the database and of the file) and by
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


class Anchor:
    """What the newest refusal said, in this process (``lethe_audit_anchor_ok`` in /metrics):
    an alert that does not depend on the audit chain it is about."""
    ok: bool = True
    problem: str | None = None
    refusals: int = 0


def _refuse(problem: str) -> None:
    Anchor.ok, Anchor.problem, Anchor.refusals = False, problem, Anchor.refusals + 1
    # a log line of its own, outside the audit chain, every time: an operator's alert hooks here
    log.critical("AUDIT CHAIN REFUSED: it does not match its signed checkpoints (%s); no checkpoint is signed "
                 "until an operator has investigated", problem)


def create(settings, *, force: bool = False) -> dict | None:
    """Sign the chain head when a checkpoint is due (``force``: whenever the head moved),
    store it and append it to the checkpoint file. Returns the signed checkpoint, or None
    (nothing new, not due, or the chain does not verify: never signed).

    What is signed must follow from what was signed before, not merely agree with itself:
    every checkpoint held (database and file, each with this service's signature) must still
    hold, the chain must verify (incrementally: ``service.verify_incremental``), and it is
    re-hashed from the newest checkpoint (whose event must carry the hash it pins) to the
    head. A chain re-hashed after a rewrite, or truncated below a checkpoint,
    is refused loudly (``_refuse``) instead of being signed; so is a missing checkpoint file
    the database says was written."""
    url = settings.database_url
    n, problem, anchor = check_all(settings)
    if problem is None:  # an event edited in place (its hash left) anywhere: the chain itself
        whole = service.verify_incremental(url)
        if not whole["ok"]:
            problem = f"event {whole['first_bad_seq']}: {whole['reason']}"
    if problem is None:
        after = (anchor["seq"], anchor["head"]) if anchor else (0, service.GENESIS)
        res = service.verify_after(url, *after)
        if not res["ok"]:
            problem = f"event {res['first_bad_seq']}: {res['reason']}"
    if problem is not None:
        _refuse(problem)
        return None
    Anchor.ok, Anchor.problem = True, None
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


def held(settings) -> tuple[list[dict], str | None]:
    """Every signed checkpoint this service holds: the database's and the checkpoint file's
    (once each). Returns (checkpoints, problem): a configured checkpoint file that is missing
    while the database holds checkpoints, or unreadable, or a checkpoint without this
    service's signature, is a problem — never skipped."""
    with read_scope(settings.database_url) as db:
        rows = list(db.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)).scalars())
    cps = [signed(r) for r in rows]
    path = settings.audit_checkpoint_file
    if path:
        if not os.path.exists(path):
            if rows:
                return cps, (f"checkpoint file {path} is missing, but the database holds {len(rows)} checkpoint(s) "
                             "that were written to it")
        else:
            try:
                cps += read_file(path)
            except (OSError, ValueError) as e:
                return cps, f"checkpoint file {path} is unreadable: {e.__class__.__name__}"
    seen, out = set(), []
    for cp in cps:
        key = (json.dumps(cp.get("certificate"), sort_keys=True), json.dumps(cp.get("signature"), sort_keys=True))
        if key not in seen:
            seen.add(key)
            out.append(cp)
    public = signing.private_key(settings).public_key()
    for cp in out:
        if not signing.verify_certificate(cp, public)[0]:
            seq = (cp.get("certificate") or {}).get("seq")
            return out, f"checkpoint of event {seq} does not carry this service's signature"
    return out, None


def check_all(settings) -> tuple[int, str | None, dict | None]:
    """Every checkpoint held (``held``) must still hold: its event present with the hash it
    pins. Returns (how many were checked, the first problem or None, the newest checkpoint's
    document or None)."""
    cps, problem = held(settings)
    if problem:
        return len(cps), problem, None
    docs = [cp["certificate"] for cp in cps]
    seqs = sorted({d["seq"] for d in docs if isinstance(d.get("seq"), int)})
    hashes: dict[int, str] = {}
    with read_scope(settings.database_url) as db:
        for i in range(0, len(seqs), 1000):
            hashes.update(db.execute(select(AuditEvent.seq, AuditEvent.hash)
                                     .where(AuditEvent.seq.in_(seqs[i:i + 1000]))).tuples().all())
    for cp in sorted(cps, key=lambda c: c["certificate"].get("seq", 0)):
        problem = holds(cp, hashes.get)
        if problem:
            return len(cps), problem, None
    return len(cps), None, max(docs, key=lambda d: d["seq"]) if docs else None


def check_server_side(settings) -> tuple[int, str | None]:
    """Every checkpoint of the database and of the checkpoint file must hold (``check_all``).
    Returns (how many were checked, the first problem or None)."""
    n, problem, _ = check_all(settings)
    return n, problem


class Checkpointer(PeriodicThread):
    """Gateway thread: ``create`` every ``audit_checkpoint_poll_s`` (0 = off)."""

    def __init__(self, settings):
        super().__init__("lethe-audit-checkpoints", settings.audit_checkpoint_poll_s, lambda: create(settings))
