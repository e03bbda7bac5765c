"""Bring your own data and model to Lethe, end to end, over HTTP only.

    LETHE_URL=http://127.0.0.1:8000 LETHE_API_KEY=$(cat var/admin.key) \\
        python examples/bring_your_own/walkthrough.py [workdir]

1. A dataset Lethe does not ship: scikit-learn's bundled Wisconsin breast-cancer table
   (569 patients' tumour measurements, 30 features, malignant/benign) becomes the Parquet
   file a data team would hand over: ``instance_id``, ``label``, ``subject_id`` (here a
   patient owns two rows), ``split`` (a held-out test split) and the features.
2. It is registered with ``POST /v1/datasets``.
3. A model is trained on it OUTSIDE Lethe, in plain PyTorch (the code below, no Lethe
   import), with the layout of Lethe's ``mlp`` architecture (``body`` + ``head``), and saved
   as safetensors.
4. It is registered with ``POST /v1/models``: the weights, the architecture and its
   parameters, the recipe it was trained with (retraining uses it), the dataset, and a
   manifest of the training rows. A second model is trained by Lethe itself on the same
   data (``POST /v1/models/{name}/train``), so the patient's data is now in two models.
5. One patient is forgotten with ``POST /v1/forget`` naming no model: Lethe finds every
   model trained on the patient's rows, runs a job per model, and issues one certificate.
6. The walk-through checks that the patient's predictions changed in both models and that
   the certificate names each model and version, and verifies its signature.

Only ``httpx``, ``numpy``, ``pyarrow``, ``scikit-learn``, ``safetensors``, ``torch`` and
``cryptography`` are used (no Lethe code); ``run(url, api_key, workdir)`` is what the test calls (tests/e2e/test_bring_your_own.py).
"""
from __future__ import annotations

import json
import os
import sys
import time

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

DATASET = "breast-cancer"
OWN_MODEL, LETHE_MODEL = "cancer-mlp-own", "cancer-mlp-lethe"
PATIENT = "patient-0007"
RECIPE = {"optimizer": "adam", "lr": 0.003, "epochs": 15, "batch_size": 32, "weight_decay": 0.0, "seed": 0}


def make_table() -> pa.Table:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = ((d.data - d.data.mean(0)) / d.data.std(0)).astype(np.float32)
    n = len(x)
    split = np.where(np.random.default_rng(42).random(n) < 0.2, "test", "train")
    cols = {"instance_id": [f"bc-{i:04d}" for i in range(n)],
            "label": [str(d.target_names[t]) for t in d.target],   # "malignant" / "benign"
            "subject_id": [f"patient-{i // 2:04d}" for i in range(n)],
            "split": split}
    cols.update({name.replace(" ", "_"): x[:, j] for j, name in enumerate(d.feature_names)})
    return pa.table(cols)


class MyMLP(nn.Module):
    """The user's own network, in plain PyTorch: 30 -> 32 -> 16 -> 2, laid out like Lethe's
    ``mlp`` architecture (``body`` then ``head``), so arch "mlp" with widths [32, 16] fits."""

    def __init__(self, d: int, classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.body(x))


def train_outside_lethe(table: pa.Table, classes: list[str]):
    """Plain PyTorch training with RECIPE on the rows of the training split."""
    df = table.to_pandas()
    train = df[df.split == "train"]
    feats = [c for c in df.columns if c not in ("instance_id", "label", "subject_id", "split")]
    x = torch.tensor(train[feats].to_numpy(np.float32))
    y = torch.tensor([classes.index(v) for v in train.label])
    torch.manual_seed(RECIPE["seed"])
    model = MyMLP(x.shape[1], len(classes))
    opt = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    g = torch.Generator().manual_seed(RECIPE["seed"])
    for _ in range(RECIPE["epochs"]):
        order = torch.randperm(len(x), generator=g)
        for k in range(0, len(x), RECIPE["batch_size"]):
            idx = order[k:k + RECIPE["batch_size"]]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval(), list(train.instance_id), list(train.subject_id), feats


def _ok(r: httpx.Response, *codes: int) -> dict:
    if r.status_code not in (codes or (200,)):
        raise RuntimeError(f"{r.request.method} {r.request.url.path} -> {r.status_code}: {r.text}")
    return r.json()


def _predict(api: httpx.Client, model: str, rows: list[list[float]]) -> list[int]:
    return [p["label"] for p in _ok(api.post(f"/v1/models/{model}/predict", json={"inputs": rows}))["predictions"]]


