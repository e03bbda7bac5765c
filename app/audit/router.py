from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from ..db import session_scope
from ..deps import SessionDep, SettingsDep
from ..security import AUDIT_READ, require_scope
from . import service, signing
from .models import AuditEvent

router = APIRouter(prefix="/v1/audit", tags=["audit"], dependencies=[Depends(require_scope(AUDIT_READ))])
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


@router.get("", response_model=AuditPage, summary="Audit events, oldest first, paged by sequence number")
def list_audit(session: SessionDep, after_seq: int = Query(default=0, ge=0),
               limit: int = Query(default=100, ge=1, le=1000), action: str | None = Query(default=None, max_length=64)):
    rows = service.page(session, after_seq=after_seq, limit=limit, action=action)
    entries = [AuditRead(seq=r.seq, ts=r.ts, actor=r.actor, action=r.action, subject_ref=r.subject_ref,
                         payload=json.loads(r.payload), prev_hash=r.prev_hash, hash=r.hash) for r in rows]
    return AuditPage(entries=entries, next_after_seq=rows[-1].seq if len(rows) == limit else None)


@router.get("/verify", response_model=VerifyResult, summary="Recompute the hash chain")
def verify_audit(session: SessionDep):
    return VerifyResult(**service.verify(session))


def export_line(ev: AuditEvent) -> str:
    """One event as stored: ``payload`` is the exact canonical text that was hashed."""
    return service.canonical_json({"seq": ev.seq, "ts": ev.ts, "actor": ev.actor, "action": ev.action,
                                   "subject_ref": ev.subject_ref, "payload": ev.payload, "prev_hash": ev.prev_hash,
                                   "hash": ev.hash}) + "\n"


@router.get("/export", summary="The whole chain as JSON lines (application/x-ndjson), oldest first",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}},
                             "description": "one event per line: {seq, ts, actor, action, subject_ref, payload "
                                            "(the hashed canonical text), prev_hash, hash}"}})
def export_audit(settings: SettingsDep, after_seq: int = Query(default=0, ge=0)):
    url = settings.database_url

    def lines():
        last = after_seq
        while True:
            with session_scope(url) as db:
                rows = service.page(db, after_seq=last, limit=1000)
                chunk = "".join(export_line(r) for r in rows)
            if not rows:
                return
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
