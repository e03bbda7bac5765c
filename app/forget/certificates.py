"""Deletion certificates: a signed statement, per completed request, of what was erased
from which model version, how forgetting was verified, and where the audit log says so.
Evidence of a request, so part of the request domain; it reads the audit trail and signs
with the audit key (``app/audit/signing.py``)."""
from __future__ import annotations

import hashlib
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit.models import AuditEvent
from ..audit.signing import sign_document
from ..errors import LetheError
from ..registry import service as registry

CERTIFICATE_TYPE = "lethe.deletion_certificate"


def completion_event(session: Session, request_id: str) -> AuditEvent | None:
    """The request's ``forget.completed`` audit entry (payloads are canonical JSON)."""
    needle = f'%"request_id":{json.dumps(request_id)}%'
    return session.execute(select(AuditEvent).where(AuditEvent.action == "forget.completed",
                                                    AuditEvent.payload.like(needle))
                           .order_by(AuditEvent.seq.desc()).limit(1)).scalar_one_or_none()


def consolidation_event(session: Session, req) -> AuditEvent | None:
    """The ``model.consolidated`` entry naming the request (served approximately, then made
    exact by a later retrain), if any."""
    if req.exact_version is None or req.exact_version == req.version_after:
        return None
    needle = f'%{json.dumps(req.id)}%'
    return session.execute(select(AuditEvent).where(AuditEvent.action == "model.consolidated",
                                                    AuditEvent.payload.like(needle))
                           .order_by(AuditEvent.seq.desc()).limit(1)).scalar_one_or_none()


def _entry(event: AuditEvent | None) -> dict | None:
    return {"seq": event.seq, "action": event.action, "hash": event.hash} if event is not None else None


def _version(session: Session, model: str, number: int | None) -> dict | None:
    if number is None:
        return None
    v = registry.get_version(session, model, number)
    return {"version": number, "sha256": v.sha256 if v else None}


def raw_data(session: Session, req) -> dict | None:
    """Where the request's rows stand in their dataset's store: when they were hidden from
    every read (the deletion vector, ``raw_deleted_at``) and when a compaction physically
    removed their bytes (the first ``dataset.compacted`` entry covering that time, a signed
    event of its own). None when the model's rows are not in a store; ``bytes_gone_at`` None
    until the compaction ran (within ``LETHE_ERASE_WITHIN_S``)."""
    import datetime as dt

    from ..catalogue.models import TrainingInstance

    rows = []
    ids = list(req.instance_ids)
    for k in range(0, len(ids), 500):
        rows += session.execute(select(TrainingInstance.dataset, TrainingInstance.raw_deleted_at).where(
            TrainingInstance.model_name == req.model_name, TrainingInstance.instance_id.in_(ids[k:k + 500]))).all()
    datasets = sorted({d for d, _ in rows if d})
    if not datasets:
        return None
    hidden = [t for _, t in rows if t is not None]
    out = {"dataset": datasets[0] if len(datasets) == 1 else datasets, "rows_hidden": len(hidden),
           "hidden_at": max(hidden).isoformat() if hidden else None, "bytes_gone_at": None, "compaction_entry": None}
    if not hidden or len(hidden) < len(rows):  # some rows still held live by another model's catalogue
        return out
    since = max(hidden).replace(tzinfo=dt.timezone.utc) if max(hidden).tzinfo is None else max(hidden)
    for name in datasets:
        needle = f'%"dataset":{json.dumps(name)}%'
        found = None
        for ev in session.execute(select(AuditEvent).where(AuditEvent.action == "dataset.compacted",
                                                           AuditEvent.payload.like(needle))
                                  .order_by(AuditEvent.seq)).scalars():
            body = json.loads(ev.payload)
            if dt.datetime.fromisoformat(body["hidden_through"]) >= since:
                found = (body["bytes_gone_at"], ev)
                break
        if found is None:
            return out
        if out["bytes_gone_at"] is None or found[0] > out["bytes_gone_at"]:
            out["bytes_gone_at"], out["compaction_entry"] = found[0], _entry(found[1])
    return out


