"""One job, start to end, for every model family. Celery's tasks (``worker.celery_app``)
and the embedded thread (``worker.embedded``) both call ``execute_job``.

    claim (app.jobs.service.claim: one transaction)                       -> JobSpec
    load the base version + the data, run the catalogue's method (get_method), measure
        instance-wise: one checkpoint, one method call                      (_instance_wise)
        sharded (SISA, ARCANE): plan -> retrain_member per affected member  (_sharded_plan,
            -> assemble                                       retrain_member, _sharded_assemble;
                                                              Celery: a chord across workers)
    verify (one rule set, read from the method's catalogue entry)         (verify)
    write the new weights to their content address
    publish: app.jobs.service.complete, ONE transaction (version, alias move, instances
        erased, requests completed, audit)
    after the commit: delete the erased raw data, purge superseded versions that still hold
        erased data, drop stale slice checkpoints (sharded)

Progress reaches the job row as a throttled heartbeat (``Progress``); a heartbeat the
database refuses means another worker owns the job now, and the attempt stops.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from app.catalogue import service as catalogue
from app.catalogue.retained import all_retained_arrays, retained_count
from app.datasets import service as datasets
from app.db import session_scope
from app.jobs import service as jobs
from app.observability import job_context
from app.registry import governance
from app.registry import service as registry
from app.settings import Settings, get_settings
from app.jobs import planner
from app.jobs.models import CONSOLIDATE
from models.unlearn.registry import LABEL_OBJECTIVES, fixed_relabel_targets
from models.unlearn import DEFAULT_OBJECTIVE, get_family, get_method, must_reach, resolve

log = logging.getLogger("lethe.worker")


@dataclass
class JobSpec:
    """What every step of a claimed job needs. JSON-serialisable: it travels in Celery
    messages to member tasks. ``base_path`` is the base version's storage path as the
    registry records it: relative to the registry directory."""

    job_id: str
    token: str
    model_name: str
    family: str
    method: str                  # as requested: a catalogue name, possibly a choice ("instance")
    objective: str
    target_label: int | None
    base_path: str
    base_sha: str
    base_version: int
    forget_ids: list[str]
    t0: float = field(default_factory=time.time)
    affected: list[int] = field(default_factory=list)  # sharded: the members a deletion retrains
    recipe: dict | None = None   # the model's stored training recipe (models.train.Recipe): retraining uses it
    dataset: str = ""            # the registered dataset whose store holds the model's rows
    plan: dict | None = None     # a consolidation job's plan as requested (why it retrains)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "JobSpec":
        return cls(**d)


class JobFailed(Exception):
    """A final failure: the job fails now, no retry (the request says why)."""

    def __init__(self, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.metrics = metrics


class VerificationFailed(JobFailed):
    """The new model did not pass ``verify``; its metrics are recorded with the refusal."""


class ClaimLost(JobFailed):
    """Another worker owns the job now (its claim token replaced ours)."""


@dataclass
class Built:
    """What a family's method step hands the driver: the evidence to verify, and how to
    write and publish the new version once it passed."""

    metrics: dict | None
    stats: dict
    write: Callable[[], tuple[str, str]] | None = None    # -> (sha256, storage path)
    in_publish: Callable[..., None] | None = None         # extra writes in the publishing transaction
    after_publish: Callable[[], object] | None = None      # clean-up once the transaction committed


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- the driver ------------------------------------------------------------------------------

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
        try:
            with Lease(s, spec):
                built = _build(s, spec, fan_out)
                if built is None:
                    return "fanned_out"
                return publish(s, spec, worker, built)
        except Exception as e:  # noqa: BLE001 - every failure is recorded on the job
            return _failed(s, spec, worker, e)


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


def _build(s: Settings, spec: JobSpec, fan_out) -> Built | None:
    if not spec.forget_ids and spec.objective != CONSOLIDATE:  # all erased by an earlier job: no new version
        return Built(metrics=None, stats={"note": "all instances were already erased"})
    if not get_family(spec.family).sharded:
        return _instance_wise(s, spec)
    spec.affected = _sharded_plan(s, spec)
    if fan_out is not None and spec.affected:
        fan_out(spec.to_json())
        return None
    return _sharded_assemble(s, spec, [retrain_member(s, spec, m) for m in spec.affected])


def finish_sharded(s: Settings, spec: JobSpec, results: list[dict], worker: str) -> str:
    """The rest of a fanned-out job, once every member retrain is back (Celery's chord callback)."""
    with job_context(spec.job_id):
        try:
            with Lease(s, spec):
                return publish(s, spec, worker, _sharded_assemble(s, spec, results))
        except Exception as e:  # noqa: BLE001
            return _failed(s, spec, worker, e)


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
        governance.purge_superseded(db, s.registry_dir, spec.model_name, actor=f"worker:{worker}")
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


def verify(s: Settings, objective: str, m: dict) -> None:
    """Publish only a model that did what was asked without wrecking the rest. The same rules
    for every family; whether every instance must reach the objective comes from the
    method's catalogue entry (methods that remove influence cannot promise a label)."""
    problems = []
    if must_reach(m["method"], objective) and m["ua"] < 100.0 - 1e-6:
        problems.append(f"only {m['ua']:.1f} % of the forget instances are misclassified (need 100 %)")
    # an exact retrain is the reference an approximate result is judged against: what it loses
    # is what the remaining data supports, so it is published (and its drop recorded)
    if m["ta_drop"] > s.max_test_accuracy_drop and not m.get("exact"):
        problems.append(f"test accuracy fell {m['ta_drop']:.2f} pt (limit {s.max_test_accuracy_drop})")
    if any(v != v for v in m.values() if isinstance(v, float)):
        problems.append("a metric is NaN")
    if problems:
        m.setdefault("max_test_accuracy_drop", s.max_test_accuracy_drop)  # recorded with the refusal
        raise VerificationFailed("; ".join(problems), metrics=m)


def _failed(s: Settings, spec: JobSpec, worker: str, e: Exception) -> str:
    """Record a failed attempt. ``JobFailed`` is final. Anything else is retried, up to the
    job's max attempts — a sharded job's too: its member files are content-addressed and
    nothing is published until every member is back, so a new attempt repeats or reuses what
    the failed one wrote (issue 13: exact jobs are retried like any infrastructure fault)."""
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


def with_db_retry(fn, *, what: str, waits=(0.5, 1, 2, 4, 8, 15)):
    """A database outage must not kill the record of a job: retry for ~30 s, then give up
    (the job's lease expires and the sweeper takes it over)."""
    from sqlalchemy.exc import OperationalError

    for wait in (*waits, None):
        try:
            return fn()
        except OperationalError as e:
            if wait is None:
                raise
            log.warning("database unavailable while %s (%s); retrying in %s s", what,
                        str(e).splitlines()[0][:200], wait)
            time.sleep(wait)


def record_plan(s: Settings, spec: JobSpec, plan: dict) -> None:
    def record():
        with session_scope(s.database_url) as db:
            return jobs.record_plan(db, spec.job_id, spec.token, plan, worker=default_worker_name())

    if not with_db_retry(record, what=f"recording the plan of job {spec.job_id}"):
        raise ClaimLost(f"job {spec.job_id} was taken over or finished elsewhere")
    log.info("job %s plan: %s (%s)", spec.job_id, plan["method"], plan["reason"])


class Lease:
    """Keeps the job's heartbeat fresh while it runs, whether or not the method reports
    progress (a long epoch, an evaluation): a beat every ``LETHE_JOB_LEASE_S`` / 6 s from a
    daemon thread, so a live worker never looks dead and a dead one is noticed within one
    lease. A beat that hits a database outage is tried again at the next tick; a beat the
    database refuses (the claim was taken over) makes the next progress report stop the job."""

    def __init__(self, s: Settings, spec: JobSpec):
        import threading

        self.s, self.spec = s, spec
        self.every = max(0.5, s.job_lease_s / 6)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lease-{spec.job_id[:8]}", daemon=True)

    def __enter__(self):
        _leases[self.spec.job_id] = self
        self.lost = False
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)
        _leases.pop(self.spec.job_id, None)
        return False

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                with session_scope(self.s.database_url) as db:
                    if not jobs.touch(db, self.spec.job_id, self.spec.token):
                        self.lost = True
                        return
            except Exception as e:  # noqa: BLE001 - an outage: the next tick tries again
                log.warning("heartbeat of job %s failed: %s", self.spec.job_id, str(e).splitlines()[0][:200])


