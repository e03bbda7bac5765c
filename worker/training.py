"""A training run: Lethe trains a registered model on its registered dataset.

claim the run -> read the dataset's training split through its store -> train with the
model's stored recipe (progress on the run row) -> evaluate on the held-out split -> save
the weights (safetensors, content-addressed) -> ONE transaction: version 1, ``production``,
the catalogue (every training row and its subject), model ``ready``, run ``completed``.
A failure marks the run and the model ``failed`` with the reason; nothing is published.
The Celery task ``lethe.train_model`` (worker/celery_app.py) and the embedded worker's thread
call the same function.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import traceback

from app.audit import service as audit
from app.db import session_scope, utcnow
from app.registry import service as registry
from app.registry import starting, training
from app.registry.models import MODEL_FAILED, MODEL_READY, TrainingRun
from app.settings import Settings, get_settings

log = logging.getLogger("lethe.worker.training")


def _claim(s: Settings, run_id: str, worker: str) -> dict | None:
    with session_scope(s.database_url) as db:
        run = db.get(TrainingRun, run_id)
        if run is None or run.status != training.QUEUED:
            return None
        m = registry.get_model(db, run.model_name)
        run.status, run.stage, run.worker, run.started_at = training.RUNNING, "loading data", worker[:256], utcnow()
        run.heartbeat_at = run.started_at
        return {"model": m.name, "dataset": run.dataset, "arch": m.arch, "arch_params": m.arch_params,
                "recipe": m.recipe, "input_shape": list(m.input_shape), "classes": list(m.classes)}


def _progress(s: Settings, run_id: str, stage: str, fraction: float) -> None:
    with session_scope(s.database_url) as db:
        run = db.get(TrainingRun, run_id)
        run.stage, run.progress, run.heartbeat_at = stage[:128], round(float(fraction), 4), utcnow()


def _split(store, split: str):
    """(ids, x, y, subject refs) of one split, read batch by batch through the store."""
    import numpy as np

    from app.datasets.formats import decode

    ids, xs, ys = [], [], []
    for table in store.batches(split, 8192):
        x, y = decode(table, store.schema)
        ids += table.column("instance_id").to_pylist()
        xs.append(x.astype(np.float32, copy=False))
        ys.append(y)
    refs = {iid: ref for iid, ref, _ in store.index(split)}
    return ids, np.concatenate(xs), np.concatenate(ys), [refs.get(i) for i in ids]


def run_training(run_id: str, *, settings: Settings | None = None, worker_name: str | None = None) -> str:
    """Returns "completed", "failed", or "done" (not queued: already taken or finished)."""
    s = settings or get_settings()
    worker = worker_name or f"{socket.gethostname()}:{os.getpid()}"
    spec = _claim(s, run_id, worker)
    if spec is None:
        return "done"
    t0 = time.perf_counter()
    try:
        sha, rel, metrics, rows = _train(s, run_id, spec, t0)
    except Exception as e:  # noqa: BLE001 - recorded on the run and the model
        log.exception("training run %s failed", run_id)
        _fail(s, run_id, spec, f"{e.__class__.__name__}: {e}\n{traceback.format_exc(limit=3)}"[:4000])
        return training.FAILED
    with session_scope(s.database_url) as db:
        version = training.publish_first_version(db, spec["model"], sha, rel, metrics, rows, spec["dataset"],
                                                 actor=f"training:{run_id}")
        registry.get_model(db, spec["model"]).status = MODEL_READY
        run = db.get(TrainingRun, run_id)
        run.status, run.stage, run.progress, run.finished_at, run.metrics = \
            training.COMPLETED, "completed", 1.0, utcnow(), metrics
        audit.append(db, actor=f"training:{run_id}", action="model.trained",
                     payload={"model": spec["model"], "run_id": run_id, "dataset": spec["dataset"],
                              "version": version, "sha256": sha, "metrics": metrics})
    log.info("training run %s: %s v1 ready (test accuracy %.2f %%, %.1f s)", run_id, spec["model"], metrics["ta"],
             metrics["train_seconds"])
    _risk_job(s, spec["model"], version)
    return training.COMPLETED


def _risk_job(s: Settings, model_name: str, version: int) -> None:
    """Every row's membership risk for the exact version just published (worker/risk.py), after
    the model is ready: the planner reads it, and a failure never fails the training run."""
    from .risk import run_risk_job

    try:
        run_risk_job(model_name, version, settings=s)
    except Exception:  # noqa: BLE001 - without risk rows the planner plans as before
        log.exception("risk job of %s v%s failed", model_name, version)


def _train(s: Settings, run_id: str, spec: dict, t0: float):
    import torch

    from app.datasets import service as datasets
    from models.checkpoint import save_checkpoint
    from models.device import get_device
    from models.train import Recipe, accuracy, train_model

    store = datasets.open_store(s, spec["dataset"])
    ids, x, y, refs = _split(store, "train")
    _, xte, yte, _ = _split(store, "test")
    recipe = Recipe.from_dict(spec["recipe"], arch=spec["arch"])
    with session_scope(s.database_url) as db:  # the pinned starting weights, digest checked (None: random init)
        start = starting.load(db, s, recipe.to_json())
    last = [0.0]

    def progress(stage: str, fraction: float) -> None:
        if time.monotonic() - last[0] > 0.5 or fraction >= 1.0:
            last[0] = time.monotonic()
            _progress(s, run_id, f"training ({stage})", 0.05 + 0.85 * fraction)

    _progress(s, run_id, f"training on {len(ids)} rows", 0.05)
    t_train = time.perf_counter()
    # the recipe's trainer (models/trainers.py); the held-out split is its early-stopping data
    model = train_model(spec["arch"], torch.from_numpy(x), torch.from_numpy(y), input_shape=spec["input_shape"],
                        num_classes=len(spec["classes"]), recipe=recipe, arch_params=spec["arch_params"],
                        device=get_device(), progress=progress, start=start,
                        heldout=(torch.from_numpy(xte), torch.from_numpy(yte)) if len(yte) else None)
    # the planner weighs this against an approximate job: the training alone, as a retrain repeats it
    train_s = round(time.perf_counter() - t_train, 2)
    _progress(s, run_id, "evaluating", 0.92)
    ta = float(accuracy(model, torch.from_numpy(xte), torch.from_numpy(yte)))
    tmp = registry.weights_tmp_path(registry.weights(s), spec["model"])
    sha = save_checkpoint(model.cpu(), tmp, arch=spec["arch"], dataset=spec["dataset"],
                          input_shape=spec["input_shape"], classes=spec["classes"], arch_params=spec["arch_params"],
                          extra={"training_run": run_id, "recipe": recipe.to_json()})
    rel = registry.publish_weights(registry.weights(s), spec["model"], tmp, sha)
    rows = _catalogue_rows(s, spec, ids, x, y, refs)
    metrics = {"ta": ta, "train_rows": len(ids), "test_rows": len(yte), "recipe": recipe.to_json(),
               "trainer": recipe.trainer, "trainer_metrics": model.lethe_train_metrics, "train_seconds": train_s, "seconds": round(time.perf_counter() - t0, 2)}
    return sha, rel, metrics, rows


def _catalogue_rows(s: Settings, spec: dict, ids, x, y, refs) -> list[dict]:
    """The model's catalogue: which dataset rows (and whose) it was trained on; a job reads
    their data from the dataset's store (``storage_uri``), nothing is copied."""
    from app.catalogue import service as catalogue
    from app.datasets import service as datasets

    root = datasets.store_dir(s, spec["dataset"])
    return [dict(model_name=spec["model"], instance_id=iid, dataset=spec["dataset"], subject_ref=refs[i],
                 label=int(y[i]), content_hash=catalogue.content_hash(x[i]), storage_uri=root)
            for i, iid in enumerate(ids)]


def _fail(s: Settings, run_id: str, spec: dict, error: str) -> None:
    with session_scope(s.database_url) as db:
        run = db.get(TrainingRun, run_id)
        run.status, run.stage, run.error, run.finished_at = training.FAILED, "failed", error, utcnow()
        registry.get_model(db, spec["model"]).status = MODEL_FAILED
        audit.append(db, actor=f"training:{run_id}", action="model.training_failed",
                     payload={"model": spec["model"], "run_id": run_id, "error": error.splitlines()[0][:500]})
