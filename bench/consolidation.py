"""The continual sequence with consolidation against retraining: ``python -m bench.completion
--consolidation`` (or ``--consolidation-only``).

In process (SQLite, the job lifecycle the workers run, ``worker.driver.execute_job``): the demo
model of ``--cons-dataset`` is trained (``bootstrap_demo``), then ``--cons-requests`` requests of
``--cons-k`` random instances (forget-set seed ``--cons-seed``) are each served approximately
(the planner kept from retraining: ``LETHE_RETRAIN_BELOW_S=0``), then one consolidation job
(``POST /v1/models/{name}/consolidate``'s service) retrains from scratch. Test accuracy and the
accuracy on every instance forgotten so far, of the served model after the sequence and after
the consolidation, against retraining from scratch on the same retained rows with two other
training seeds.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time


def run_consolidation(dataset: str, requests: int, k: int, seed: int) -> dict:
    """The sequence served approximately, then one consolidation job, against retraining."""
    import dataclasses

    import numpy as np
    import torch

    from app.bootstrap import bootstrap_demo
    from app.catalogue import service as catalogue
    from app.catalogue.retained import all_retained_arrays
    from app.cli import migrate
    from app.db import session_scope
    from app.forget.schemas import ForgetCreate
    from app.forget.service import submit
    from app.jobs import consolidation
    from app.registry import service as registry
    from app.settings import Settings
    from models.data import load_dataset
    from models.train import accuracy, train_model
    from worker import driver

    tmp = tempfile.mkdtemp(prefix="lethe-consolidation-")
    s = Settings(database_url=f"sqlite:///{tmp}/lethe.db", registry_dir=os.path.join(tmp, "registry"),
                 data_dir=os.path.join(tmp, "data"), broker_url="", embedded_worker=False, demo_dataset=dataset,
                 demo_exact_dataset="", retrain_below_s=0, consolidate_after_instances=0,
                 consolidate_after_versions=0, sweeper_interval_s=0, webhook_poll_s=0)
    try:
        migrate(s)
        t0 = time.perf_counter()
        model = bootstrap_demo(s)
        boot_s = time.perf_counter() - t0
        ds = load_dataset(dataset)
        xt, yt = ds.x_test, ds.y_test

        def served():
            with session_scope(s.database_url) as db:
                v = registry.resolve_alias(db, model)
                net, _ = registry.load_version(registry.weights(s), v)
                return v.version, v.exact, net

        def forgotten_arrays(ids):
            with session_scope(s.database_url) as db:
                rows = catalogue.by_ids(db, model, ids)
                return catalogue.load_arrays([rows[i] for i in ids])

        with session_scope(s.database_url) as db:
            live = [r.instance_id for r in catalogue.retained(db, model, set())]
        rng = np.random.default_rng(seed)
        chosen = [str(i) for i in rng.choice(live, requests * k, replace=False)]
        # keep the forget rows before they are erased from the store (a job deletes raw data)
        fx, fy = forgotten_arrays(chosen)
        fx, fy = torch.from_numpy(fx), torch.from_numpy(fy)
        steps = []
        t_seq = time.perf_counter()
        for n in range(requests):
            ids = chosen[n * k:(n + 1) * k]
            with session_scope(s.database_url) as db:
                req, _, _ = submit(db, s, ForgetCreate(model=model, instance_ids=ids), idempotency_key=None,
                                   actor="bench")
                job_id = req.job_id
            t = time.perf_counter()
            outcome = driver.execute_job(job_id, settings=s, worker_name="bench")
            version, exact, net = served()
            steps.append({"request": n + 1, "outcome": outcome, "version": version, "exact": exact,
                          "seconds": round(time.perf_counter() - t, 2),
                          "ta": round(accuracy(net, xt, yt), 2),
                          "forgotten_acc": round(accuracy(net, fx[:(n + 1) * k], fy[:(n + 1) * k]), 2)})
            print(f"  request {n + 1}: {outcome} v{version} exact={exact} ta={steps[-1]['ta']}", flush=True)
        seq_s = time.perf_counter() - t_seq
        with session_scope(s.database_url) as db:
            debt = consolidation.Debt.of(registry.resolve_alias(db, model)).to_json()
            job, _ = consolidation.request(db, model, actor="bench", reason="bench: after the sequence")
            cons_id = job.id
        t = time.perf_counter()
        outcome = driver.execute_job(cons_id, settings=s, worker_name="bench")
        cons_s = time.perf_counter() - t
        version, exact, net = served()
        after = {"outcome": outcome, "version": version, "exact": exact, "seconds": round(cons_s, 2),
                 "ta": round(accuracy(net, xt, yt), 2), "forgotten_acc": round(accuracy(net, fx, fy), 2)}
        # retraining from scratch on the same retained rows, two other training seeds
        with session_scope(s.database_url) as db:
            m = registry.get_model(db, model)
            recipe, arch, shape, classes = registry.recipe_of(m), m.arch, tuple(m.input_shape), len(m.classes)
            rx, ry = all_retained_arrays(db, model, exclude=set())
        refs = []
        for train_seed in (recipe.seed + 1, recipe.seed + 2):
            t = time.perf_counter()
            ref = train_model(arch, torch.from_numpy(rx), torch.from_numpy(ry), input_shape=shape,
                              num_classes=classes, recipe=dataclasses.replace(recipe, seed=train_seed))
            refs.append({"train_seed": train_seed, "seconds": round(time.perf_counter() - t, 2),
                         "ta": round(accuracy(ref, xt, yt), 2), "forgotten_acc": round(accuracy(ref, fx, fy), 2)})
        ref_ta = sum(r["ta"] for r in refs) / len(refs)
        last = steps[-1]
        return {"dataset": dataset, "model": model, "requests": requests, "k": k, "forget_seed": seed,
                "retained_rows": int(len(ry)), "bootstrap_seconds": round(boot_s, 1),
                "sequence_seconds": round(seq_s, 1), "debt_before": debt, "steps": steps,
                "approximate": {"ta": last["ta"], "forgotten_acc": last["forgotten_acc"],
                                "gap_pt": round(last["ta"] - ref_ta, 2)},
                "consolidated": {**after, "gap_pt": round(after["ta"] - ref_ta, 2)},
                "retrain": refs, "retrain_ta_mean": round(ref_ta, 2),
                "within_1pt": abs(after["ta"] - ref_ta) <= 1.0}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
