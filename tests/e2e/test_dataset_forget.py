"""A user's own data end to end, over HTTP with the real (embedded) worker: a real table
Lethe does not ship (scikit-learn's breast-cancer data) registered as Parquet, a model
trained on it outside Lethe registered as safetensors, a subject forgotten, and the
subject's feature bytes searched for in every file under the data directory: none left."""
from __future__ import annotations

import datetime as dt
import io
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fastapi.testclient import TestClient

from app.db import migrate
from app.main import create_app
from app.settings import Settings

from .flow import files_holding


pytestmark = pytest.mark.slow


def _wait(c, url, done, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = c.get(url).json()
        if done(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"{url} not finished: {body}")


def test_register_parquet_forget_a_subject_bytes_gone(tmp_path):
    from safetensors.torch import save
    from sklearn.datasets import load_breast_cancer

    from models.train import accuracy, train_model

    s = Settings(database_url=f"sqlite:///{tmp_path}/lethe.db", registry_dir=str(tmp_path / "registry"),
                 data_dir=str(tmp_path / "data"), subject_secret="e2e-secret", broker_url="", bootstrap_demo=False,
                 embedded_worker=True, sweeper_interval_s=0.5, webhook_poll_s=0, erase_within_s=3.0,
                 risk_reference_models=0)
    migrate(s)
    # the user's table: 569 patients, 30 numeric features (standardised), one subject per patient
    d = load_breast_cancer()
    x = ((d.data - d.data.mean(0)) / d.data.std(0)).astype(np.float32)
    n = len(x)
    split = np.where(np.random.default_rng(0).random(n) < 0.2, "test", "train")
    cols = {"instance_id": [f"patient-{i:04d}" for i in range(n)], "label": [d.target_names[t] for t in d.target],
            "subject_id": [f"person-{i}" for i in range(n)], "split": split.tolist()}
    cols.update({name.replace(" ", "_"): x[:, j] for j, name in enumerate(d.feature_names)})
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)

    from app import security
    from app.db import session_scope

    with session_scope(s.database_url) as db:
        key = security.create_key(db, "e2e", security.SCOPES, actor="test")[1]
    with TestClient(create_app(s), headers={"Authorization": f"Bearer {key}"}) as c:
        r = c.post("/v1/datasets", data={"name": "clinic", "classes": json.dumps(list(d.target_names))},
                   files={"file": ("clinic.parquet", buf.getvalue())})
        assert r.status_code == 201, r.text
        info = c.get("/v1/datasets/clinic").json()
        assert info["status"] == "ready" and info["schema"]["shape"] == [30] and info["subjects"] == n
        assert info["splits"] == {"train": int((split == "train").sum()), "test": int((split == "test").sum())}

        # a model trained outside Lethe, in plain PyTorch, on the training rows
        tr = split == "train"
        xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(d.target[tr].astype(np.int64))
        net = train_model("mlp", xt, yt, input_shape=(30,), num_classes=2, seed=0, epochs=30)
        assert accuracy(net, torch.from_numpy(x[~tr]), torch.from_numpy(d.target[~tr].astype(np.int64))) > 90
        ids = [cols["instance_id"][i] for i in np.nonzero(tr)[0]]
        manifest = {"instances": [{"instance_id": i} for i in ids]}  # subjects come from the dataset
        r = c.post("/v1/models", data={"name": "clinic-mlp", "arch": "mlp", "dataset": "clinic"},
                   files={"weights": ("m.safetensors", save({k: v.contiguous() for k, v in net.state_dict().items()})),
                          "manifest": ("m.json", json.dumps(manifest).encode())})
        assert r.status_code == 201, r.text
        assert c.get("/v1/datasets/clinic").json()["models"] == ["clinic-mlp"]

        victim = int(np.nonzero(tr)[0][7])
        pattern = x[victim].tobytes()  # the row's 30 float32 features, as the store holds them
        assert files_holding(s.data_dir, pattern)  # the check can fail: the bytes are on disk now
        r = c.post("/v1/forget", json={"model": "clinic-mlp", "subject_id": f"person-{victim}",
                                       "objective": "misclassify"})
        assert r.status_code == 202, r.text
        done = _wait(c, f"/v1/forget/{r.json()['id']}", lambda b: b["status"] in ("completed", "failed"))
        assert done["status"] == "completed", done
        assert done["metrics"]["ua"] == 100.0
        inst = c.get(f"/v1/subjects/person-{victim}/instances").json()["instances"]
        assert [(i["erased"], i["raw_data_deleted"]) for i in inst] == [(True, True)]
        # hidden from every read at once; its bytes go with the batched compaction the sweeper
        # runs once the oldest hidden row is half of LETHE_ERASE_WITHIN_S old
        cert = c.get(f"/v1/forget/{r.json()['id']}/certificate").json()["certificate"]
        hidden_at = dt.datetime.fromisoformat(cert["raw_data"]["hidden_at"])
        deadline = time.time() + s.erase_within_s + 5
        while files_holding(s.data_dir, pattern) and time.time() < deadline:
            time.sleep(0.2)
        assert files_holding(s.data_dir, pattern) == []  # erased: in no file under the data directory
        raw = c.get(f"/v1/forget/{r.json()['id']}/certificate").json()["certificate"]["raw_data"]
        assert raw["compaction_entry"]["action"] == "dataset.compacted"
        gone_at = dt.datetime.fromisoformat(raw["bytes_gone_at"])
        assert dt.timedelta(0) <= gone_at - hidden_at <= dt.timedelta(seconds=s.erase_within_s)
        after = c.get("/v1/datasets/clinic").json()
        assert after["erased_rows"] == 1 and after["splits"]["train"] == info["splits"]["train"] - 1