_leases: dict[str, Lease] = {}


class Progress:
    """A method's ``progress(stage, fraction)``, published as the job's heartbeat at most every
    ``every_s`` seconds (always at fraction 1), mapped into [lo, hi] of the job's progress.
    A heartbeat the database refuses means the claim is lost: stop (``ClaimLost``)."""

    def __init__(self, s: Settings, spec: JobSpec, *, lo: float = 0.0, hi: float = 1.0, every_s: float = 0.5):
        self.s, self.spec, self.lo, self.hi, self.every_s = s, spec, lo, hi, every_s
        self.last = float("-inf")

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and fraction < 1.0:
            return
        self.last = now
        beat(self.s, self.spec, stage, self.lo + (self.hi - self.lo) * fraction)


def beat(s: Settings, spec: JobSpec, stage: str, fraction: float) -> None:
    """Progress on the job row. The claim lost (here or seen by the lease thread) stops the
    job; a database outage does not (the lease thread keeps the job alive or lets it expire)."""
    from sqlalchemy.exc import OperationalError

    lease = _leases.get(spec.job_id)
    if lease is not None and lease.lost:
        raise ClaimLost(f"job {spec.job_id} was taken over or finished elsewhere")
    try:
        with session_scope(s.database_url) as db:
            ok = jobs.heartbeat(db, spec.job_id, spec.token, stage=stage, fraction=fraction)
    except OperationalError as e:
        log.warning("progress of job %s not recorded: %s", spec.job_id, str(e).splitlines()[0][:200])
        return
    if not ok:
        raise ClaimLost(f"job {spec.job_id} was taken over or finished elsewhere")


