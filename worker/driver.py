"""The job lifecycle: claim, run, complete, fail, retry. Celery's tasks (``worker.celery_app``)
and the embedded thread (``worker.embedded``) both call ``execute_job``.

    claim      app.jobs.service.claim, one transaction (retried on a database blip)  -> JobSpec
    run        under a ``worker.lease.Lease`` (heartbeat, progress, the plan on the job row),
               the family's execution path builds the new model and its evidence (``Built``):
                 instance-wise  worker.instance_wise.build  (planner, method, exact fallback)
                 sharded        worker.sharded.build         (SISA, ARCANE; Celery: a chord
                                across workers, whose callback calls ``finish_sharded``)
    complete   ``publish``: the publishing rules (app.jobs.publishing via worker.job.verify),
               the weights to their content address, app.jobs.service.complete in ONE
               transaction (version, alias move, instances erased, requests completed, audit);
               after the commit: the erased raw data deleted, superseded versions that still
               hold erased data purged, the path's own clean-up (stale slice checkpoints);
               an exact instance-wise version gets its rows' membership risk (worker/risk.py)
    fail       ``JobFailed`` (a refusal, a lost claim, a bad input) fails the job for good;
    retry      any other exception is an attempt that failed: queued again up to the job's
               max attempts (app.jobs.service.fail)

Seams: a new execution path is a module with ``build(s, spec, lease) -> Built`` chosen in
``_build``; what a job knows is ``worker.job.JobSpec`` (filled in ``_claim_once``); the
rules for publishing are ``app.jobs.publishing``; which method runs is ``app.jobs.planner``.
"""
from __future__ import annotations

import logging
import uuid
from typing import Callable

from app.catalogue import service as catalogue
from app.datasets import service as datasets
from app.db import session_scope
from app.jobs import service as jobs
from app.jobs.models import CONSOLIDATE
from app.observability import job_context
from app.registry import governance
from app.registry import service as registry
from app.settings import Settings, get_settings
from models.unlearn import get_family

from . import instance_wise, sharded
from .job import Built, JobFailed, JobSpec, default_worker_name, verify, with_db_retry
from .lease import Lease

log = logging.getLogger("lethe.worker")


def execute_job(job_id: str, *, settings: Settings | None = None, worker_name: str | None = None,
                fan_out: Callable[[dict], None] | None = None,
                dispatch: Callable[[str], None] | None = None) -> str:
    """Run one job end to end. Returns "completed", "done" (already finished: no-op),
    "defer" (another job of the model runs; try later), "retry" (attempt failed, job queued
    again), "failed" (final), "missing", or "fanned_out" (a sharded model's member retrains
    were handed to ``fan_out`` — Celery's chord — whose callback completes the job). Every log
    line written meanwhile carries the job id. ``dispatch``: how to send a job split off this
    one at its claim (over LETHE_MAX_JOB_INSTANCES); without it the sweeper sends it."""
    s = settings or get_settings()
    worker = worker_name or default_worker_name()
    with job_context(job_id):
        spec = _claim(s, job_id, worker, dispatch)
        if isinstance(spec, str):
            return spec
        reconcile_cache(s)
        try:
            with Lease(s, spec) as lease:
                built = _build(s, spec, lease, fan_out)
                if built is None:
                    return "fanned_out"
                return publish(s, spec, worker, built)
        except Exception as e:  # noqa: BLE001 - every failure is recorded on the job
            return _failed(s, spec, worker, e)
        finally:
            reconcile_cache(s)


def reconcile_cache(s: Settings) -> None:
    """With weights on an object store: delete this node's cached copies of objects another
    node purged (``model.version_purged``, stale slices). A failure (the store unreachable)
    is logged; the next check tries again."""
    if not s.registry_url:
        return
    try:
        gone = registry.weights(s).reconcile()
        if gone:
            log.info("dropped %d cached weight file(s) purged elsewhere", len(gone))
    except Exception as e:  # noqa: BLE001
        log.warning("weights cache check failed: %s", e)


def finish_sharded(s: Settings, spec: JobSpec, results: list[dict], worker: str) -> str:
    """The rest of a fanned-out job, once every member retrain is back (Celery's chord callback)."""
    with job_context(spec.job_id):
        try:
            with Lease(s, spec) as lease:
                return publish(s, spec, worker, sharded.assemble(s, spec, results, lease))
        except Exception as e:  # noqa: BLE001
            return _failed(s, spec, worker, e)


# --- claim ---------------------------------------------------------------------------------------

def _claim(s: Settings, job_id: str, worker: str, dispatch: Callable[[str], None] | None = None) -> JobSpec | str:
    # a claim that hits a transient database error (an outage, a deadlock victim) is rolled
    # back whole: try it again here rather than drop the message and leave the job queued
    # until the sweeper's LETHE_STUCK_QUEUED_S
    c, spec = with_db_retry(lambda: _claim_once(s, job_id, worker), what=f"claiming job {job_id}")
    if spec is None:
        log.info("job %s: %s (%s)", job_id, c.outcome, c.reason)
        return c.outcome
    if c.spilled:  # committed: the requests over the cap wait in the next job
        log.info("job %s: requests over LETHE_MAX_JOB_INSTANCES=%d moved to job %s", job_id, s.max_job_instances,
                 c.spilled)
        try:
            if dispatch is not None:
                dispatch(c.spilled)
        except Exception as e:  # noqa: BLE001 - the job is recorded; the sweeper sends it later
            log.warning("dispatch of job %s failed (%s); the sweeper will send it", c.spilled, e)
    return spec


