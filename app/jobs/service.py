"""Job services: coalescing requests into jobs, claiming (one running job per model),
progress heartbeats, and the single transaction that publishes a job's result."""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..catalogue import service as catalogue
from ..db import utcnow
from ..events import service as events
from ..forget import models as fm
from ..forget.models import ForgetRequest
from ..registry import service as registry
from ..registry.models import PRODUCTION
from ..forget.status import set_status
from . import consolidation
from .models import CANCELED, COMPLETED, CONSOLIDATE, FAILED, QUEUED, RUNNING, Job


class JobConflict(Exception):
    """The job's claim was lost or the lineage moved under it: publish nothing."""


def get(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def get_with_request_ids(session: Session, job_id: str,
                         tenant: str | None = None) -> tuple[Job, list[str]] | None:
    """A job and the ids of its requests in one query (job primary key, requests' job_id
    index). ``tenant``: only that tenant's requests, and None when the job serves none."""
    on = ForgetRequest.job_id == Job.id
    if tenant is not None:
        on = on & (ForgetRequest.tenant == tenant)
    rows = session.execute(select(Job, ForgetRequest.id).outerjoin(ForgetRequest, on)
                           .where(Job.id == job_id).order_by(ForgetRequest.received_at, ForgetRequest.id)).all()
    if not rows or (tenant is not None and rows[0][1] is None):
        return None
    return rows[0][0], [rid for _, rid in rows if rid is not None]


def requests_of(session: Session, job_id: str, *, open_only: bool = False) -> list[ForgetRequest]:
    """The job's requests; ``open_only``: those still queued/running (not canceled/denied)."""
    q = select(ForgetRequest).where(ForgetRequest.job_id == job_id)
    if open_only:
        q = q.where(ForgetRequest.status.in_(fm.OPEN))
    return list(session.execute(q.order_by(ForgetRequest.received_at, ForgetRequest.id)).scalars())


def completed_requests(session: Session, model_name: str, job_ids: list[str]) -> list[ForgetRequest]:
    """The model's completed requests served by any of ``job_ids``, oldest first."""
    return list(session.execute(select(ForgetRequest).where(
        ForgetRequest.model_name == model_name, ForgetRequest.job_id.in_(job_ids),
        ForgetRequest.status == fm.COMPLETED).order_by(ForgetRequest.completed_at, ForgetRequest.id)).scalars())


def follow_requests(session: Session, model_name: str, origin_ids: list[str], job: Job, *, method: str,
                    tag: str) -> list[str]:
    """Requests of ``model_name`` recorded by Lethe on ``job`` because the ``origin_ids``
    (another model's requests) reach it through its lineage: each with its origin's subject,
    due date and tenant, no rows of its own (app/jobs/restarts.py). Returns their ids."""
    import hashlib

    from models.unlearn.registry import DEFAULT_OBJECTIVE

    now, out = utcnow(), []
    for origin in (session.get(ForgetRequest, i) for i in origin_ids):
        if origin is None:
            continue
        req = ForgetRequest(id=str(uuid.uuid4()), external_id=None, idempotency_key=None,
                            fingerprint=hashlib.sha256(f"{tag}:{origin.id}:{model_name}".encode()).hexdigest(),
                            subject_ref=origin.subject_ref, instance_ids=[], model_name=model_name,
                            objective=DEFAULT_OBJECTIVE, method=method, target_label=None, status=fm.QUEUED,
                            received_at=now, due_at=origin.due_at, callback_url=None, retries=0,
                            tenant=origin.tenant, job_id=job.id, group_id=None, exact_version=None,
                            # a tenant's: shown queued while open like its others (app/forget/timeline.py);
                            # no hold, since its origin completed with data the tenant has already seen erased
                            reveal_at=now if origin.reveal_at is not None else None)
        session.add(req)
        audit.append(session, actor="lethe", action="forget.received", subject_ref=origin.subject_ref,
                     payload={"request_id": req.id, "model": model_name, "job_id": job.id, "instances": 0,
                              "follows_request": origin.id, "follows_model": origin.model_name})
        out.append(req.id)
    session.flush()
    return out


def has_open_requests(session: Session, job_id: str) -> bool:
    """Whether any of the job's requests is still queued/running: one indexed read, whatever
    their number (``requests_of`` loads them all: the sweeper asked this of a queued job with
    10,000 requests every 20 s, issue 16)."""
    return session.execute(select(ForgetRequest.id).where(ForgetRequest.job_id == job_id,
                                                          ForgetRequest.status.in_(fm.OPEN)).limit(1)).first() is not None


def cancel_if_empty(session: Session, job: Job, actor: str) -> bool:
    """A job that has not started and has no open request left is canceled (a consolidation
    job has none of its own: it stays)."""
    if job.status != QUEUED or job.objective == CONSOLIDATE:
        return False
    lock(session, job.id)  # a submission attaching to it right now commits first
    if job.status != QUEUED or has_open_requests(session, job.id):
        return False
    job.status, job.stage, job.finished_at, job.claim_token = CANCELED, "canceled", utcnow(), None
    audit.append(session, actor=actor, action="job.canceled",
                 payload={"job_id": job.id, "model": job.model_name, "reason": "no open request left"})
    session.flush()
    return True


def lock(session: Session, job_id: str) -> Job | None:
    """The job row, locked for update until the end of the transaction (Postgres; SQLite
    transactions are already exclusive). Claiming or closing a queued job takes this lock,
    so it waits for every submission attaching a request to the job (``attach``) to commit."""
    return session.execute(select(Job).where(Job.id == job_id).with_for_update()
                           .execution_options(populate_existing=True)).scalar_one_or_none()


def attach(session: Session, req: ForgetRequest, max_attempts: int) -> tuple[str, bool]:
    """Coalesce: a request joins the model's job that has not started yet (same objective and
    method; a relabel request with a fixed target gets a job of its own), else a new job is
    created. Sets ``req.job_id`` (call before the request row is first flushed: the INSERT
    then carries it). Returns (job id, created).

    One indexed read per submission (two and a transaction-scoped advisory lock when it creates
    the job), whatever the backlog: no model-wide lock, and no count
    of the job's instances (the cap, LETHE_MAX_JOB_INSTANCES, is applied when the job is
    claimed: ``_spill``). The queued job is read ``FOR SHARE``, which submitters hold together
    but which makes ``claim`` (``lock``: ``FOR UPDATE``) wait until they commit; a job claimed
    first no longer matches ``status = queued`` when re-checked, so the request gets a new job."""
    job_id = queued_job(session, req)
    created = job_id is None
    if created:
        job_id = _new_job(session, req.model_name, req.objective, req.method, max_attempts, req.target_label).id
    req.job_id = job_id
    return job_id, created


def queued_job(session: Session, req: ForgetRequest) -> str | None:
    """The model's queued job ``req`` would join (read ``FOR SHARE``), or None (``attach``
    then creates one). A tenant's no-data request makes this lookup too, so that it answers
    as fast as a request with data (docs/service.md, *No oracle*)."""
    if req.target_label is not None:  # a fixed relabel target: a job of its own
        return None
    conn, key = session.connection(), {"model": req.model_name, "objective": req.objective, "method": req.method}
    job_id = conn.execute(_QUEUED_JOB, key).scalar()  # only the id: a Core read on the session's connection
    if job_id is None and conn.dialect.name == "postgresql":
        # the rare path: creating a job. Serialised per (model, objective, method) and read
        # again, so submitters that all waited on a claim's lock, and all found the job gone,
        # join one new job instead of creating one each (seen: 5 one-instance jobs at once)
        conn.execute(_CREATE_LOCK, {"k": f"{req.model_name}/{req.objective}/{req.method}"})
        job_id = conn.execute(_QUEUED_JOB, key).scalar()
    return job_id


_J = Job.__table__
_QUEUED_JOB = (select(_J.c.id).where(_J.c.model_name == bindparam("model"), _J.c.status == QUEUED,
                                     _J.c.objective == bindparam("objective"), _J.c.method == bindparam("method"),
                                     _J.c.target_label.is_(None))
               .order_by(_J.c.created_at).limit(1).with_for_update(read=True))


_CREATE_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(:k))")


