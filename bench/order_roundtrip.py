"""Benchmark: the external-pipeline round trip of a retrain order, in one process.

    python -m bench.order_roundtrip                  # seeds 0-2

A model registered with trainer ``external`` (the bring-your-own breast-cancer MLP, trained
outside Lethe with the example pipeline's plain PyTorch loop) has one patient's rows
deleted approximately; then a retrain order is issued and the example pipeline
(examples/external_pipeline/pipeline.py: claim, snapshot download and digest check, training,
upload of weights and ids) answers it against the service (FastAPI's TestClient: the real
routes, verification and publishing transaction, no network). ``seconds`` = order issued ->
exact version published; ``train_seconds`` = the pipeline's training alone. ``accuracy`` =
held-out accuracy of the published exact version, ``original_accuracy`` = version 1's.

Merges its rows (trainer ``external``) into bench/results/trainers.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "trainers.json")


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def one(seed: int) -> dict:
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from fastapi.testclient import TestClient
    from safetensors.torch import save

    from app import security
    from app.db import migrate, session_scope
    from app.main import create_app
    from app.settings import Settings
    from worker import driver

    pipeline = _load("examples/external_pipeline/pipeline.py", "lethe_example_pipeline")
    tmp = tempfile.mkdtemp(prefix="lethe-order-bench-")
    s = Settings(registry_dir=f"{tmp}/registry", data_dir=f"{tmp}/data", subject_secret="bench-secret",
                 broker_url="", bootstrap_demo=False, embedded_worker=False, database_url=f"sqlite:///{tmp}/l.db",
                 sweeper_interval_s=0, webhook_poll_s=0, audit_checkpoint_poll_s=0, audit_drain_s=0,
                 retrain_below_s=0, risk_reference_models=0)
    migrate(s)
    with session_scope(s.database_url) as db:
        key = security.create_key(db, "bench", security.SCOPES, actor="bench")[1]
    sent = []

    class Dispatcher:
        def dispatch(self, job_id):
            sent.append(job_id)

        def dispatch_training(self, run_id):
            pass

        def ready(self):
            return True, "ok"

    from sklearn.datasets import load_breast_cancer
    import pyarrow as pa

    d = load_breast_cancer()
    x = ((d.data - d.data.mean(0)) / d.data.std(0)).astype("float32")
    split = np.where(np.random.default_rng(0).random(len(x)) < 0.2, "test", "train")
    cols = {"instance_id": [f"bc-{i:04d}" for i in range(len(x))], "label": [str(d.target_names[t]) for t in d.target],
            "subject_id": [f"patient-{i // 20:04d}" for i in range(len(x))], "split": split}
    cols.update({f"f{j:02d}": x[:, j] for j in range(30)})
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    params = {"epochs": 60, "lr": 0.01, "seed": seed}
    with TestClient(create_app(s, dispatcher=Dispatcher()), headers={"Authorization": f"Bearer {key}"}) as c:
        r = c.post("/v1/datasets", data={"name": "cancer", "classes": json.dumps(["malignant", "benign"])},
                   files={"file": ("c.parquet", buf.getvalue(), "application/octet-stream")})
        assert r.status_code == 201, r.text
        train = split == "train"
        w = save(pipeline.train(torch.tensor(x[train]), torch.tensor(d.target[train]), 2, params, [32]))
        r = c.post("/v1/models", data={"name": "cancer-ext", "arch": "mlp", "dataset": "cancer",
                                       "arch_params": json.dumps({"widths": [32]}),
                                       "recipe": json.dumps({"trainer": "external", "trainer_params": params})},
                   files={"weights": ("m.safetensors", w, "application/octet-stream"),
                          "manifest": ("m.json", b'{"all_training_rows": true}', "application/json")})
        assert r.status_code == 201, r.text
        f = c.post("/v1/forget", json={"subject_id": f"patient-{seed + 1:04d}", "model": "cancer-ext"})
        assert f.status_code == 202, f.text
        assert driver.execute_job(sent[-1], settings=s, worker_name="bench") == "completed"
        original = c.get("/v1/models/cancer-ext/versions/1").json()["metrics"]
        t0 = time.perf_counter()
        order = c.post("/v1/models/cancer-ext/retrain-orders").json()
        t_train = [0.0]
        real_train = pipeline.train

        def timed(*a, **kw):
            t = time.perf_counter()
            out = real_train(*a, **kw)
            t_train[0] += time.perf_counter() - t
            return out

        pipeline.train = timed
        status, body = pipeline.answer(c, order, None)
        seconds = time.perf_counter() - t0
        assert status == 200 and body["status"] == "fulfilled", body
        card = c.get(f"/v1/models/cancer-ext/versions/{body['version']}").json()
    return {"model": "cancer-mlp", "trainer": "external", "seed": seed, "accuracy": round(card["metrics"]["ta"], 3),
            "original_accuracy": round(original.get("ta", float("nan")), 3), "seconds": round(seconds, 2),
            "train_seconds": round(t_train[0], 2), "train_rows": order["snapshot"]["rows"],
            "forget_rows": order["erased_rows"], "what": "order issued -> exact version published",
            # the sealed erased rows scored on the upload (app/registry/probes.py, orders.membership)
            "membership": {k: card["metrics"]["forget_membership"].get(k) for k in
                           ("verdict", "rows", "auc", "p_value", "members_auc", "members_p_value")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    rows = []
    for seed in a.seeds:
        rows.append(one(seed))
        print(json.dumps(rows[-1]), flush=True)
    if not a.no_write:
        doc = json.load(open(RESULTS))
        doc["rows"] = [r for r in doc["rows"] if r["trainer"] != "external"] + rows
        with open(RESULTS, "w") as f:
            json.dump(doc, f, indent=1)
        from bench.trainers import render

        render(doc["rows"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