def run(url: str, api_key: str, workdir: str, log=print, timeout_s: float = 900) -> dict:
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120)
    classes = ["malignant", "benign"]

    # 1-2. the dataset, as Parquet, registered with Lethe
    table = make_table()
    os.makedirs(workdir, exist_ok=True)
    parquet = os.path.join(workdir, "breast_cancer.parquet")
    pq.write_table(table, parquet)
    with open(parquet, "rb") as f:
        ds = _ok(api.post("/v1/datasets", data={"name": DATASET, "classes": json.dumps(classes)},
                          files={"file": ("breast_cancer.parquet", f, "application/octet-stream")}), 201)
    log(f"dataset {DATASET}: {ds['splits']} rows, {ds['subjects']} subjects")

    # 3. a model trained outside Lethe, saved as safetensors (never a pickle)
    from safetensors.torch import save_file

    model, train_ids, train_subjects, feats = train_outside_lethe(table, classes)
    weights = os.path.join(workdir, "model.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)

    # 4. registered: weights + architecture + parameters + recipe + the rows it was trained on
    manifest = {"instances": [{"instance_id": i, "subject_id": s} for i, s in zip(train_ids, train_subjects)]}
    with open(weights, "rb") as f:
        reg = _ok(api.post("/v1/models", data={"name": OWN_MODEL, "arch": "mlp", "dataset": DATASET,
                                              "arch_params": json.dumps({"widths": [32, 16]}),
                                              "recipe": json.dumps(RECIPE)},
                           files={"weights": ("model.safetensors", f, "application/octet-stream"),
                                  "manifest": ("manifest.json", json.dumps(manifest), "application/json")}), 201)
    log(f"registered {OWN_MODEL} v{reg['version']} (test accuracy {reg['test_accuracy']:.1f} %)")
    _ok(api.post(f"/v1/models/{LETHE_MODEL}/train", json={"dataset": DATASET, "arch": "mlp",
                                                          "arch_params": {"widths": [64]}, "recipe": RECIPE}), 202)
    deadline = time.time() + timeout_s
    while True:
        run_ = _ok(api.get(f"/v1/models/{LETHE_MODEL}/training"))[-1]
        if run_["status"] in ("completed", "failed") or time.time() > deadline:
            break
        time.sleep(0.5)
    if run_["status"] != "completed":
        raise RuntimeError(f"training {LETHE_MODEL}: {run_}")
    log(f"Lethe trained {LETHE_MODEL} v1 (test accuracy {run_['metrics']['ta']:.1f} %)")

    # 5. the patient's rows (the user's own copy) and their predictions before
    df = table.to_pandas()
    mine = df[(df.subject_id == PATIENT) & (df.split == "train")]
    rows = mine[feats].to_numpy(np.float32).tolist()
    truth = [classes.index(v) for v in mine.label]
    before = {m: _predict(api, m, rows) for m in (OWN_MODEL, LETHE_MODEL)}
    erasure = _ok(api.post("/v1/forget", json={"subject_id": PATIENT, "objective": "misclassify"},
                           headers={"Idempotency-Key": f"erase-{PATIENT}"}), 202)
    log(f"erasure {erasure['id']}: {[(m['model'], m['status']) for m in erasure['requests']]}")
    while True:
        view = _ok(api.get(f"/v1/erasures/{erasure['id']}"))
        if view["status"] not in ("queued", "running") or time.time() > deadline:
            break
        time.sleep(0.5)
    if view["status"] != "completed":
        raise RuntimeError(f"erasure did not complete: {view}")

    # 6. checked: predictions changed in every model; one certificate names each model + version
    after = {m: _predict(api, m, rows) for m in (OWN_MODEL, LETHE_MODEL)}
    signed = _ok(api.get(f"/v1/erasures/{erasure['id']}/certificate"))
    cert = signed["certificate"]
    ok = verify_signature(signed, _ok(api.get("/v1/keys/audit"))["public_key_pem"])
    for m in (OWN_MODEL, LETHE_MODEL):
        log(f"{m}: true {truth}, before {before[m]}, after {after[m]}")
    log("certificate: " + ", ".join(f"{m['model']} v{m['version_before']['version']} -> v{m['version_after']['version']}"
                                    for m in cert["models"]) + f"; signature valid: {ok}")
    return {"before": before, "after": after, "truth": truth, "certificate": cert, "signature_ok": ok,
            "erasure": view}


def verify_signature(signed: dict, public_key_pem: str) -> bool:
    """What an auditor does with no Lethe code: the Ed25519 signature over the exact signed
    text, and that text says what the readable certificate says (``lethe certificate verify``
    does the same)."""
    import base64

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(public_key_pem.encode())
    try:
        key.verify(base64.b64decode(signed["signature"]["value"]), signed["canonical"].encode())
    except InvalidSignature:
        return False
    return json.loads(signed["canonical"]) == signed["certificate"]


if __name__ == "__main__":
    out = run(os.environ.get("LETHE_URL", "http://127.0.0.1:8000"), os.environ["LETHE_API_KEY"],
              sys.argv[1] if len(sys.argv) > 1 else "./byo-work")
    sys.exit(0 if out["signature_ok"] and all(out["after"][m] != out["before"][m] for m in out["after"]) else 1)