def _base_file(s: Settings, spec: JobSpec) -> str:
    from models.checkpoint import file_sha256

    path = registry.absolute_path(s.registry_dir, spec.base_path)
    if file_sha256(path) != spec.base_sha:
        raise JobFailed(f"weights of v{spec.base_version} fail their sha256 check")
    return path


# --- instance-wise family: one checkpoint, one method call ---------------------------------------

def _instance_wise(s: Settings, spec: JobSpec) -> Built:
    import numpy as np
    import torch

    from models.checkpoint import load_checkpoint, save_checkpoint
    from models.device import get_device
    from models.metrics import evaluate
    from models.train import accuracy, predict
    from models.unlearn import UnlearnRequest

    with session_scope(s.database_url) as db:  # read through the store: at most job_retain_rows retained rows
        found = catalogue.by_ids(db, spec.model_name, spec.forget_ids)
        forget_rows = [found[i] for i in spec.forget_ids]
        rx, ry = catalogue.retained_arrays(db, spec.model_name, exclude=set(spec.forget_ids), limit=s.job_retain_rows)
        n_retained = retained_count(db, spec.model_name, set(spec.forget_ids))
        train_s, history = jobs.cost_history(db, spec.model_name)
        # each row's membership risk and gap, from the newest exact version's risk job (worker/risk.py)
        _, row_risk = registry.row_risks(db, spec.model_name, spec.forget_ids)
    fx, fy = catalogue.load_arrays(forget_rows, check_hash=True)
    if not len(fy):  # a consolidation that serves no request: nothing to forget, only to retrain
        fx = np.zeros((0, *rx.shape[1:]), np.float32)
    t0 = time.perf_counter()
    model, meta = load_checkpoint(_base_file(s, spec), device=get_device())
    model.lethe_recipe = spec.recipe  # what retraining from scratch trains with
    hx, hy = _holdout(s, spec)
    fx_t, fy_t = torch.from_numpy(fx), torch.from_numpy(fy)
    has_retained = len(ry) > 0
    rx_t = torch.from_numpy(rx) if has_retained else None
    ry_t = torch.from_numpy(ry) if has_retained else None
    # a fixed relabel target; an instance already of that label is taught its runner-up
    targets = fixed_relabel_targets(model, fx_t, fy_t, spec.target_label) if spec.target_label is not None else None
    original_pred = predict(model, fx_t) if len(fy) else None
    base_ta = accuracy(model, hx, hy)
    retain = (rx_t, ry_t) if has_retained else (hx, hy)
    progress = Progress(s, spec)

    def run(method: str):
        """One method on the base model, measured the same way whichever it is. Exact
        retraining trains on every retained row, not the job's bounded sample."""
        t = time.perf_counter()
        train_x, train_y = rx_t, ry_t
        if method == planner.RETRAIN and n_retained > len(ry):
            progress(f"reading all {n_retained} retained rows", 0.0)
            with session_scope(s.database_url) as db:
                ax, ay = all_retained_arrays(db, spec.model_name, exclude=set(spec.forget_ids))
            train_x, train_y = torch.from_numpy(ax), torch.from_numpy(ay)
        if len(fy):
            objective = DEFAULT_OBJECTIVE if spec.objective == CONSOLIDATE else spec.objective  # what it serves
            gaps = [row_risk[i][1] for i in spec.forget_ids if i in row_risk]
            request = UnlearnRequest(forget_x=fx_t, forget_y=fy_t, objective=objective, target_labels=targets,
                                     retain_x=train_x, retain_y=train_y, holdout_x=hx, holdout_y=hy, seed=0,
                                     # each row aimed at its own membership gap, when every row has one
                                     reference_gap=torch.tensor(gaps) if row_risk and len(gaps) == len(fy) else None)
            result = get_method(method)(copy.deepcopy(model), request, progress=progress)
        else:  # a consolidation serving no new request: retrain, nothing more to leave out
            from models.unlearn.baselines import retrain_from_scratch

            result = retrain_from_scratch(copy.deepcopy(model), train_x, train_y, progress=progress)
        progress("verifying", 1.0)
        if len(fy):
            m = {k: float(v) for k, v in evaluate(result.model, forget=(fx_t, fy_t), retain=retain,
                                                   test=(hx, hy), original_pred=original_pred).items()}
        else:
            m = {"ta": float(accuracy(result.model, hx, hy)), "ra": float(accuracy(result.model, *retain)),
                 "forget_size": 0}
        m.update(base_ta=float(base_ta), ta_drop=float(base_ta - m["ta"]), k=int(len(fy)), method=method,
                 objective=spec.objective, seconds=round(time.perf_counter() - t, 3),
                 train_rows=int(len(train_y)) if train_y is not None else 0)
        return result, m

    facts = planner.Facts(sharded=False, method=resolve(spec.method, has_retained_data=has_retained).name,
                          k=int(len(fy)), has_retained=has_retained, train_seconds=train_s,
                          approx_history=history, label_objective=spec.objective in LABEL_OBJECTIVES,
                          max_approx_instances=s.max_approx_instances, retrain_below_s=s.retrain_below_s,
                          risks=[row_risk[i][0] if i in row_risk else None for i in spec.forget_ids] if row_risk else None,
                          risk_threshold=s.risk_threshold)
    if spec.objective == CONSOLIDATE:  # the plan was made when the consolidation was asked for
        if not has_retained:
            raise JobFailed(f"{spec.model_name} has no retained data left to retrain on")
        chosen = planner.Plan(planner.RETRAIN, True, (spec.plan or {}).get("reason", "consolidation"), None, train_s)
    else:
        chosen = planner.plan(facts)
    plan_doc = {**(spec.plan or {}), **chosen.to_json(facts),
                "row_risk": {i: round(row_risk[i][0], 4) for i in spec.forget_ids if i in row_risk}}
    record_plan(s, spec, plan_doc)
    result, metrics = run(chosen.method)
    metrics["exact"] = bool(plan_doc["exact"])
    if not chosen.exact and has_retained:
        try:
            verify(s, spec.objective, metrics)
        except VerificationFailed as refused:  # exact fallback, not failure (the refusal stays on record)
            log.warning("job %s: %s refused (%s); retraining from scratch", spec.job_id, chosen.method, refused)
            plan_doc = {**plan_doc, "method": planner.RETRAIN, "exact": True, "fallback_from": chosen.method,
                        "refused": str(refused), "refused_metrics": metrics,
                        "reason": f"verification refused {chosen.method} ({refused}): exact retraining"}
            record_plan(s, spec, plan_doc)
            result, metrics = run(planner.RETRAIN)
            metrics["exact"] = True
    metrics["job_seconds"] = round(time.perf_counter() - t0, 3)  # fallback included; "seconds": the method's own
    new_model, method = result.model, metrics["method"]
    stats = {k: v for k, v in (result.stats or {}).items() if isinstance(v, (int, float, str, bool, type(None)))}

    def write() -> tuple[str, str]:
        tmp = registry.weights_tmp_path(s.registry_dir, spec.model_name)
        sha = save_checkpoint(new_model, tmp, arch=meta["arch"], dataset=meta["dataset"],
                              input_shape=meta["input_shape"], classes=meta["classes"],
                              arch_params=meta["arch_params"],
                              extra={"parent_sha256": spec.base_sha, "job_id": spec.job_id, "method": method})
        return sha, registry.publish_weights(s.registry_dir, spec.model_name, tmp, sha)

    return Built(metrics, stats, write)