def served_path(session: Session, req, metrics: dict) -> dict:
    """Which path served this request's rows (every row of a job takes its job's path), why, and
    each row's membership risk against the threshold the planner used (app/jobs/planner.py)."""
    from app.jobs.models import Job

    plan = (session.get(Job, req.job_id).plan or {}) if req.job_id else {}
    risk = plan.get("row_risk") or {}
    return {"served": "exact" if metrics.get("exact", plan.get("exact")) else "approximate",
            "reason": plan.get("reason"), "risk_threshold": (plan.get("inputs") or {}).get("risk_threshold"),
            "row_risk": {i: risk[i] for i in sorted(req.instance_ids) if i in risk}}


def _starting_point(session: Session, model_name: str) -> dict | None:
    from ..registry import service as registry

    m = registry.get_model(session, model_name)
    start = (m.recipe or {}).get("start") if m is not None else None
    return {k: start.get(k) for k in ("model", "version", "sha256")} if start else None


def build(session: Session, req) -> dict:
    """The certificate body (deterministic: the same request gives the same bytes)."""
    if req.status != "completed":
        raise LetheError(409, "not_completed", f"request {req.id} is {req.status}; certificates exist for completed requests only")
    event = completion_event(session, req.id)
    if event is None:
        raise LetheError(409, "no_completion_entry", f"request {req.id} has no forget.completed audit entry")
    metrics = dict(req.metrics or {})
    # a tenant's request that found nothing to erase (app/forget/nodata.py) says so
    outcome = {"outcome": "no_data"} if req.reason_code == "no_data" else {}
    start = _starting_point(session, req.model_name)
    if start is not None:  # the weights every retrain of this model starts from (app/registry/starting.py)
        outcome["starting_point"] = start
    from ..jobs.restarts import lineage_of

    follows = lineage_of(session, req)
    if follows is not None:  # recorded because its starting point forgot the subject (app/jobs/restarts.py)
        outcome["lineage"] = follows
    return {**outcome,
        "type": CERTIFICATE_TYPE, "format_version": 1, "issuer": "lethe",
        "request_id": req.id, "external_id": req.external_id, "subject_ref": req.subject_ref,
        "model": req.model_name, "instances": len(req.instance_ids),
        "instances_sha256": hashlib.sha256("\n".join(sorted(req.instance_ids)).encode()).hexdigest(),
        "objective": req.objective, "method": metrics.get("method", req.method), "requested_method": req.method,
        "version_before": _version(session, req.model_name, req.version_before),
        "version_after": _version(session, req.model_name, req.version_after),
        # the exact version holding the erasure: version_after when the job retrained, else the
        # consolidation that retrained later (None until then), and that step's audit entry
        "exact_version": _version(session, req.model_name, req.exact_version),
        "consolidation_entry": _entry(consolidation_event(session, req)),
        "verification": metrics,
        "path": served_path(session, req, metrics),
        "received_at": req.received_at.isoformat(), "completed_at": req.completed_at.isoformat(),
        "due_at": req.due_at.isoformat(), "completed_within_due": req.completed_at <= req.due_at,
        "audit_entry": _entry(event),
        # the erased rows in the dataset store: hidden at once, bytes gone after compaction
        "raw_data": raw_data(session, req),
        **_sealed(session, req),
    }


def _sealed(session: Session, req) -> dict:
    """A model its own pipeline retrains kept the request's rows sealed until its retrain
    order's upload was scored on them, or the due date (app/registry/probes.py): when they
    were sealed, until when they could be kept, when the key was destroyed and why."""
    from ..registry import probes

    got = probes.for_job(session, req.job_id)
    return {"sealed_rows": got} if got is not None else {}


def issue(session: Session, settings, req) -> dict:
    return sign_document(settings, build(session, req))