def _new_job(session: Session, model_name: str, objective: str, method: str, max_attempts: int,
             target_label: int | None) -> Job:
    job = Job(id=str(uuid.uuid4()), model_name=model_name, objective=objective, method=method, status=QUEUED,
              progress=0.0, stage="queued", attempts=0, max_attempts=max_attempts, created_at=utcnow(),
              target_label=target_label)
    session.add(job)
    session.flush()  # before the request rows that reference it
    return job


def _spill(session: Session, job: Job, reqs: list[ForgetRequest], max_instances: int | None,
           actor: str) -> tuple[list[ForgetRequest], str | None]:
    """Bounded pooling, applied as the job starts: it keeps its oldest requests up to
    ``max_instances`` instances in all (LETHE_MAX_JOB_INSTANCES; always at least one
    request), and the rest move to a new queued job of the same kind, the next in line.
    Returns (the requests kept, the new job's id or None)."""
    kept, n = [], 0
    for r in reqs:
        k = len(r.instance_ids or [])
        if max_instances is not None and kept and n + k > max_instances:
            break
        kept.append(r)
        n += k
    rest = reqs[len(kept):]
    if not rest:
        return kept, None
    nxt = _new_job(session, job.model_name, job.objective, job.method, job.max_attempts, job.target_label)
    for r in rest:
        r.job_id = nxt.id
    audit.append(session, actor=actor, action="job.split",
                 payload={"job_id": job.id, "model": job.model_name, "kept_instances": n,
                          "max_instances": max_instances, "next_job_id": nxt.id,
                          "moved_requests": len(rest), "moved_instances": sum(len(r.instance_ids) for r in rest)})
    return kept, nxt.id


