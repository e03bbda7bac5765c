from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from ..deps import SessionDep
from ..security import AUDIT_READ, require_scope
from . import service

router = APIRouter(prefix="/v1/audit", tags=["audit"], dependencies=[Depends(require_scope(AUDIT_READ))])


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