# --- sharded families (SISA, ARCANE): plan -> member retrains -> assemble ------------------------

def _holdout(s: Settings, spec: JobSpec):
    """The dataset's held-out rows (at most job_holdout_rows) as tensors."""
    import torch

    return tuple(torch.from_numpy(a) for a in datasets.holdout_arrays(s, spec.dataset, s.job_holdout_rows))


def _data_fn(s: Settings, model_name: str):
    """id -> (x, y) read through the dataset store (only the row groups holding them;
    content hash checked). What was read is kept for the job: a member's retrain reads its
    shard's rows, so memory follows the shard, not the dataset."""
    import numpy as np
    import torch

    cache: dict[str, tuple] = {}

    def fetch(ids: list[str]):
        missing = [i for i in ids if i not in cache]
        if missing:
            with session_scope(s.database_url) as db:
                rows = catalogue.by_ids(db, model_name, missing)
            bad = [i for i in missing if i not in rows or rows[i].erased_at is not None]
            if bad:
                raise JobFailed(f"instance {bad[0]} is not a live catalogue entry of {model_name}")
            try:
                x, y = catalogue.load_arrays([rows[i] for i in missing], check_hash=True)
            except RuntimeError as e:
                raise JobFailed(str(e))
            for i, a, label in zip(missing, x, y):
                cache[i] = (a, int(label))
        x = torch.from_numpy(np.stack([cache[i][0] for i in ids]).astype(np.float32))
        y = torch.tensor([cache[i][1] for i in ids], dtype=torch.long)
        return x, y

    return fetch