@dataclass
class Claim:
    outcome: str  # "run" | "done" | "defer" | "failed" | "missing"
    job: Job | None = None
    token: str | None = None
    requests: list[ForgetRequest] = field(default_factory=list)
    instance_ids: list[str] = field(default_factory=list)
    reason: str = ""
    spilled: str | None = None  # a new queued job holding the requests over the instance cap


def _fresh(heartbeat: dt.datetime | None, lease_s: int) -> bool:
    return heartbeat is not None and (utcnow() - heartbeat).total_seconds() < lease_s


def claim(session: Session, job_id: str, *, worker: str, lease_s: int, max_instances: int | None = None) -> Claim:
    """Take a job for running. One running job per model (the lineage never forks); a
    finished job is a no-op (a redelivered message publishes nothing twice); attempts are
    counted here and capped; requests over ``max_instances`` move to the next job (``_spill``:
    ``Claim.spilled`` is its id, to dispatch)."""
    job = session.get(Job, job_id)
    if job is None:
        return Claim("missing", reason=f"job {job_id} not found")
    registry.get_model(session, job.model_name, lock=True)
    job = lock(session, job_id)  # waits for submissions attaching to it; then its requests are final
    if job.status in (COMPLETED, FAILED, CANCELED):
        return Claim("done", job, reason=f"job already {job.status}")
    if job.status == RUNNING and _fresh(job.heartbeat_at, lease_s):
        return Claim("defer", job, reason="job is running elsewhere")
    other = session.execute(select(Job).where(Job.model_name == job.model_name, Job.status == RUNNING,
                                              Job.id != job.id)).scalars().all()
    if any(_fresh(o.heartbeat_at, lease_s) for o in other):
        return Claim("defer", job, reason="another job of this model is running")
    reqs = requests_of(session, job.id, open_only=True)
    if not reqs and job.objective != CONSOLIDATE:  # every request was canceled or denied before the job started
        cancel_if_empty(session, job, actor=f"worker:{worker}")
        return Claim("done", job, reason="no open request left")
    if job.attempts >= job.max_attempts:
        _finish_failed(session, job, reqs, f"gave up after {job.attempts} attempts; last error: {job.error}")
        return Claim("failed", job, reason="attempts exhausted")
    if job.objective == CONSOLIDATE:  # the queued requests a retrain serves go with it (no cap: it retrains)
        reqs, spilled = reqs + absorb(session, job, actor=f"worker:{worker}"), None
    else:
        reqs, spilled = _spill(session, job, reqs, max_instances, actor=f"worker:{worker}")
    job.attempts += 1
    job.status, job.worker, job.claim_token = RUNNING, worker, str(uuid.uuid4())
    job.started_at = job.started_at or utcnow()
    job.heartbeat_at, job.stage, job.progress = utcnow(), "starting", 0.0
    prod = registry.resolve_alias(session, job.model_name, PRODUCTION)
    job.base_version = prod.version if prod else None
    wanted: list[str] = []
    for r in reqs:
        set_status(session, r, fm.RUNNING)
        for iid in r.instance_ids:
            if iid not in wanted:
                wanted.append(iid)
    rows = catalogue.by_ids(session, job.model_name, wanted)
    live = [i for i in wanted if i in rows and rows[i].erased_at is None]
    audit.append(session, actor=f"worker:{worker}", action="job.started",
                 payload={"job_id": job.id, "model": job.model_name, "attempt": job.attempts,
                          "requests": [r.id for r in reqs], "instances": len(live),
                          "base_version": job.base_version})
    session.flush()
    return Claim("run", job, job.claim_token, reqs, live, spilled=spilled)