def _claim_once(s: Settings, job_id: str, worker: str) -> tuple[jobs.Claim, JobSpec | None]:
    """One claim transaction: (the claim, the job's spec when it is ours to run, else None)."""
    with session_scope(s.database_url) as db:
        c = jobs.claim(db, job_id, worker=worker, lease_s=s.job_lease_s, max_instances=s.max_job_instances)
        if c.outcome != "run":
            return c, None
        job = c.job
        model_row = registry.get_model(db, job.model_name)
        base = registry.resolve_alias(db, job.model_name)
        targets = {r.target_label for r in c.requests if r.target_label is not None}
        found = catalogue.by_ids(db, job.model_name, c.instance_ids)  # an earlier job may have erased some
        spec = JobSpec(job_id=job_id, token=c.token, model_name=job.model_name, family=model_row.family,
                       method=job.method, objective=job.objective, target_label=targets.pop() if targets else None,
                       base_path=base.storage_path, base_sha=base.sha256, base_version=base.version,
                       forget_ids=[i for i in c.instance_ids if i in found], dataset=model_row.dataset,
                       recipe=registry.recipe_of(model_row).to_json() if model_row.family == "instance" else None,
                       plan=job.plan if job.objective == CONSOLIDATE else None)
    return c, spec


# --- run -----------------------------------------------------------------------------------------

def _build(s: Settings, spec: JobSpec, lease: Lease, fan_out: Callable[[dict], None] | None) -> Built | None:
    """The family's execution path; None when a sharded job's members were fanned out."""
    if not spec.forget_ids and spec.objective != CONSOLIDATE:  # all erased by an earlier job: no new version
        return Built(metrics=None, stats={"note": "all instances were already erased"})
    if not get_family(spec.family).sharded:
        return instance_wise.build(s, spec, lease)
    return sharded.build(s, spec, lease, fan_out)


# --- complete ------------------------------------------------------------------------------------

def publish(s: Settings, spec: JobSpec, worker: str, built: Built) -> str:
    """Verify, write the weights, ONE publishing transaction, then the clean-up."""
    sha = rel = None
    if built.metrics is not None:
        verify(s, spec.objective, built.metrics)
    if built.write is not None:
        sha, rel = built.write()
    with session_scope(s.database_url) as db:
        jobs.complete(db, job_id=spec.job_id, token=spec.token, worker=worker, instance_ids=spec.forget_ids,
                      sha256=sha, storage_path=rel, metrics=built.metrics, stats=built.stats)
        if built.in_publish is not None:
            built.in_publish(db)
    with session_scope(s.database_url) as db:
        catalogue.purge_erased_raw(db, spec.model_name)
    datasets.compact_due(s, actor=f"worker:{worker}")  # erased bytes gone within LETHE_ERASE_WITHIN_S
    with session_scope(s.database_url) as db:  # superseded versions that still hold erased data
        governance.purge_superseded(db, registry.weights(s), spec.model_name, actor=f"worker:{worker}")
    if built.after_publish is not None:
        built.after_publish()
    if (built.metrics or {}).get("exact") and sha is not None and spec.family == "instance":
        _risk_job(s, spec)
    log.info("job %s completed: %s, %d instances erased, new weights sha256=%s", spec.job_id, spec.model_name,
             len(spec.forget_ids), (sha or "none (nothing left to erase)")[:16])
    return "completed"


def _risk_job(s: Settings, spec: JobSpec) -> None:
    """A retrain published an exact version: measure its rows' membership risk (worker/risk.py)
    for the planner of the next jobs. After the job is complete; a failure fails nothing."""
    from .risk import run_risk_job

    try:
        with session_scope(s.database_url) as db:
            v = registry.version_by_job(db, spec.job_id)
            version = v.version if v is not None else None
        if version is not None:
            run_risk_job(spec.model_name, version, settings=s)
    except Exception:  # noqa: BLE001 - without new risk rows the planner reads the previous version's
        log.exception("risk job after job %s failed", spec.job_id)


# --- fail, retry ---------------------------------------------------------------------------------

def _failed(s: Settings, spec: JobSpec, worker: str, e: Exception) -> str:
    """Record a failed attempt. ``JobFailed`` is final. Anything else is retried, up to the
    job's max attempts — a sharded job's too: its member files are content-addressed and
    nothing is published until every member is back, so a new attempt repeats or reuses what
    the failed one wrote (exact jobs are retried like any infrastructure fault)."""
    if isinstance(e, JobFailed):
        return fail_job(s, spec, f"{e.__class__.__name__}: {e}", worker, metrics=e.metrics)
    # the traceback stays in the worker's log; the job, its requests and their webhooks get a
    # one-line reason and the reference that finds it there
    ref = uuid.uuid4().hex[:12]
    log.exception("job %s failed (reference %s)", spec.job_id, ref)
    return fail_job(s, spec, f"{e.__class__.__name__}: {str(e)[:300]} (reference {ref}; traceback in the worker log)",
                    worker, retryable=True)


def fail_job(s: Settings, spec: JobSpec, error: str, worker: str, *, retryable: bool = False,
             metrics: dict | None = None) -> str:
    def record():
        with session_scope(s.database_url) as db:
            return jobs.fail(db, job_id=spec.job_id, token=spec.token, worker=worker, error=error[:4000],
                             retryable=retryable, metrics=metrics)

    return with_db_retry(record, what=f"recording the failure of job {spec.job_id}")
