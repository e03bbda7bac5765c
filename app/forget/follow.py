"""Requests that follow another: no ``already_pending`` oracle (docs/service.md, *No oracle*).

A tenant's request whose selection another open request already covers (its own or another
tenant's: the catalogue belongs to the model) is not refused — a 409 would tell the caller
that the model holds those instances and that someone is erasing them. It is accepted like
any request (202, ``queued``, the same answer field by field) and *follows* the holder: it
takes no claims and has no job until every instance it names is free again (the holder
completed, failed, or was canceled). ``resume`` (the sweeper, every
``LETHE_SWEEPER_INTERVAL_S``) then drops what was erased in the meantime, claims the rest and
puts the request on a job, so cancelling the first request no longer lets the second erase
nothing; when nothing is left (the holder erased it all), the request is a no-data request
(``nodata.py`` closes it). Operators keep the precise 409.
"""
from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..catalogue import service as catalogue
from ..db import read_scope, session_scope
from ..jobs import models as jm
from ..jobs import service as jobs
from ..registry import service as registry
from . import claims
from . import models as fm
from .models import ForgetRequest, PendingClaim

log = logging.getLogger("lethe.follow")


class _StillHeld(Exception):
    pass


def holders(session: Session, model_name: str, instance_ids: list[str]) -> set[str]:
    """The ids among ``instance_ids`` that an open request has claimed (indexed reads)."""
    ids, out = sorted(set(instance_ids)), set()
    for i in range(0, len(ids), 500):
        out.update(session.execute(select(PendingClaim.instance_id).where(
            PendingClaim.model_name == model_name, PendingClaim.instance_id.in_(ids[i:i + 500]))).scalars())
    return out


def detach(session: Session, req: ForgetRequest, job_id: str | None, created: bool) -> None:
    """Make a request just recorded (claims taken, job attached) a follower: its claims go,
    it leaves its job, and a job created for it alone goes too (nobody else can have joined
    it: it is not committed yet)."""
    claims.release(session, req.id)
    req.job_id = None
    session.flush()
    if created and job_id is not None:
        job = session.get(jm.Job, job_id)
        if job is not None:
            session.delete(job)
            session.flush()


def waiting(session: Session, limit: int = 200) -> list[str]:
    """Followers: queued, no job, a selection (a no-data request has none), oldest first."""
    rows = session.execute(select(ForgetRequest.id, ForgetRequest.instance_ids)
                           .where(ForgetRequest.status == fm.QUEUED, ForgetRequest.job_id.is_(None))
                           .order_by(ForgetRequest.received_at).limit(limit)).all()
    return [rid for rid, ids in rows if ids]


def resume(settings, *, limit: int = 200) -> list[str]:
    """Put every follower whose instances are free on a job (one transaction each). Returns
    the ids of the jobs created (to dispatch after the commit)."""
    with read_scope(settings.database_url) as db:
        ids = waiting(db, limit)
    created_jobs: list[str] = []
    for rid in ids:
        try:
            with session_scope(settings.database_url) as db:
                job_id = _resume_one(db, settings, rid)
                if job_id:
                    created_jobs.append(job_id)
        except _StillHeld:
            continue
    return created_jobs


def _resume_one(session: Session, settings, rid: str) -> str | None:
    req = session.get(ForgetRequest, rid)
    if req is None:
        return None
    registry.get_model(session, req.model_name, lock=True)  # serialises with submissions and claims
    session.refresh(req)
    if req.status != fm.QUEUED or req.job_id is not None or not req.instance_ids:
        return None
    if holders(session, req.model_name, req.instance_ids):
        return None  # the holder is still open
    rows = catalogue.by_ids(session, req.model_name, list(req.instance_ids))
    keep = [i for i in req.instance_ids if i in rows and rows[i].erased_at is None]
    if not keep:  # the holder erased it all: a no-data request now
        req.instance_ids = []
        return None
    if claims.take(session, req.model_name, req.id, keep):
        raise _StillHeld  # claimed since the check: roll back, next pass
    req.instance_ids = keep
    job_id, created = jobs.attach(session, req, settings.max_attempts)
    session.flush()
    audit.append(session, actor="system", action="forget.followed", subject_ref=req.subject_ref,
                 payload={"request_id": req.id, "model": req.model_name, "instances": len(keep), "job_id": job_id})
    return job_id if created else None