def absorb(session: Session, job: Job, actor: str) -> list[ForgetRequest]:
    """A consolidation job starts (``claim``): the model's queued forget requests that
    retraining serves (objective ``retrain_like``, no fixed label) move to it, and their
    emptied jobs are canceled. Each queued job is locked first (``lock``), so a submission
    attaching to it commits before and is taken too, and one attaching after finds it no
    longer queued and gets a new job."""
    from models.unlearn import DEFAULT_OBJECTIVE

    taken: list[ForgetRequest] = []
    queued = session.execute(select(Job.id).where(Job.model_name == job.model_name, Job.status == QUEUED,
                                                  Job.id != job.id, Job.objective == DEFAULT_OBJECTIVE,
                                                  Job.target_label.is_(None))
                             .order_by(Job.created_at)).scalars().all()
    for other_id in queued:
        other = lock(session, other_id)
        if other is None or other.status != QUEUED:
            continue
        reqs = requests_of(session, other.id, open_only=True)
        for r in reqs:
            r.job_id = job.id
        taken += reqs
        other.status, other.stage, other.finished_at, other.claim_token = CANCELED, "canceled", utcnow(), None
        audit.append(session, actor=actor, action="job.canceled",
                     payload={"job_id": other.id, "model": other.model_name,
                              "reason": f"its {len(reqs)} request(s) are served by consolidation job {job.id}",
                              "requests": [r.id for r in reqs]})
    session.flush()
    return taken


def heartbeat(session: Session, job_id: str, token: str, *, stage: str, fraction: float) -> bool:
    res = session.execute(update(Job).where(Job.id == job_id, Job.claim_token == token, Job.status == RUNNING)
                          .values(stage=stage[:128], progress=max(0.0, min(1.0, float(fraction))),
                                  heartbeat_at=utcnow()))
    return bool(res.rowcount)


def record_plan(session: Session, job_id: str, token: str, plan: dict, *, worker: str) -> bool:
    """The planner's choice (or a fallback) on the job row and in the audit trail, while the
    claim is ours. Returns False when the claim was lost."""
    job = session.get(Job, job_id)
    if job is None or job.claim_token != token or job.status != RUNNING:
        return False
    job.plan = plan
    audit.append(session, actor=f"worker:{worker}", action="job.planned",
                 payload={"job_id": job.id, "model": job.model_name, "attempt": job.attempts,
                          **{k: plan.get(k) for k in ("method", "exact", "reason", "fallback_from")}})
    session.flush()
    return True


