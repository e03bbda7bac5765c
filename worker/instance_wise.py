"""The instance-wise execution path: one checkpoint, one method call, measured.

    build
      _read          the forget rows, a bounded sample of the retained rows
                     (LETHE_JOB_RETAIN_ROWS), the model's cost history, each forget row's
                     membership risk and gap (worker/risk.py)            (one read transaction)
      _load          the base checkpoint (sha256 checked), the holdout, the base accuracy
      _choose        the planner (``app.jobs.planner.plan``) on the job's facts; a
                     consolidation's plan was made when it was asked for
      _run           the chosen method (``models.unlearn.get_method``) on a copy of the base
                     model, measured (``_measure``); exact retraining reads every retained row
      _fallback      an approximate result the publishing rules refuse
                     (``app.jobs.publishing``) is replaced by exact retraining; the refusal
                     stays on the plan
      _writer        how the lifecycle writes the checkpoint once it is published

A new method needs no change here (it is a catalogue entry); a new planner rule changes
``app.jobs.planner`` and, when it needs a new fact, ``_choose``.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from app.catalogue import service as catalogue
from app.catalogue.retained import all_retained_arrays, retained_count
from app.db import session_scope
from app.jobs import planner
from app.jobs import service as jobs
from app.jobs.models import CONSOLIDATE
from app.registry import service as registry
from app.registry import orders, starting
from app.settings import Settings
from models.trainers import TrainerError
from models.unlearn import DEFAULT_OBJECTIVE, get_method, resolve
from models.unlearn.registry import LABEL_OBJECTIVES, fixed_relabel_targets

from .inputs import base_file, holdout
from .job import Built, JobFailed, JobSpec, VerificationFailed, verify
from .lease import Lease

log = logging.getLogger("lethe.worker")


@dataclass
class _Inputs:
    """What one job reads once and every method run of it shares (tensors)."""

    s: Settings
    spec: JobSpec
    fx: Any                      # the forget rows
    fy: Any
    rx: Any                      # the retained sample, None when the catalogue holds none
    ry: Any
    n_retained: int              # all retained rows (exact retraining reads them all)
    hx: Any                      # the holdout
    hy: Any
    model: Any                   # the base version
    meta: dict
    targets: Any                 # relabel targets, None unless the request names a label
    original_pred: Any           # the base model's predictions on the forget rows
    base_ta: float
    train_s: float | None        # the model's recorded training time
    history: list                # [k, seconds] of its past approximate jobs
    row_risk: dict               # forget row id -> (membership risk, gap), from the newest exact
                                 # version's risk job (worker/risk.py); empty when not measured

    @property
    def k(self) -> int:
        return int(len(self.fy))

    @property
    def has_retained(self) -> bool:
        return self.ry is not None

    @property
    def retain(self):
        return (self.rx, self.ry) if self.has_retained else (self.hx, self.hy)


def build(s: Settings, spec: JobSpec, lease: Lease) -> Built:
    rows = _read(s, spec)
    t0 = time.perf_counter()
    job = _load(s, spec, *rows)
    progress = lease.progress()
    chosen, facts = _choose(job)
    plan_doc = {**(spec.plan or {}), **chosen.to_json(facts),
                "row_risk": {i: round(job.row_risk[i][0], 4) for i in spec.forget_ids if i in job.row_risk}}
    lease.record_plan(plan_doc)
    result, metrics = _run(job, chosen.method, progress)
    metrics["exact"] = bool(plan_doc["exact"])
    if not chosen.exact and job.has_retained:
        result, metrics = _fallback(job, lease, progress, plan_doc, result, metrics)
    metrics["job_seconds"] = round(time.perf_counter() - t0, 3)  # fallback included; "seconds": the method's own
    stats = {k: v for k, v in (result.stats or {}).items() if isinstance(v, (int, float, str, bool, type(None)))}
    return Built(metrics, stats, _writer(s, spec, result.model, job.meta, metrics["method"]),
                 in_publish=_sealer(job) if not metrics["exact"] else None)


def _sealer(job: _Inputs) -> Callable | None:
    """A model its own pipeline retrains keeps its forget rows sealed until its requests' due
    date, so the retrain order's upload is scored on them (app/registry/probes.py); sealed in
    the publishing transaction, before the rows leave the dataset store."""
    spec = job.spec
    if _retrains_here(spec) or not job.k or not job.s.order_seal_forget_rows:
        return None
    fx, fy, ids = job.fx.numpy().copy(), job.fy.numpy().copy(), list(spec.forget_ids)

    def seal(db) -> None:
        from app.registry import probes

        due = [r.due_at for r in jobs.requests_of(db, spec.job_id, open_only=False)]
        probes.seal(db, job.s, model_name=spec.model_name, job_id=spec.job_id, instance_ids=ids, x=fx, y=fy,
                    due_at=min(due) if due else None, actor="worker")

    return seal


def _read(s: Settings, spec: JobSpec):
    """(forget x, forget y, retained sample x, y, all retained rows, training seconds, history,
    each forget row's (membership risk, gap))."""
    import numpy as np

    with session_scope(s.database_url) as db:  # read through the store: at most job_retain_rows retained rows
        found = catalogue.by_ids(db, spec.model_name, spec.forget_ids)
        forget_rows = [found[i] for i in spec.forget_ids]
        rx, ry = catalogue.retained_arrays(db, spec.model_name, exclude=set(spec.forget_ids), limit=s.job_retain_rows)
        n_retained = retained_count(db, spec.model_name, set(spec.forget_ids))
        train_s, history = jobs.cost_history(db, spec.model_name)
        _, row_risk = registry.row_risks(db, spec.model_name, spec.forget_ids)
    fx, fy = catalogue.load_arrays(forget_rows, check_hash=True)
    if not len(fy):  # a consolidation that serves no request: nothing to forget, only to retrain
        fx = np.zeros((0, *rx.shape[1:]), np.float32)
    return fx, fy, rx, ry, n_retained, train_s, history, row_risk


def _load(s: Settings, spec: JobSpec, fx, fy, rx, ry, n_retained, train_s, history, row_risk) -> _Inputs:
    import torch

    from models.checkpoint import load_checkpoint
    from models.device import get_device
    from models.train import accuracy, predict

    model, meta = load_checkpoint(base_file(s, spec), device=get_device())
    model.lethe_recipe = spec.recipe  # what retraining from scratch trains with (its trainer, models/trainers.py)
    with session_scope(s.database_url) as db:  # ...and from which weights (app/registry/starting.py)
        try:
            model.lethe_start = starting.load(db, s, spec.recipe)
        except ValueError as e:  # gone or not the pinned digest: no retrain can be this model's
            raise JobFailed(f"starting point of {spec.model_name}: {e}") from e
    hx, hy = holdout(s, spec)
    fx_t, fy_t = torch.from_numpy(fx), torch.from_numpy(fy)
    has_retained = len(ry) > 0
    # a fixed relabel target; an instance already of that label is taught its runner-up
    targets = fixed_relabel_targets(model, fx_t, fy_t, spec.target_label) if spec.target_label is not None else None
    return _Inputs(s=s, spec=spec, fx=fx_t, fy=fy_t, rx=torch.from_numpy(rx) if has_retained else None,
                   ry=torch.from_numpy(ry) if has_retained else None, n_retained=n_retained, hx=hx, hy=hy,
                   model=model, meta=meta, targets=targets, original_pred=predict(model, fx_t) if len(fy) else None,
                   base_ta=accuracy(model, hx, hy), train_s=train_s, history=history, row_risk=row_risk)


def _choose(job: _Inputs) -> tuple[planner.Plan, planner.Facts]:
    """The planner's choice on this job's facts (a consolidation's was made when it was asked for)."""
    s, spec = job.s, job.spec
    info = resolve(spec.method, has_retained_data=job.has_retained)
    facts = planner.Facts(sharded=False, method=info.name, serves_deletions=info.serves_deletions,
                          retrains_here=_retrains_here(spec),
                          k=job.k, has_retained=job.has_retained, train_seconds=job.train_s,
                          approx_history=job.history, label_objective=spec.objective in LABEL_OBJECTIVES,
                          max_approx_instances=s.max_approx_instances, retrain_below_s=s.retrain_below_s,
                          risks=[job.row_risk[i][0] if i in job.row_risk else None for i in spec.forget_ids]
                          if job.row_risk else None, risk_threshold=s.risk_threshold)
    if spec.objective != CONSOLIDATE:
        return planner.plan(facts), facts
    if not job.has_retained:
        raise JobFailed(f"{spec.model_name} has no retained data left to retrain on")
    return planner.Plan(planner.RETRAIN, True, (spec.plan or {}).get("reason", "consolidation"), None,
                        job.train_s), facts


def _run(job: _Inputs, method: str, progress: Callable[[str, float], None]):
    """One method on the base model, measured the same way whichever it is: (result, metrics).
    Exact retraining trains on every retained row, not the job's bounded sample."""
    import torch

    from models.unlearn import UnlearnRequest

    t = time.perf_counter()
    train_x, train_y = _training_rows(job, method, progress)
    if job.k:
        spec = job.spec
        objective = DEFAULT_OBJECTIVE if spec.objective == CONSOLIDATE else spec.objective  # what it serves
        gaps = [job.row_risk[i][1] for i in spec.forget_ids if i in job.row_risk]
        request = UnlearnRequest(forget_x=job.fx, forget_y=job.fy, objective=objective, target_labels=job.targets,
                                 retain_x=train_x, retain_y=train_y, holdout_x=job.hx, holdout_y=job.hy, seed=0,
                                 # each row aimed at its own membership gap, when every row has one
                                 reference_gap=torch.tensor(gaps) if job.row_risk and len(gaps) == job.k else None)
        try:
            result = get_method(method)(copy.deepcopy(job.model), request, progress=progress)
        except TrainerError as e:  # the model's own training code failed: final, retrying repeats it
            raise JobFailed(str(e)) from e
    else:  # a consolidation serving no new request: retrain, nothing more to leave out
        from models.unlearn.baselines import retrain_from_scratch

        try:
            result = retrain_from_scratch(copy.deepcopy(job.model), train_x, train_y, progress=progress,
                                          heldout=(job.hx, job.hy) if len(job.hy) else None)
        except TrainerError as e:
            raise JobFailed(str(e)) from e
    progress("verifying", 1.0)
    m = _measure(job, result.model)
    m.update(method=method, objective=job.spec.objective, seconds=round(time.perf_counter() - t, 3),
             train_rows=int(len(train_y)) if train_y is not None else 0)
    return result, m


def _training_rows(job: _Inputs, method: str, progress):
    """The retained rows a method trains on: the job's sample, or all of them for retraining."""
    import torch

    if method != planner.RETRAIN or job.n_retained <= (len(job.ry) if job.has_retained else 0):
        return job.rx, job.ry
    progress(f"reading all {job.n_retained} retained rows", 0.0)
    with session_scope(job.s.database_url) as db:
        ax, ay = all_retained_arrays(db, job.spec.model_name, exclude=set(job.spec.forget_ids))
    return torch.from_numpy(ax), torch.from_numpy(ay)


def _measure(job: _Inputs, model) -> dict:
    """The metrics the publishing rules read (``models.metrics.evaluate``), against the base."""
    from models.metrics import evaluate
    from models.train import accuracy

    if job.k:
        m = {k: float(v) for k, v in evaluate(model, forget=(job.fx, job.fy), retain=job.retain,
                                               test=(job.hx, job.hy), original_pred=job.original_pred).items()}
    else:
        m = {"ta": float(accuracy(model, job.hx, job.hy)), "ra": float(accuracy(model, *job.retain)),
             "forget_size": 0}
    m.update(base_ta=float(job.base_ta), ta_drop=float(job.base_ta - m["ta"]), k=job.k)
    return m


def _fallback(job: _Inputs, lease: Lease, progress, plan_doc: dict, result, metrics: dict):
    """Exact retraining in place of an approximate result the publishing rules refuse (the
    refusal stays on the plan and in the audit); the result as it was when they accept it."""
    try:
        verify(job.s, job.spec.objective, metrics)
        return result, metrics
    except VerificationFailed as refused:  # exact fallback, not failure
        if not _retrains_here(job.spec):  # only its own pipeline can retrain it: the refusal is final
            raise
        chosen = metrics["method"]
        log.warning("job %s: %s refused (%s); retraining from scratch", job.spec.job_id, chosen, refused)
        lease.record_plan({**plan_doc, "method": planner.RETRAIN, "exact": True, "fallback_from": chosen,
                           "refused": str(refused), "refused_metrics": metrics,
                           "reason": f"verification refused {chosen} ({refused}): exact retraining"})
        result, metrics = _run(job, planner.RETRAIN, progress)
        metrics["exact"] = True
        return result, metrics


def _retrains_here(spec: JobSpec) -> bool:
    """False for a model its own pipeline retrains (trainer ``external``): a job of Lethe's
    cannot retrain it; its exact versions come from retrain orders (app/registry/orders.py)."""
    return (spec.recipe or {}).get("trainer") != orders.EXTERNAL


def _writer(s: Settings, spec: JobSpec, new_model, meta: dict, method: str) -> Callable[[], tuple[str, str]]:
    """Writes the new checkpoint to its content address: (sha256, storage path)."""
    from models.checkpoint import save_checkpoint

    def write() -> tuple[str, str]:
        tmp = registry.weights_tmp_path(registry.weights(s), spec.model_name)
        sha = save_checkpoint(new_model, tmp, arch=meta["arch"], dataset=meta["dataset"],
                              input_shape=meta["input_shape"], classes=meta["classes"],
                              arch_params=meta["arch_params"],
                              extra={"parent_sha256": spec.base_sha, "job_id": spec.job_id, "method": method})
        return sha, registry.publish_weights(registry.weights(s), spec.model_name, tmp, sha)

    return write
