"""Retraining in the customer's own pipeline, end to end: a real gateway (embedded worker), a
model registered with trainer 'external', a deletion served approximately, a retrain order,
and the example pipeline (examples/external_pipeline/pipeline.py) as a separate process that
polls, trains with plain PyTorch and uploads. A run of it that trains on a stale copy holding
the erased rows is refused; the honest run makes the deletion exact."""
import io
import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import ROOT, auth, service_env, start_gateway

pytestmark = pytest.mark.slow
PIPELINE = os.path.join(ROOT, "examples", "external_pipeline", "pipeline.py")


def _cancer():
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = ((d.data - d.data.mean(0)) / d.data.std(0)).astype("float32")
    split = np.where(np.random.default_rng(0).random(len(x)) < 0.2, "test", "train")
    ids = [f"bc-{i:04d}" for i in range(len(x))]
    cols = {"instance_id": ids, "label": [str(d.target_names[t]) for t in d.target],
            "subject_id": [f"patient-{i // 20:04d}" for i in range(len(x))], "split": split}
    cols.update({f"f{j:02d}": x[:, j] for j in range(30)})
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue(), ids, x, d.target, split


def _wait(c, url, ok, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = c.get(url).json()
        if ok(body):
            return body
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting on {url}: {body}")


def _run_pipeline(url, key, *extra):
    out = subprocess.run([sys.executable, PIPELINE, "--url", url, "--key", key, "--model", "cancer-ext", "--once",
                          "--poll", "0.5", "--timeout", "300", *extra], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_customers_pipeline_makes_a_deletion_exact(tmp_path):
    import torch
    from safetensors.torch import save

    sys.path.insert(0, os.path.dirname(PIPELINE))
    import pipeline

    env = service_env(tmp_path, LETHE_BOOTSTRAP_DEMO="false", LETHE_RETRAIN_BELOW_S="0")
    proc, url = start_gateway(env, tmp_path)
    key = env["LETHE_BOOTSTRAP_ADMIN_KEY"]
    try:
        raw, ids, x, y, split = _cancer()
        with httpx.Client(base_url=url, headers=auth(env), timeout=120) as c:
            r = c.post("/v1/datasets", data={"name": "cancer", "classes": json.dumps(["malignant", "benign"])},
                       files={"file": ("cancer.parquet", raw, "application/octet-stream")})
            assert r.status_code in (201, 202), r.text
            _wait(c, "/v1/datasets/cancer", lambda b: b.get("status") == "ready")
            train = split == "train"
            params = {"epochs": 60, "lr": 0.01, "seed": 0}
            weights = save(pipeline.train(torch.tensor(x[train]), torch.tensor(y[train]), 2, params, [32]))
            r = c.post("/v1/models", data={"name": "cancer-ext", "arch": "mlp", "dataset": "cancer",
                                           "arch_params": json.dumps({"widths": [32]}),
                                           "recipe": json.dumps({"trainer": "external", "trainer_params": params})},
                       files={"weights": ("m.safetensors", weights, "application/octet-stream"),
                              "manifest": ("m.json", b'{"all_training_rows": true}', "application/json")})
            assert r.status_code == 201, r.text
            f = c.post("/v1/forget", json={"subject_id": "patient-0001", "model": "cancer-ext"})
            assert f.status_code == 202, f.text
            rid = f.json()["id"]
            done = _wait(c, f"/v1/forget/{rid}", lambda b: b["status"] in ("completed", "failed"))
            assert done["status"] == "completed" and done["exact_version"] is None, done
            order = c.post("/v1/models/cancer-ext/retrain-orders").json()
            assert order["status"] == "open" and order["erased_rows"] > 0, order
            # the team's stale copy of its training rows, erased ones included, in the snapshot's format
            stale = tmp_path / "stale.parquet"
            pq.write_table(pa.table({"instance_id": [i for i, t in zip(ids, train) if t],
                                     "label": pa.array(y[train], pa.int64()),
                                     "features": pa.FixedSizeListArray.from_arrays(pa.array(x[train].reshape(-1)),
                                                                                   30)}), stale)
            bad = _run_pipeline(url, key, "--include-erased-from", str(stale))
            assert bad["status"] == 422 and "erased row" in bad["answer"]["detail"], bad
            good = _run_pipeline(url, key)
            assert good["status"] == 200 and good["answer"]["status"] == "fulfilled", good
            v = good["answer"]["version"]
            assert c.get(f"/v1/forget/{rid}").json()["exact_version"] == v
            card = c.get(f"/v1/models/cancer-ext/versions/{v}").json()
            assert card["exact"] is True and card["job"]["method"] == "external"
            cert = c.get(f"/v1/forget/{rid}/certificate").json()["certificate"]
            assert cert["exact_version"]["version"] == v
    except Exception:
        print(proc.tail(8000))
        raise
    finally:
        proc.stop()