def _deletion(s: Settings, spec: JobSpec, data):
    """(manifest, config, old plan, new plan, affected members) of this job's deletion."""
    from models.unlearn.shards import ExactConfig, Plan, read_manifest

    doc = read_manifest(_base_file(s, spec))
    config, plan = ExactConfig.from_json(doc["config"]), Plan.from_json(doc["plan"])
    if config.kind != spec.method:
        raise JobFailed(f"model is a {config.kind} bundle; method {spec.method!r} does not fit")
    new_plan, affected = get_method(spec.method).plan_deletion(config, plan, spec.forget_ids, data)
    return doc, config, plan, new_plan, affected


def _sharded_plan(s: Settings, spec: JobSpec) -> list[int]:
    _, config, _, _, affected = _deletion(s, spec, _data_fn(s, spec.model_name))
    beat(s, spec, f"retraining {len(affected)} of {config.shards} members", 0.05)
    return affected


def retrain_member(s: Settings, spec: JobSpec, member: int) -> dict:
    """One member's retrain (one Celery task of the chord's group). Writes the member file to
    its content address; slice checkpoints are read from / written to the model's slice store."""
    from models.unlearn.shards import DirStore, save_member

    data = _data_fn(s, spec.model_name)
    _, config, _, new_plan, affected = _deletion(s, spec, data)
    if member not in affected:
        raise JobFailed(f"member {member} is not affected by job {spec.job_id}")
    store = DirStore(registry.slices_dir(s.registry_dir, spec.model_name))
    progress = Progress(s, spec, lo=0.05, hi=0.05 + 0.85 / max(1, len(affected)))
    t = time.perf_counter()
    model, st = get_method(spec.method).retrain_member(config, member, new_plan.slices[member], data, store,
                                                       lambda f: progress(f"retrain member {member}", f))
    tmp = registry.weights_tmp_path(s.registry_dir, spec.model_name)
    sha = save_member(model, tmp, config, member)
    rel = registry.publish_member(s.registry_dir, spec.model_name, tmp, sha)
    return {"member": member, "file": rel, "sha256": sha, "retrained_slices": st["retrained_slices"],
            "reused_slices": st["reused_slices"], "seconds": round(time.perf_counter() - t, 3)}