def cost_history(session: Session, model_name: str, *, limit: int = 20) -> tuple[float | None, list]:
    """What the planner knows of this model's costs: its training time (the first version's
    ``train_seconds``, or the last exact retrain's seconds) and [k, seconds] of its recent
    approximate jobs (a job that fell back to retraining counts as a retrain)."""
    from .planner import RETRAIN

    first = registry.get_version(session, model_name, 1)
    train_s = (first.metrics or {}).get("train_seconds") if first is not None else None
    approx: list = []
    done = session.execute(select(Job.metrics).where(Job.model_name == model_name, Job.status == COMPLETED,
                                                     Job.metrics.is_not(None))
                           .order_by(Job.finished_at.desc()).limit(limit)).scalars().all()
    for m in done:
        if not isinstance(m, dict) or not m.get("seconds"):
            continue
        if m.get("method") == RETRAIN:
            train_s = train_s if train_s is not None and train_s <= m["seconds"] else m["seconds"]
        elif m.get("k"):
            approx.append([int(m["k"]), float(m["seconds"])])
    return (float(train_s) if train_s is not None else None), approx


def touch(session: Session, job_id: str, token: str) -> bool:
    """The lease's beat: only ``heartbeat_at``, only while the claim is ours."""
    res = session.execute(update(Job).where(Job.id == job_id, Job.claim_token == token, Job.status == RUNNING)
                          .values(heartbeat_at=utcnow()))
    return bool(res.rowcount)


def complete(session: Session, *, job_id: str, token: str, worker: str, instance_ids: list[str],
             sha256: str | None, storage_path: str | None, metrics: dict | None, stats: dict | None) -> Job:
    """THE publishing transaction: version row, alias move, instances erased, requests
    completed, audit events — all or nothing. ``sha256=None`` completes without a new
    version (every instance was already erased). A new version records whether it is exact
    and its approximation debt; an exact one consolidates (``consolidation.on_version``)."""
    from models.unlearn import get_family

    job = session.get(Job, job_id)
    if job is None:
        raise JobConflict(f"job {job_id} vanished")
    model = registry.get_model(session, job.model_name, lock=True)
    session.refresh(job)
    if job.status != RUNNING or job.claim_token != token:
        raise JobConflict(f"job {job_id} is no longer ours (status {job.status})")
    if registry.version_by_job(session, job.id) is not None:
        raise JobConflict(f"job {job_id} already published a version")
    prod = registry.resolve_alias(session, job.model_name, PRODUCTION)
    current = prod.version if prod else None
    if current != job.base_version:
        raise JobConflict(f"production moved from v{job.base_version} to v{current} while job {job_id} ran")
    actor = f"worker:{worker}"
    reqs = requests_of(session, job.id, open_only=True)
    now = utcnow()
    new_version = current
    if sha256 is not None:
        v = registry.add_version(session, model_name=job.model_name, sha256=sha256, storage_path=storage_path,
                                 parent_version=current, job_id=job.id, metrics=metrics)
        new_version = v.version
        audit.append(session, actor=actor, action="model.version_created",
                     payload={"model": job.model_name, "version": v.version, "sha256": sha256,
                              "parent_version": current, "job_id": job.id, "metrics": metrics})
        registry.move_alias(session, model_name=job.model_name, alias=PRODUCTION, to_version=v.version,
                            actor=actor, job_id=job.id)
        audit.append(session, actor=actor, action="alias.moved",
                     payload={"model": job.model_name, "alias": PRODUCTION, "from_version": current,
                              "to_version": v.version, "job_id": job.id})
        if instance_ids:  # a consolidation that served no request erases nothing
            erased = catalogue.mark_erased(session, job.model_name, instance_ids, job.id)
            audit.append(session, actor=actor, action="instances.erased",
                         payload={"model": job.model_name, "job_id": job.id, "count": erased,
                                  "instance_ids": sorted(instance_ids)})
        exact = bool((metrics or {}).get("exact")) or get_family(model.family).sharded
        consolidation.on_version(session, job=job, version=v, parent=prod, exact=exact,
                                 instances=len(instance_ids), reqs=reqs, actor=actor)
        # registry events, in this same transaction (app/events): published, then production moved
        events.version_published(session, v)
        events.alias_moved(session, job.model_name, PRODUCTION, current, v, job_id=job.id, actor=actor)
        if instance_ids:
            events.tainted_elsewhere(session, job.model_name, instance_ids, job.id)
    for r in reqs:
        r.completed_at = now
        r.version_before, r.version_after, r.metrics = current, new_version, metrics
        set_status(session, r, fm.COMPLETED)
        if sha256 is None:
            r.error = None
            if prod is not None and prod.exact:  # nothing new to erase, and what serves is exact
                r.exact_version = current
        audit.append(session, actor=actor, action="forget.completed", subject_ref=r.subject_ref,
                     payload={"request_id": r.id, "model": job.model_name, "job_id": job.id,
                              "version_before": current, "version_after": new_version,
                              "instances": len(r.instance_ids)})
    job.status, job.finished_at, job.progress, job.stage = COMPLETED, now, 1.0, "completed"
    job.result_version, job.metrics, job.stats, job.error = new_version, metrics, stats, None
    if reqs:
        events.emit(session, job.model_name, events.FORGET_COMPLETED, {
            "job_id": job.id, "requests": len(reqs), "instances": len(instance_ids), "version_before": current,
            "version_after": new_version})
    audit.append(session, actor=actor, action="job.completed",
                 payload={"job_id": job.id, "model": job.model_name, "version": new_version})
    session.flush()
    return job


