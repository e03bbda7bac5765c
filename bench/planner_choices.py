"""The planner's choices: ``python -m bench.completion`` (``--planner-only``, ``--choices-only``).

The pure planner (``app.jobs.planner.plan``) for digits, mnist5k and adult at k in {1, 8, 32,
128, 1000}, with each demo model's training time on record (``recorded_train_seconds``; else
timed here with the default recipe, seed 0, ``models.train.train_model``) and no approximate
history (a model's first job), default settings; then each choice against always-retrain and
always-approximate, with the quality and time the instance benchmark measured for that
(dataset, k) (``choices_table``: rows of ``bench/results/instance.json``, nothing rerun;
"not measured" where it has none).
"""
from __future__ import annotations

import json
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KS = (1, 8, 32, 128, 1000)


def recorded_train_seconds(service_row: dict | None) -> dict:
    """Each demo dataset's training time on record: the median ``retrain_seconds`` of
    ``bench/results/instance.json`` (the demo recipe, measured under the bench lock), else the
    service run's version 1 ``train_seconds``. {dataset: (seconds, source)}."""
    import statistics

    out = {}
    path = os.path.join(ROOT, "bench", "results", "instance.json")
    if os.path.exists(path):
        with open(path) as f:
            rows = json.load(f)["rows"]
        for name in ("digits", "mnist5k", "adult"):
            times = [r["retrain_seconds"] for r in rows if r["dataset"] == name and r["method"] == "retrain"]
            if times:
                out[name] = (round(statistics.median(times), 2), f"median retrain_seconds of {len(times)} "
                                                                 "bench/results/instance.json rows")
    if service_row and service_row.get("train_seconds_v1") and service_row["dataset"] not in out:
        out[service_row["dataset"]] = (service_row["train_seconds_v1"], "this run's v1 train_seconds (bootstrap)")
    return out


def planner_table(recorded: dict) -> list[dict]:
    """The pure planner's choice per demo dataset and k, from the training time on record
    (``recorded``), else one timed here (default recipe, seed 0)."""
    from app.jobs import planner
    from app.settings import Settings
    from models.data import DEFAULT_ARCH, load_dataset
    from models.train import train_model
    from models.unlearn import get_family, resolve

    s = Settings()
    method = resolve(get_family("instance").default_method, has_retained_data=True).name
    rows = []
    for name in ("digits", "mnist5k", "adult"):
        train_s, source = recorded.get(name, (None, None))
        if train_s is None:
            ds = load_dataset(name)
            t0 = time.perf_counter()
            train_model(DEFAULT_ARCH[ds.name], ds.x_train, ds.y_train, input_shape=ds.input_shape,
                        num_classes=len(ds.classes), seed=0)
            train_s, source = round(time.perf_counter() - t0, 2), "train_model timed here"
        for k in KS:
            f = planner.Facts(sharded=False, method=method, k=k, has_retained=True, train_seconds=train_s,
                              max_approx_instances=s.max_approx_instances, retrain_below_s=s.retrain_below_s)
            p = planner.plan(f)
            rows.append({"dataset": name, "train_seconds": train_s, "train_seconds_from": source, "k": k,
                         "method": p.method, "exact": p.exact, "reason": p.reason})
    return rows


INSTANCE = os.path.join(ROOT, "bench", "results", "instance.json")


def instance_rows() -> dict:
    with open(INSTANCE) as f:
        return json.load(f)


def instance_source() -> str:
    d = instance_rows()
    return (f"bench/results/instance.json, run of {d.get('started', '?')} on {d.get('machine', '?')}"
            + (", a partial run" if d.get("partial") else ""))


def choices_table(planner_rows: list[dict], instance: dict) -> list[dict]:
    """The planner's choice per (dataset, k) against always-retrain and always-approximate,
    from the instance benchmark's measured rows (``bench/results/instance.json``; nothing is
    rerun): ``retrain`` (training seed 0, the served recipe) and the service default
    (``default_method``: Lethe's method, objective retrain_like), one row per forget-set seed.
    The planner's figures are those of the way it chose (its verification fallback is not
    exercised there: the benchmark has no gate). None where a (dataset, k) has no row."""
    import statistics as st

    rows, default = instance["rows"], instance.get("default_method", "lethe_retrain_like")

    def measured(ds, k, method):
        rs = [r for r in rows if r["dataset"] == ds and str(r["scenario"]) == str(k) and r["method"] == method
              and (method != "retrain" or r.get("train_seed", 0) == 0)]
        if not rs:
            return None
        return {"seeds": sorted({r["seed"] for r in rs}), "ta": round(st.mean(r["ta"] for r in rs), 2),
                "seconds": round(st.mean(r["seconds"] for r in rs), 2),
                "d_uauc": round(st.mean(r["ulira_auc"] - r["retrain_ulira_auc"] for r in rs), 3),
                "avg_gap": round(st.mean(r["avg_gap"] for r in rs), 2),
                "converged": sum(bool(r["converged"]) for r in rs)}

    out = []
    for p in planner_rows:
        retrain, approx = measured(p["dataset"], p["k"], "retrain"), measured(p["dataset"], p["k"], default)
        out.append({"dataset": p["dataset"], "k": p["k"], "method": p["method"], "exact": p["exact"],
                    "reason": p["reason"], "approximate_method": default, "retrain": retrain,
                    "approximate": approx, "planner": retrain if p["exact"] else approx})
    return out
