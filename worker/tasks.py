"""The one task: run a job. ``execute_job`` is the implementation; Celery's ``run_job``
and the embedded worker both call it.

load the version `production` points to -> models/ unlearning method (progress published)
-> verify with models/ metrics -> write the new weights (safetensors, sha256) -> ONE
transaction (version, alias move, instances erased, requests completed, audit) -> delete
the erased instances' raw data.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import traceback

from app.catalogue import service as catalogue
from app.db import session_scope
from app.jobs import service as jobs
from app.observability import job_context
from app.registry import governance
from app.registry import service as registry
from app.settings import Settings, get_settings
from models.unlearn import method_info

from .celery_app import celery_app

log = logging.getLogger("lethe.worker")


class VerificationFailed(Exception):
    def __init__(self, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.metrics = metrics


class ClaimLost(Exception):
    pass


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_job(job_id: str, *, settings: Settings | None = None, worker_name: str | None = None,
                fan_out=None) -> str:
    """Run one job end to end. Returns "completed", "done" (already finished: no-op),
    "defer" (another job of the model runs; try later), "retry" (attempt failed, job queued
    again), "failed" (final), "missing", or "fanned_out" (a sharded model's member retrains
    were sent out as a Celery chord, which completes the job; see worker/exact.py). Every log
    line written meanwhile carries the job id."""
    with job_context(job_id):
        return _execute_job(job_id, settings=settings, worker_name=worker_name, fan_out=fan_out)


def _execute_job(job_id: str, *, settings: Settings | None, worker_name: str | None, fan_out=None) -> str:
    s = settings or get_settings()
    worker = worker_name or _worker_name()
    with session_scope(s.database_url) as db:
        c = jobs.claim(db, job_id, worker=worker, lease_s=s.job_lease_s)
        if c.outcome != "run":
            log.info("job %s: %s (%s)", job_id, c.outcome, c.reason)
            return c.outcome
        token, job = c.token, c.job
        model_row = registry.get_model(db, job.model_name)
        base = registry.resolve_alias(db, job.model_name)
        targets = {r.target_label for r in c.requests if r.target_label is not None}
        spec = {"model_name": job.model_name, "objective": job.objective, "method": job.method,
                "target_label": targets.pop() if targets else None, "classes": model_row.classes,
                "base_path": registry.absolute_path(s.registry_dir, base.storage_path), "base_sha": base.sha256,
                "base_version": base.version}
        forget_rows = list(catalogue.by_ids(db, job.model_name, c.instance_ids).values())
        forget_rows.sort(key=lambda r: c.instance_ids.index(r.instance_id))
        family = model_row.family
        spec.update(family=family, base_rel=base.storage_path)
        retained_rows = catalogue.retained(db, job.model_name, exclude=set(c.instance_ids)) \
            if family == "instance" else []
    if family != "instance":  # SISA / ARCANE bundle: exact unlearning by member retrains
        from . import exact

        return exact.run(s, job_id, token, worker, spec, [r.instance_id for r in forget_rows], fan_out=fan_out)
    try:
        if not forget_rows:  # everything was erased by an earlier job: complete, no new version
            sha, rel, metrics, stats = None, None, None, {"note": "all instances were already erased"}
        else:
            fx, fy = catalogue.load_arrays(forget_rows, check_hash=True)
            rx, ry = catalogue.load_arrays(retained_rows)
            sha, rel, metrics, stats = _unlearn(s, job_id, token, spec, fx, fy, rx, ry)
    except (VerificationFailed, ClaimLost) as e:
        return _record_failure(s, job_id, token, worker, f"{e.__class__.__name__}: {e}", retryable=False,
                               metrics=getattr(e, "metrics", None))
    except Exception as e:  # noqa: BLE001 - recorded in the job, retried up to max_attempts
        log.exception("job %s failed", job_id)
        tb = traceback.format_exc(limit=3)
        return _record_failure(s, job_id, token, worker, f"{e.__class__.__name__}: {e}\n{tb}"[:4000], retryable=True)
    try:
        with session_scope(s.database_url) as db:
            jobs.complete(db, job_id=job_id, token=token, worker=worker, instance_ids=[r.instance_id for r in forget_rows],
                          sha256=sha, storage_path=rel, metrics=metrics, stats=stats)
    except jobs.JobConflict as e:
        return _record_failure(s, job_id, token, worker, f"JobConflict: {e}", retryable=True)
    with session_scope(s.database_url) as db:
        catalogue.purge_erased_raw(db, spec["model_name"])
    with session_scope(s.database_url) as db:  # superseded versions that still hold erased data
        governance.purge_superseded(db, s.registry_dir, spec["model_name"], actor=f"worker:{worker}")
    log.info("job %s completed: %s, %d instances erased, new weights sha256=%s", job_id, spec["model_name"],
             len(forget_rows), (sha or "none (nothing left to erase)")[:16])
    return "completed"


def _record_failure(s: Settings, job_id: str, token: str, worker: str, error: str, retryable: bool,
                    metrics: dict | None = None) -> str:
    with session_scope(s.database_url) as db:
        return jobs.fail(db, job_id=job_id, token=token, worker=worker, error=error, retryable=retryable,
                         metrics=metrics)


def _unlearn(s: Settings, job_id: str, token: str, spec: dict, fx, fy, rx, ry):
    import torch

    from models.checkpoint import file_sha256, load_checkpoint, save_checkpoint
    from models.data import load_dataset
    from models.device import get_device
    from models.metrics import evaluate
    from models.train import accuracy, predict
    from models.unlearn import UnlearnRequest, get_method, resolve

    t0 = time.perf_counter()
    if file_sha256(spec["base_path"]) != spec["base_sha"]:
        raise RuntimeError(f"weights of v{spec['base_version']} fail their sha256 check")
    device = get_device()
    model, meta = load_checkpoint(spec["base_path"], device=device)
    ds = load_dataset(meta["dataset"])
    fx_t, fy_t = torch.from_numpy(fx), torch.from_numpy(fy)
    has_retained = len(ry) > 0
    rx_t = torch.from_numpy(rx) if has_retained else None
    ry_t = torch.from_numpy(ry) if has_retained else None
    method = resolve(spec["method"], has_retained_data=has_retained).name
    target = spec["target_label"]
    targets = torch.full_like(fy_t, int(target)) if target is not None else None
    original_pred = predict(model, fx_t)
    base_ta = accuracy(model, ds.x_test, ds.y_test)

    last = [0.0]

    def progress(stage: str, fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] < 0.5 and fraction < 1.0:
            return
        last[0] = now
        with session_scope(s.database_url) as db:
            if not jobs.heartbeat(db, job_id, token, stage=stage, fraction=fraction):
                raise ClaimLost(f"job {job_id} was taken over or finished elsewhere")

    request = UnlearnRequest(forget_x=fx_t, forget_y=fy_t, objective=spec["objective"], target_labels=targets,
                             retain_x=rx_t, retain_y=ry_t, holdout_x=ds.x_test, holdout_y=ds.y_test, seed=0)
    result = get_method(method)(model, request, progress=progress)
    new_model = result.model
    progress("verifying", 1.0)
    retain = (rx_t, ry_t) if has_retained else (ds.x_test, ds.y_test)
    metrics = {k: float(v) for k, v in evaluate(new_model, forget=(fx_t, fy_t), retain=retain,
                                                 test=(ds.x_test, ds.y_test), original_pred=original_pred).items()}
    metrics.update(base_ta=float(base_ta), ta_drop=float(base_ta - metrics["ta"]), k=int(len(fy)),
                   method=method, objective=spec["objective"], seconds=round(time.perf_counter() - t0, 3))
    _verify(s, spec, metrics)
    tmp = registry.weights_tmp_path(s.registry_dir, spec["model_name"])
    sha = save_checkpoint(new_model, tmp, arch=meta["arch"], dataset=meta["dataset"],
                          input_shape=meta["input_shape"], classes=meta["classes"], arch_params=meta["arch_params"],
                          extra={"parent_sha256": spec["base_sha"], "job_id": job_id, "method": method})
    rel = registry.publish_weights(s.registry_dir, spec["model_name"], tmp, sha)
    stats = {k: v for k, v in (result.stats or {}).items() if isinstance(v, (int, float, str, bool, type(None)))}
    return sha, rel, metrics, stats


def _verify(s: Settings, spec: dict, m: dict) -> None:
    """Publish only a model that did what was asked without wrecking the rest."""
    problems = []
    reaches = method_info(m["method"]).reaches_objective
    if spec["objective"] in ("misclassify", "relabel") and reaches and m["ua"] < 100.0 - 1e-6:
        problems.append(f"only {m['ua']:.1f} % of the forget instances are misclassified (need 100 %)")
    if m["ta_drop"] > s.max_test_accuracy_drop:
        problems.append(f"test accuracy fell {m['ta_drop']:.2f} pt (limit {s.max_test_accuracy_drop})")
    if any(v != v for v in m.values() if isinstance(v, float)):
        problems.append("a metric is NaN")
    if problems:
        m.setdefault("max_test_accuracy_drop", s.max_test_accuracy_drop)  # recorded with the refusal
        raise VerificationFailed("; ".join(problems), metrics=m)


@celery_app.task(name="lethe.run_job", bind=True, acks_late=True, max_retries=None)
def run_job(self, job_id: str) -> str:
    s = get_settings()
    outcome = execute_job(job_id, worker_name=f"celery:{self.request.hostname}:{os.getpid()}",
                          fan_out=_chord_fan_out if s.exact_fan_out else None)
    if outcome == "defer":
        raise self.retry(countdown=3)
    if outcome == "retry":
        raise self.retry(countdown=min(60, 2 ** (self.request.retries or 0)))
    return outcome


# --- sharded (exact) models: member retrains fan out as a group, joined by a chord --------------

def _chord_fan_out(job_spec: dict) -> None:
    from celery import chord, group

    callback = exact_assemble.s(job_spec).on_error(exact_failed.s(job_spec))
    chord(group(exact_member.s(job_spec, m) for m in job_spec["affected"]), callback).apply_async()


@celery_app.task(name="lethe.exact_member", bind=True, acks_late=True, ignore_result=False)
def exact_member(self, job_spec: dict, member: int) -> dict:
    from . import exact

    return exact.retrain_member(get_settings(), job_spec, member)


@celery_app.task(name="lethe.exact_assemble", bind=True, acks_late=True, ignore_result=False)
def exact_assemble(self, results: list[dict], job_spec: dict) -> str:
    from . import exact

    return exact.finish(get_settings(), job_spec, results, f"celery:{self.request.hostname}:{os.getpid()}")


@celery_app.task(name="lethe.exact_failed")
def exact_failed(request, exc, traceback, job_spec: dict) -> str:
    """The chord's errback: a member retrain failed, so the job fails and nothing is published."""
    from . import exact

    return exact.fail(get_settings(), job_spec, f"member retrain failed: {exc.__class__.__name__}: {exc}",
                      f"celery:{_worker_name()}")