def _finish_failed(session: Session, job: Job, reqs: list[ForgetRequest], error: str, actor: str = "system") -> None:
    now = utcnow()
    job.status, job.finished_at, job.error, job.stage = FAILED, now, error, "failed"
    for r in reqs:
        r.error, r.completed_at = error, now
        set_status(session, r, fm.FAILED)
        audit.append(session, actor=actor, action="forget.failed", subject_ref=r.subject_ref,
                     payload={"request_id": r.id, "job_id": job.id, "error": error})
    audit.append(session, actor=actor, action="job.failed",
                 payload={"job_id": job.id, "model": job.model_name, "attempts": job.attempts, "error": error})
    if reqs:
        events.emit(session, job.model_name, events.FORGET_FAILED, {"job_id": job.id, "requests": len(reqs),
                                                                   "error": error[:500]})
    session.flush()


def fail(session: Session, *, job_id: str, token: str, worker: str, error: str, retryable: bool,
         metrics: dict | None = None) -> str:
    """Record a failed attempt (with the metrics of a model that failed verification, so
    the refusal can be inspected). Returns "retry" (job queued again) or "failed" (final)."""
    job = session.get(Job, job_id)
    if job is None or job.claim_token != token or job.status != RUNNING:
        return "done"
    if metrics is not None:  # the new model was refused by the quality gate: say so in the audit
        job.metrics = metrics
        audit.append(session, actor=f"worker:{worker}", action="quality_gate.refused",
                     payload={"job_id": job.id, "model": job.model_name, "attempt": job.attempts, "reason": error,
                              "published": False, **{k: metrics.get(k) for k in (
                                  "ua", "ta", "base_ta", "ta_drop", "max_test_accuracy_drop") if k in metrics}})
    reqs = requests_of(session, job.id, open_only=True)
    if retryable and job.attempts < job.max_attempts:
        job.status, job.error, job.stage, job.claim_token, job.heartbeat_at = QUEUED, error, "retrying", None, None
        for r in reqs:
            set_status(session, r, fm.QUEUED)
        audit.append(session, actor=f"worker:{worker}", action="job.attempt_failed",
                     payload={"job_id": job.id, "attempt": job.attempts, "error": error})
        session.flush()
        return "retry"
    _finish_failed(session, job, reqs, error, actor=f"worker:{worker}")
    return "failed"


def release_orphans(session: Session, worker_prefix: str) -> int:
    """Embedded mode starts: jobs left `running` by an earlier embedded worker (a process
    that is gone) lose their lease at once instead of waiting for it to expire."""
    res = session.execute(update(Job).where(Job.status == RUNNING, Job.worker.startswith(worker_prefix))
                          .values(heartbeat_at=None))
    return res.rowcount or 0


def recoverable(session: Session) -> list[str]:
    """Jobs to (re)dispatch at start-up: queued ones and running ones (claim decides
    whether their lease has expired)."""
    return list(session.execute(select(Job.id).where(Job.status.in_([QUEUED, RUNNING]))
                                .order_by(Job.created_at)).scalars())
