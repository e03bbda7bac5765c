"""The risk job: every training row's membership risk for one exact version (models/risk.py).

Run by the worker once an exact version is published (a training run's version 1, a job that
retrained): ``LETHE_RISK_REFERENCE_MODELS`` reference models train with the model's own recipe on
complementary halves of its retained rows (LiRA's offline calibration, Carlini et al. 2022), and
each row's risk (effect size of being trained on it) and gap (its own target drop for the
approximate method) are stored in ``membership_risks``. The version's metrics gain a summary
(``membership_risk``: quantiles, rows at or above ``LETHE_RISK_THRESHOLD``, the job's cost in
seconds and as a multiple of the model's training run, when it ran), which ``GET
/v1/models/{name}/versions`` and the version's card (``membership_risk``) show. The planner (app/jobs/planner.py) reads the rows of the newest version that has them. A
new exact version is measured again only once ``LETHE_RISK_RECOMPUTE_FRACTION`` of the rows last
measured is gone (a retrain without a few rows changes little else; the job costs trainings).
"""
from __future__ import annotations

import dataclasses
import logging
import time

from sqlalchemy import delete

from app.catalogue.retained import all_retained_arrays
from app.db import session_scope, utcnow
from app.registry import service as registry
from app.registry import starting
from app.registry.models import RowRisk
from app.settings import Settings, get_settings

log = logging.getLogger("lethe.risk")


def run_risk_job(model_name: str, version: int, *, settings: Settings | None = None) -> dict | None:
    """Measure and store the risk of every retained row of `model_name` for exact `version`;
    returns the summary recorded on the version (None when the job does not apply)."""
    import torch

    from models.device import get_device
    from models.risk import membership_risk
    from models.train import train_model

    s = settings or get_settings()
    if not s.risk_reference_models:
        return None
    with session_scope(s.database_url) as db:
        model, v = registry.get_model(db, model_name), registry.get_version(db, model_name, version)
        if model is None or v is None or not v.exact or v.status != "READY" or model.family != "instance":
            return None  # approximate versions inherit the last exact one's risk; sharded models retrain shards
        arch, shape, n_cls, params = model.arch, model.input_shape, len(model.classes), model.arch_params
        recipe = registry.recipe_of(model)
        if recipe.trainer == "external":
            return None  # trained by the customer's pipeline: Lethe cannot train its reference models
        start = starting.load(db, s, recipe.to_json())  # reference models start where the model's training does
        first = registry.get_version(db, model_name, 1)
        train_s = ((first.metrics or {}).get("train_seconds") if first else None) or (v.metrics or {}).get("seconds")
        x, y, ids = all_retained_arrays(db, model_name, exclude=set(), with_ids=True)
        measured, rows = registry.risk_coverage(db, model_name)
        if measured is not None and measured != version and rows and \
                len(set(ids) & rows) >= (1 - s.risk_recompute_fraction) * len(rows) and s.risk_recompute_fraction:
            # the model changed too little: the rows measured on `measured` still stand for it
            v.metrics = {**(v.metrics or {}), "membership_risk": {"measured_on_version": measured,
                                                                 "rows_still_here": len(set(ids) & rows)}}
            return None
    if len(ids) < 4:
        return None

    def fit(xs, ys, seed):
        return train_model(arch, xs, ys, input_shape=shape, num_classes=n_cls, arch_params=params,
                           recipe=dataclasses.replace(recipe, seed=seed), device=get_device(), start=start)

    t, c = time.perf_counter(), time.process_time()
    r = membership_risk(fit, torch.from_numpy(x), torch.from_numpy(y), s.risk_reference_models,
                        seed=1000 * version + int(recipe.seed or 0))
    seconds = time.perf_counter() - t
    summary = {**r.summary(s.risk_threshold), "computed_at": utcnow().isoformat(), "seconds": round(seconds, 2),
               "cpu_seconds": round(time.process_time() - c, 2),
               "training_runs": round(seconds / train_s, 2) if train_s else None}
    with session_scope(s.database_url) as db:
        db.execute(delete(RowRisk).where(RowRisk.model_name == model_name, RowRisk.version == version))
        db.add_all([RowRisk(model_name=model_name, version=version, instance_id=i, risk=float(rk), gap=float(g))
                    for i, rk, g in zip(ids, r.risk, r.gap)])
        v = registry.get_version(db, model_name, version)
        v.metrics = {**(v.metrics or {}), "membership_risk": summary}
    log.info("risk job %s v%d: %d rows, %d at or above %.2f, %.1f s (%.1fx training)", model_name, version,
             summary["rows"], summary["rows_above_threshold"], s.risk_threshold, seconds,
             summary["training_runs"] or float("nan"))
    return summary
