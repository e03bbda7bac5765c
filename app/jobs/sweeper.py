"""The sweeper: finds jobs stuck in ``queued`` or ``running`` (a worker died, a message
was lost) and puts them back on the queue, counting it (``jobs.sweeps``) and the attempt.

- running with a heartbeat older than ``LETHE_JOB_LEASE_S``: the worker is gone. With
  attempts left, the job and its requests go back to ``queued`` and are dispatched again;
  otherwise they fail ("gave up after N attempts").
- queued and untouched for ``LETHE_STUCK_QUEUED_S`` while no other job of its model runs:
  its message was probably lost; dispatched again (claiming makes duplicates harmless).

``sweep`` runs in one transaction and returns the job ids to dispatch; ``Sweeper`` is the
daemon thread in the gateway that calls it every ``LETHE_SWEEPER_INTERVAL_S``, followed by
``consolidate_due`` (a consolidation job for each model whose approximation debt is due).
"""
from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..catalogue import subjects
from ..db import session_scope, utcnow
from ..periodic import PeriodicThread
from ..forget import models as fm
from ..registry import governance
from ..registry import service as registry
from ..forget import follow
from ..registry import orders, probes
from ..forget.status import set_status
from . import consolidation, restarts
from . import service as jobs
from ..datasets import service as datasets
from .dispatch import send_after_commit
from .models import CONSOLIDATE, QUEUED, RUNNING, Job

log = logging.getLogger("lethe.sweeper")


def sweep(session: Session, *, lease_s: int, stuck_queued_s: int, now: dt.datetime | None = None) -> list[str]:
    now = now or utcnow()
    to_dispatch: list[str] = []
    candidates = session.execute(select(Job).where(Job.status.in_([QUEUED, RUNNING]))
                                 .order_by(Job.created_at)).scalars().all()
    for job in candidates:
        registry.get_model(session, job.model_name, lock=True)
        session.refresh(job)
        if job.status == RUNNING:
            if job.heartbeat_at is not None and (now - job.heartbeat_at).total_seconds() < lease_s:
                continue
            reqs = jobs.requests_of(session, job.id, open_only=True)
            silent = int((now - job.heartbeat_at).total_seconds()) if job.heartbeat_at else None
            why = f"worker {job.worker} lost (no heartbeat for {silent} s)" if silent is not None else \
                f"worker {job.worker} lost (no heartbeat)"
            job.sweeps, job.swept_at = (job.sweeps or 0) + 1, now
            if job.attempts >= job.max_attempts:
                jobs._finish_failed(session, job, reqs, f"gave up after {job.attempts} attempts; {why}",
                                    actor="sweeper")
                continue
            job.status, job.stage, job.claim_token, job.heartbeat_at, job.error = \
                QUEUED, "requeued by sweeper", None, None, why
            for r in reqs:
                set_status(session, r, fm.QUEUED)
            audit.append(session, actor="sweeper", action="job.requeued",
                         payload={"job_id": job.id, "model": job.model_name, "attempts": job.attempts,
                                  "sweeps": job.sweeps, "reason": why, "requests": [r.id for r in reqs]})
            to_dispatch.append(job.id)
        else:
            last = job.swept_at or job.created_at
            if (now - last).total_seconds() < stuck_queued_s:
                continue
            busy = session.execute(select(Job.id).where(Job.model_name == job.model_name, Job.status == RUNNING,
                                                        Job.id != job.id)).first()
            if busy is not None:
                continue  # waiting its turn behind a running job of the same model: not stuck
            if job.objective != CONSOLIDATE and not jobs.has_open_requests(session, job.id):
                jobs.cancel_if_empty(session, job, actor="sweeper")
                continue
            job.sweeps, job.swept_at = (job.sweeps or 0) + 1, now
            audit.append(session, actor="sweeper", action="job.requeued",
                         payload={"job_id": job.id, "model": job.model_name, "attempts": job.attempts,
                                  "sweeps": job.sweeps, "reason": f"queued for {int((now - last).total_seconds())} s"})
            to_dispatch.append(job.id)
    session.flush()
    return to_dispatch


def consolidate_due(session: Session, settings, *, now: dt.datetime | None = None) -> list[str]:
    """A consolidation job for every model whose production version's approximation debt is
    due (``consolidation.due``). Returns the ids of the jobs created (dispatched after the
    commit)."""
    now = now or utcnow()
    created = []
    for v in consolidation.approximate_production(session):
        train_s, _ = jobs.cost_history(session, v.model_name)
        why = consolidation.due(consolidation.Debt.of(v), exact=v.exact, now=now, train_seconds=train_s,
                                after_instances=settings.consolidate_after_instances,
                                after_versions=settings.consolidate_after_versions,
                                margin_s=settings.consolidate_margin_s)
        if why is None or consolidation.open_job(session, v.model_name) is not None:
            continue
        m = registry.get_model(session, v.model_name)
        if orders.is_external(m):  # the customer's pipeline retrains it: an order, not a job
            orders.issue(session, settings, v.model_name, actor="sweeper", reason=why)
            continue
        job, new = consolidation.request(session, v.model_name, actor="sweeper", reason=why,
                                         max_attempts=settings.max_attempts)
        if new:
            created.append(job.id)
    return created


def sweep_and_dispatch(settings, dispatcher) -> list[str]:
    with session_scope(settings.database_url) as db:
        ids = sweep(db, lease_s=settings.job_lease_s, stuck_queued_s=settings.stuck_queued_s)
    with session_scope(settings.database_url) as db:  # approximation debt due: a consolidation job
        started = consolidate_due(db, settings)
    with session_scope(settings.database_url) as db:  # a starting point forgot: the models fine-tuned from it
        started += restarts.restarts_due(db, settings)
    started += follow.resume(settings)  # requests that followed one now closed: on a job
    with session_scope(settings.database_url) as db:  # retrain orders near their due date: escalated
        orders.escalate_due(db, settings)
    with session_scope(settings.database_url) as db:  # sealed forget rows at their requests' due date: shredded
        probes.shred_due(db, settings)
    with session_scope(settings.database_url) as db:  # a crash after a publish may have left weights to purge
        governance.purge_all(db, registry.weights(settings), actor="sweeper")
    registry.weights(settings).reconcile()  # cached weights whose objects another node purged
    subjects.erase_pending(settings)  # a subject's rows no model held, left by a crash after the erasure's commit
    datasets.compact_due(settings, actor="sweeper")  # erased rows' bytes gone within LETHE_ERASE_WITHIN_S
    for job_id in ids + started:
        send_after_commit(dispatcher, job_id)
    if ids:
        log.warning("sweeper re-queued %d stuck job(s): %s", len(ids), ", ".join(ids))
    if started:
        log.info("sweeper started %d consolidation job(s): %s", len(started), ", ".join(started))
    return ids + started


class Sweeper(PeriodicThread):
    def __init__(self, settings, dispatcher):
        super().__init__("lethe-sweeper", settings.sweeper_interval_s,
                         lambda: sweep_and_dispatch(settings, dispatcher))
