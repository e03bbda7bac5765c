from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ..db import read_scope
from ..deps import SessionDep, SettingsDep
from ..limits import MAX_DB_INT as MAX_SEQ  # a larger sequence number is a 422, not an overflow
from ..security import AUDIT_READ, require_scope
from ..security.ratelimit import EXPENSIVE
from . import checkpoints, service, signing
from .models import AuditEvent

router = APIRouter(prefix="/v1/audit", tags=["audit"])
READ = [Depends(require_scope(AUDIT_READ))]
HEAVY = [Depends(require_scope(AUDIT_READ, limit=EXPENSIVE))]  # they read the whole chain: rate limited
# open on purpose: a public key is for anyone who wants to check a certificate
keys_router = APIRouter(prefix="/v1/keys", tags=["audit"])


class AuditRead(BaseModel):
    seq: int
    ts: str
    actor: str
    action: str
    subject_ref: str | None
    payload: dict
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    entries: list[AuditRead]
    next_after_seq: int | None


class VerifyResult(BaseModel):
    ok: bool
    entries: int
    head: str
    first_bad_seq: int | None = None
    reason: str | None = None
    checked: int = Field(default=0, description="events hashed by this call (only those after the last verified one)")
    checkpoints_checked: int = Field(default=0, description="signed checkpoints compared with the chain")
    pending: int = Field(default=0, description="events recorded (audit outbox) but not yet chained when the check "
                                                "ended: committed during the call; the next call includes them")


class SignedCheckpoint(BaseModel):
    certificate: dict = Field(description="{type: lethe.audit_checkpoint, format_version, seq, head, at}")
    canonical: str = Field(description="the exact text signed")
    signature: dict = Field(description="{alg: Ed25519, key_id, value (base64)}")


class CheckpointPage(BaseModel):
    checkpoints: list[SignedCheckpoint]
    next_after_seq: int | None


@router.get("", response_model=AuditPage, dependencies=READ, summary="Audit events, oldest first, paged by sequence number")
def list_audit(session: SessionDep, settings: SettingsDep, after_seq: int = Query(default=0, ge=0, le=MAX_SEQ),
               limit: int = Query(default=100, ge=1, le=1000), action: str | None = Query(default=None, max_length=64)):
    service.drain_pending(settings.database_url)  # every event committed before this call is chained
    rows = service.page(session, after_seq=after_seq, limit=limit, action=action)
    entries = [AuditRead(seq=r.seq, ts=r.ts, actor=r.actor, action=r.action, subject_ref=r.subject_ref,
                         payload=json.loads(r.payload), prev_hash=r.prev_hash, hash=r.hash) for r in rows]
    return AuditPage(entries=entries, next_after_seq=rows[-1].seq if len(rows) == limit else None)


@router.get("/verify", response_model=VerifyResult, dependencies=HEAVY,
            summary="Verify the hash chain (only what is new since the last call) and the signed checkpoints")
def verify_audit(settings: SettingsDep, full: bool = Query(default=False, description="re-hash from the genesis")):
    """Never holds the database's write lock. ``full`` re-hashes every event (it still does
    not block writers); by default only events after this process's verified-up-to mark are
    hashed. The newest signed checkpoint (database and ``LETHE_AUDIT_CHECKPOINT_FILE``) must
    still match the chain: a truncation or a re-hashed rewrite fails here."""
    service.drain_pending(settings.database_url)  # every event committed before this call is chained
    res = service.verify_incremental(settings.database_url, full=full)
    if res["ok"]:
        n, problem = checkpoints.check_server_side(settings)
        res["checkpoints_checked"] = n
        if problem:
            res.update(ok=False, reason=problem)
    with read_scope(settings.database_url) as db:
        res["pending"] = service.pending(db)
    return VerifyResult(**res)


@router.get("/checkpoints", response_model=CheckpointPage, dependencies=READ,
            summary="Signed checkpoints of the chain head, oldest first (save them outside Lethe)")
def list_checkpoints(session: SessionDep, after_seq: int = Query(default=0, ge=0, le=MAX_SEQ),
                     limit: int = Query(default=100, ge=1, le=1000)):
    rows = checkpoints.page(session, after_seq=after_seq, limit=limit)
    return CheckpointPage(checkpoints=[SignedCheckpoint(**checkpoints.signed(r)) for r in rows],
                          next_after_seq=rows[-1].seq if len(rows) == limit else None)


def export_line(ev: AuditEvent) -> str:
    """One event as stored: ``payload`` is the exact canonical text that was hashed."""
    return service.canonical_json({"seq": ev.seq, "ts": ev.ts, "actor": ev.actor, "action": ev.action,
                                   "subject_ref": ev.subject_ref, "payload": ev.payload, "prev_hash": ev.prev_hash,
                                   "hash": ev.hash}) + "\n"


def checkpoint_line(cp) -> str:
    """A signed checkpoint, right after the event it pins."""
    return service.canonical_json({"checkpoint": checkpoints.signed(cp)}) + "\n"


@router.get("/export", dependencies=HEAVY, summary="The whole chain as JSON lines (application/x-ndjson), oldest first",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}},
                             "description": "one event per line: {seq, ts, actor, action, subject_ref, payload "
                                            "(the hashed canonical text), prev_hash, hash}; after an event "
                                            "that a signed checkpoint pins, a line {checkpoint: {certificate, "
                                            "canonical, signature}}"}})
def export_audit(settings: SettingsDep, after_seq: int = Query(default=0, ge=0, le=MAX_SEQ)):
    url = settings.database_url
    service.drain_pending(url)  # every event committed before this call is chained

    def lines():
        last = after_seq
        while True:
            with read_scope(url) as db:
                rows = service.page(db, after_seq=last, limit=1000)
                if not rows:
                    return
                pins = {c.seq: c for c in checkpoints.page(db, after_seq=last, upto_seq=rows[-1].seq, limit=1000)}
                chunk = "".join(export_line(r) + (checkpoint_line(pins[r.seq]) if r.seq in pins else "")
                                for r in rows)
            last = rows[-1].seq
            yield chunk

    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers={"Content-Disposition": "attachment; filename=lethe-audit.jsonl"})


class PublicKeyRead(BaseModel):
    alg: str
    key_id: str
    public_key_pem: str
    public_key_raw_b64: str


@keys_router.get("/audit", response_model=PublicKeyRead,
                 summary="The Ed25519 public key that verifies deletion certificates (no key needed)")
def audit_public_key(settings: SettingsDep):
    return PublicKeyRead(**signing.public_info(settings))
