"""A starting point that forgets: every model fine-tuned from it is retrained from its new version.

A model whose recipe names a starting point (app/registry/starting.py) holds what that
starting point learned, so when the starting point's model forgets a subject, the subject's
influence is still in every model that started from a version holding them, even when those
models never saw a row of the subject (fine-tuned on other data). The lineage carries the
erasure on: each round the sweeper (``restarts_due``) looks for models whose pinned starting
version is *tainted* (``governance.taint``: rows its model erased since are in its weights) and
whose starting model now serves a version that holds none of them, and

- re-pins the model's starting point to that version (model, version, sha256: every later
  training of the model starts from it);
- for a model Lethe trains: records one forget request per request of the starting model
  that erased those rows (the same subject, its due date, no rows of this model's own), on
  one exact retraining job (a consolidation: fine-tuning again from the new starting point
  on the retained rows); the job publishes an exact version that completes them, and each
  one's certificate names the starting point's request(s) it follows (``lineage``);
- for a model its own pipeline retrains (trainer ``external``): issues a retrain order whose
  recipe carries the new starting point (app/registry/orders.py; an open order with the old
  one is cancelled) and whose ``follows`` names the requests it follows: its verified upload
  records and completes one request per followed request, exact, with the same ``lineage``.

Audited as ``lineage.restarted`` (the model, the starting point's old and new version, the
requests it follows, the job or order). The starting point's own retrains are unaffected.
"""
from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..db import utcnow
from ..registry import governance, orders
from ..registry import service as registry
from ..registry.models import MODEL_READY, PRODUCTION, RegisteredModel
from .consolidation import RETRAIN
from . import service as jobs
from .models import CONSOLIDATE, QUEUED, RUNNING, Job

LINEAGE = "lineage"


def _started_models(session: Session) -> list[RegisteredModel]:
    return [m for m in session.execute(select(RegisteredModel).order_by(RegisteredModel.name)).scalars()
            if (m.recipe or {}).get("start") and m.status == MODEL_READY]


def _pending(session: Session, model_name: str) -> bool:
    """A restart of the model is already queued or running (its job is one of ours)."""
    for job in session.execute(select(Job).where(Job.model_name == model_name, Job.objective == CONSOLIDATE,
                                                 Job.status.in_([QUEUED, RUNNING]))).scalars():
        if (job.plan or {}).get(LINEAGE):
            return True
    return False


def restarts_due(session: Session, settings, *, actor: str = "sweeper") -> list[str]:
    """Re-pin and retrain (or order) every model whose starting version holds erased data.
    Returns the ids of the jobs created (dispatched after the commit)."""
    created = []
    for m in _started_models(session):
        start = m.recipe["start"]
        base = start["model"]
        if not governance.taint(session, base, start["version"])["tainted"] or _pending(session, m.name):
            continue
        held = governance.taint(session, base, start["version"])["jobs"]
        new = registry.resolve_alias(session, base, PRODUCTION)
        if (new is None or new.version == start["version"] or registry.is_bundle(new.storage_path)
                or governance.taint(session, base, new.version)["tainted"]):
            continue  # nothing cleaner to start from yet: the next round looks again
        if registry.resolve_alias(session, m.name, PRODUCTION) is None:
            continue
        follows = jobs.completed_requests(session, base, held)
        moved = {"model": base, "from_version": start["version"], "from_sha256": start.get("sha256"),
                 "to_version": new.version, "to_sha256": new.sha256}
        m.recipe = {**m.recipe, "start": {"model": base, "version": new.version, "sha256": new.sha256}}
        facts = {"model": m.name, "starting_point": moved, "follows_requests": [r.id for r in follows],
                 "erasure_jobs": held}
        why = (f"starting point {base} v{start['version']} holds data {base} erased since "
               f"({len(follows)} request(s)): retrained from {base} v{new.version}")
        lineage = {k: facts[k] for k in ("starting_point", "follows_requests")}
        if orders.is_external(m):
            stale = orders.open_order(session, m.name)  # issued with the old starting point
            if stale is not None:
                orders.cancel(session, settings, stale, actor=actor, reason=f"its starting point moved to {base} v{new.version}")
            order, _ = orders.issue(session, settings, m.name, actor=actor, reason=why, follows=lineage)
            facts["order_id"] = order.id
        else:
            job = _restart_job(session, m.name, why, lineage, settings.max_attempts)
            facts["job_id"] = job.id
            facts["request_ids"] = jobs.follow_requests(session, m.name, facts["follows_requests"], job,
                                                        method=RETRAIN, tag=LINEAGE)
            created.append(job.id)
        audit.append(session, actor=actor, action="lineage.restarted", payload=facts)
    session.flush()
    return created


def _restart_job(session: Session, model_name: str, why: str, lineage: dict, max_attempts: int) -> Job:
    prod = registry.resolve_alias(session, model_name, PRODUCTION)
    job = Job(id=str(uuid.uuid4()), model_name=model_name, objective=CONSOLIDATE, method=RETRAIN, status=QUEUED,
              progress=0.0, stage="queued", attempts=0, max_attempts=max_attempts, created_at=utcnow(),
              plan={"method": RETRAIN, "exact": True, "reason": why, "base_version": prod.version,
                    LINEAGE: lineage})
    session.add(job)
    session.flush()
    return job


def lineage_of(session: Session, req) -> dict | None:
    """What a certificate says of a request recorded because a starting point forgot: the
    starting point's move and the requests it follows (None for any other request)."""
    job = session.get(Job, req.job_id) if req.job_id else None
    got = (job.plan or {}).get(LINEAGE) if job is not None else None
    return dict(got) if got else None