def _sharded_assemble(s: Settings, spec: JobSpec, results: list[dict]) -> Built:
    """The new ensemble: the base members plus the retrained ones (every file's sha256
    checked), measured; the manifest is written only once it passed verification."""
    from models.checkpoint import file_sha256
    from models.train import accuracy
    from models.unlearn.shards import DirStore, load_bundle, load_member, stale_keys, write_manifest

    data = _data_fn(s, spec.model_name)
    doc, config, plan, new_plan, affected = _deletion(s, spec, data)
    got = {r["member"]: r for r in results}
    if sorted(got) != sorted(affected):
        raise JobFailed(f"retrained members {sorted(got)} != affected members {sorted(affected)}")
    beat(s, spec, "assembling", 0.92)
    model_dir = os.path.join(s.registry_dir, spec.model_name)
    replaced = {}
    for m, r in got.items():
        path = os.path.join(model_dir, r["file"])
        if file_sha256(path) != r["sha256"]:
            raise JobFailed(f"retrained member {m} fails its sha256 check")
        replaced[m] = load_member(path, config)
    old_model, _ = load_bundle(registry.absolute_path(s.registry_dir, spec.base_path), check=True)
    new_model = old_model.with_members(replaced, new_plan)
    hx, hy = _holdout(s, spec)
    fx, fy = data(spec.forget_ids)
    ta, base_ta = accuracy(new_model, hx, hy), accuracy(old_model, hx, hy)
    metrics = {"ta": ta, "base_ta": base_ta, "ta_drop": base_ta - ta, "ua": 100.0 - accuracy(new_model, fx, fy),
               "k": len(spec.forget_ids), "method": spec.method, "objective": spec.objective,
               "seconds": round(time.time() - spec.t0, 3)}
    stats = {"kind": config.kind, "members": len(doc["members"]), "retrained_members": len(affected),
             "affected_members": ",".join(map(str, affected)),
             "retrained_slices": sum(r["retrained_slices"] for r in results),
             "reused_slices": sum(r["reused_slices"] for r in results),
             "total_slices": sum(len(sl) for sl in new_plan.slices)}
    members = [dict(m) for m in doc["members"]]
    for m, r in got.items():
        members[m] = {"file": r["file"], "sha256": r["sha256"]}
    where = new_plan.locate()
    locations = {i: where[i] for m in affected for i in new_plan.pool[m]}

    def write() -> tuple[str, str]:
        tmp = registry.manifest_tmp_path(s.registry_dir, spec.model_name)
        sha = write_manifest(tmp, config, new_plan, members,
                             extra={"parent_sha256": spec.base_sha, "job_id": spec.job_id})
        return sha, registry.publish_bundle(s.registry_dir, spec.model_name, tmp, sha)

    def drop_stale_slices() -> int:
        """The slice checkpoints trained on the erased instances (the new plan names none of
        them). Member files of older versions stay: versions are immutable (rollback, audit)."""
        store = DirStore(registry.slices_dir(s.registry_dir, spec.model_name))
        return sum(store.delete(k) for k in stale_keys(config, plan, new_plan, affected))

    return Built(metrics, stats, write, in_publish=lambda db: catalogue.set_locations(db, spec.model_name, locations),
                 after_publish=drop_stale_slices)
