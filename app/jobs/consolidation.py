"""Consolidation: approximate now, exact before the deadline.

A request served by an approximate method completes at once, but its version only
*approximately* lacks the erased data. Such a version carries approximation debt
(``model_versions.debt_*``): the instances and versions unlearned approximately since the
last exact version of its lineage, and the earliest due date among the requests they served.
A consolidation job pays it: it retrains from scratch (the registry's ``retrain`` method with
the model's stored recipe) on every retained row and publishes a version marked exact. Every
request served approximately since then gains that version (``forget_requests.exact_version``,
shown in its certificate) and the audit trail records ``model.consolidated`` naming them.

Any exact version pays the debt the same way (a forget job the planner sent to retraining is
a consolidation too): training from scratch on the live rows leaves out everything erased.

When (``due``, a pure function): the debt passes ``LETHE_CONSOLIDATE_AFTER_INSTANCES`` or
``LETHE_CONSOLIDATE_AFTER_VERSIONS``, or the earliest due date is nearer than a retrain
(twice the model's recorded training time) plus ``LETHE_CONSOLIDATE_MARGIN_S``. The sweeper
checks every model each round (``app/jobs/sweeper.py``: ``consolidate_due``); an operator asks
with ``POST /v1/models/{name}/consolidate`` (``request``).

Coordination: a consolidation is a job of its model like any other, so ``claim`` runs one job
per model at a time. When it starts it takes over the model's queued forget requests that
retraining serves (objective ``retrain_like``, no fixed label: ``jobs.service.absorb``): their instances
are left out of the retrain and erased by its publish. A deletion arriving while it runs gets
a new job, which runs on the exact version once it is published.

Superseded approximate versions (an exact version descends from them) are never served again:
rollback to them is refused (409 ``version_superseded``) and their weights are purged once a
newer version serves (``registry.governance``).
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..db import utcnow
from ..errors import LetheError
from ..forget import models as fm
from ..forget.models import ForgetRequest
from ..registry import service as registry
from ..webhooks import service as webhooks
from ..registry.models import PRODUCTION, ModelAlias, ModelVersion
from .models import CONSOLIDATE, QUEUED, RUNNING, Job

RETRAIN = "retrain"  # the catalogue's exact method (app/jobs/planner.py: RETRAIN)
UNKNOWN_TRAIN_S = 3600.0  # a model with no recorded training time is assumed to retrain in an hour


@dataclass(frozen=True)
class Debt:
    instances: int
    versions: int
    due_at: dt.datetime | None

    @classmethod
    def of(cls, v: ModelVersion) -> "Debt":
        return cls(v.debt_instances or 0, v.debt_versions or 0, v.debt_due_at)

    def to_json(self) -> dict:
        return {"instances": self.instances, "versions": self.versions,
                "due_at": self.due_at.isoformat() if self.due_at else None}


def due(debt: Debt, *, exact: bool, now: dt.datetime, train_seconds: float | None, after_instances: int,
        after_versions: int, margin_s: float) -> str | None:
    """Why the version must be consolidated now, or None. Pure."""
    if exact or debt.versions == 0:
        return None
    if after_instances and debt.instances >= after_instances:
        return (f"{debt.instances} instance(s) unlearned approximately since the last exact version "
                f"(LETHE_CONSOLIDATE_AFTER_INSTANCES={after_instances})")
    if after_versions and debt.versions >= after_versions:
        return (f"{debt.versions} approximate version(s) since the last exact version "
                f"(LETHE_CONSOLIDATE_AFTER_VERSIONS={after_versions})")
    if debt.due_at is not None:
        lead = 2 * (train_seconds if train_seconds is not None else UNKNOWN_TRAIN_S) + margin_s
        if now + dt.timedelta(seconds=lead) >= debt.due_at:
            return (f"the earliest request served approximately is due {debt.due_at.isoformat()}: a retrain "
                    f"(2 x {train_seconds if train_seconds is not None else UNKNOWN_TRAIN_S:.0f} s) plus "
                    f"LETHE_CONSOLIDATE_MARGIN_S={margin_s:g} must finish before it")
    return None


# --- the publishing transaction (jobs.service.complete) -------------------------------------------

def on_version(session: Session, *, job: Job, version: ModelVersion, parent: ModelVersion | None, exact: bool,
               instances: int, reqs: list[ForgetRequest], actor: str) -> None:
    """Record a new version's exactness and debt. An exact version pays the debt: every
    request served approximately since the last exact version names it (``exact_version``)
    and ``model.consolidated`` says which requests and versions it consolidated."""
    version.exact = exact
    if not exact:
        before = Debt.of(parent) if parent is not None and not parent.exact else Debt(0, 0, None)
        dues = [d for d in [before.due_at, *(r.due_at for r in reqs)] if d is not None]
        version.debt_instances, version.debt_versions = before.instances + instances, before.versions + 1
        version.debt_due_at = min(dues) if dues else None
        return
    version.debt_instances, version.debt_versions, version.debt_due_at = 0, 0, None
    for r in reqs:
        r.exact_version = version.version
    pending = list(session.execute(select(ForgetRequest).where(
        ForgetRequest.model_name == job.model_name, ForgetRequest.status == fm.COMPLETED,
        ForgetRequest.exact_version.is_(None), ForgetRequest.version_after.is_not(None))
        .order_by(ForgetRequest.completed_at, ForgetRequest.id)).scalars())
    approximate = sorted({r.version_after for r in pending if r.version_after != version.version})
    for r in pending:
        r.exact_version = version.version
        webhooks.consolidated(session, r)  # completed long ago: no status change announces this
    if pending or (parent is not None and not parent.exact):
        audit.append(session, actor=actor, action="model.consolidated",
                     payload={"model": job.model_name, "version": version.version, "job_id": job.id,
                              "parent_version": parent.version if parent is not None else None,
                              "approximate_versions": approximate,
                              "debt": Debt.of(parent).to_json() if parent is not None else None,
                              "request_ids": [r.id for r in pending]})
        from ..events import service as events

        events.emit(session, job.model_name, events.CONSOLIDATED, {
            "version": version.version, "job_id": job.id, "approximate_versions": approximate,
            "parent_version": parent.version if parent is not None else None, "requests": len(pending)})
    session.flush()


# --- starting one ---------------------------------------------------------------------------------

def open_job(session: Session, model_name: str) -> Job | None:
    return session.execute(select(Job).where(Job.model_name == model_name, Job.objective == CONSOLIDATE,
                                             Job.status.in_([QUEUED, RUNNING]))
                           .order_by(Job.created_at).limit(1)).scalar_one_or_none()


def request(session: Session, model_name: str, *, actor: str, reason: str,
            max_attempts: int = 3) -> tuple[Job, bool]:
    """A consolidation job for the model (its plan says why), or the one already queued or
    running. Returns (job, created); the caller dispatches a created job after the commit."""
    from models.unlearn import get_family

    m = registry.get_model(session, model_name, lock=True)
    if m is None:
        raise LetheError(404, "unknown_model", f"model {model_name!r} is not registered")
    if get_family(m.family).sharded:
        raise LetheError(409, "exact_model", f"{model_name} is a {m.family} model: every version is exact "
                                             "(shards are retrained), there is nothing to consolidate")
    if (m.recipe or {}).get("trainer") == "external":
        raise LetheError(409, "external_trainer", f"{model_name} is trained by its own pipeline: its exact version "
                                                  f"comes from a retrain order (POST /v1/models/{model_name}/"
                                                  "retrain-orders, GET /v1/retrain-orders)")
    prod = registry.resolve_alias(session, model_name, PRODUCTION)
    if prod is None:
        raise LetheError(409, "no_production_version", f"model {model_name!r} has no '{PRODUCTION}' alias")
    job = open_job(session, model_name)
    if job is not None:
        return job, False
    debt = Debt.of(prod)
    job = Job(id=str(uuid.uuid4()), model_name=model_name, objective=CONSOLIDATE, method=RETRAIN, status=QUEUED,
              progress=0.0, stage="queued", attempts=0, max_attempts=max_attempts, created_at=utcnow(),
              plan={"method": RETRAIN, "exact": True, "reason": f"consolidation: {reason}",
                    "debt": debt.to_json(), "base_version": prod.version})
    session.add(job)
    audit.append(session, actor=actor, action="model.consolidation_requested",
                 payload={"model": model_name, "job_id": job.id, "reason": reason, "version": prod.version,
                          "exact": prod.exact, "debt": debt.to_json()})
    session.flush()
    return job, True


def approximate_production(session: Session) -> list[ModelVersion]:
    """The versions ``production`` serves that are not exact (one per model at most)."""
    return list(session.execute(select(ModelVersion).join(
        ModelAlias, (ModelAlias.model_name == ModelVersion.model_name) & (ModelAlias.version == ModelVersion.version))
        .where(ModelAlias.alias == PRODUCTION, ModelVersion.exact.is_(False))).scalars())
