"""POST/GET /v1/datasets: a Parquet dataset registered over HTTP, every refusal a precise
{code, detail} that leaves nothing registered, the other formats and kinds."""
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.datasets import service as datasets
from app.db import session_scope

from .conftest import SECRET


def _tabular(n=40, seed=0, **over):
    rng = np.random.default_rng(seed)
    cols = {"instance_id": [f"cust-{i:04d}" for i in range(n)],
            "label": ["fraud" if i % 3 == 0 else "ok" for i in range(n)],
            "subject_id": [f"person-{i // 2}" for i in range(n)],
            "split": ["test" if i % 5 == 0 else "train" for i in range(n)],
            "amount": rng.random(n) * 100, "age": rng.integers(18, 90, n)}
    cols.update(over)
    return pa.table(cols)


def _parquet(table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _post(client, name, payload: bytes, filename="data.parquet", **form):
    data = {"name": name, **{k: (json.dumps(v) if isinstance(v, list) else str(v)) for k, v in form.items()}}
    return client.post("/v1/datasets", data=data, files={"file": (filename, payload, "application/octet-stream")})


def _nothing_registered(client, settings, name):
    assert client.get(f"/v1/datasets/{name}").status_code == 404
    assert not os.path.exists(datasets.store_dir(settings, name))
    staging = os.path.join(datasets.datasets_dir(settings), ".staging")
    assert not os.path.isdir(staging) or os.listdir(staging) == []


def test_register_parquet_then_read_it_back(client, seeded):
    r = _post(client, "customers", _parquet(_tabular()), classes=["ok", "fraud"])
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "ready" and body["kind"] == "tabular"
    assert body["splits"] == {"train": 32, "test": 8} and body["rows"] == 40 and body["subjects"] == 20
    assert body["schema"]["columns"] == ["amount", "age"] and body["classes"] == ["ok", "fraud"]
    assert body["split_rule"] == "split_column" and body["models"] == []
    assert [d["name"] for d in client.get("/v1/datasets").json()] == ["customers"]
    assert client.get("/v1/datasets/customers").json()["rows"] == 40
    store = datasets.open_store(seeded, "customers")
    from app.catalogue.service import subject_ref

    assert store.lookup_subject(subject_ref(SECRET, "person-3")) == ["cust-0006", "cust-0007"]
    # the raw subject id is nowhere in the store
    for f in os.listdir(store.root):
        assert b"person-3" not in open(os.path.join(store.root, f), "rb").read()
    from app.datasets.formats import decode

    x, y = decode(store.read(["cust-0001", "cust-0003"]), store.schema)
    t = _tabular()
    np.testing.assert_allclose(x[:, 0], np.asarray(t["amount"])[[1, 3]], rtol=1e-6)
    assert y.tolist() == [0, 1]  # "ok", "fraud" in the declared order
    assert _post(client, "customers", _parquet(_tabular()), classes=["ok", "fraud"]).json()["code"] == "dataset_exists"


BAD = [
    ("missing_columns", dict(table=_tabular().drop(["label"]))),
    ("extra_columns", dict(form={"columns": ["amount"]})),
    ("duplicate_instance_ids", dict(table=_tabular(instance_id=["same"] * 40))),
    ("unknown_label", dict(form={"classes": ["ok"]})),
    ("non_finite", dict(table=_tabular(amount=[float("nan")] + [1.0] * 39))),
    ("non_numeric_column", dict(table=_tabular(age=["old"] * 40))),
    ("no_eval_split", dict(table=_tabular().drop(["split"]))),
    ("bad_split", dict(table=_tabular(split=["train"] * 39 + ["holdout"]))),
    ("empty_split", dict(table=_tabular(split=["train"] * 40))),
    ("unreadable_file", dict(payload=b"PAR1 but not parquet at all")),
    ("unknown_format", dict(filename="data.xlsx")),
    ("bad_name", dict(name="Bad Name!")),
    ("bad_classes", dict(form={"classes": ["ok", "ok"]})),
    ("bad_test_fraction", dict(table=_tabular().drop(["split"]), form={"test_fraction": 1.5})),
]


@pytest.mark.parametrize("code,case", BAD, ids=[c for c, _ in BAD])
def test_bad_input_is_a_precise_422_and_nothing_is_registered(client, seeded, code, case):
    name = case.get("name", "bad")
    payload = case.get("payload") or _parquet(case.get("table", _tabular()))
    r = _post(client, name, payload, filename=case.get("filename", "data.parquet"), **case.get("form", {}))
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code and r.json()["detail"], r.json()
    _nothing_registered(client, seeded, name)


def test_too_large_is_413(seeded, dispatcher):
    from fastapi.testclient import TestClient

    from app.main import create_app

    from .conftest import bearer, make_key

    small = seeded.model_copy(update={"max_dataset_bytes": 2000})
    with TestClient(create_app(small, dispatcher=dispatcher), headers=bearer(make_key(small))) as c:
        r = _post(c, "big", _parquet(_tabular(n=400)))
        assert r.status_code == 413 and r.json()["code"] in ("dataset_too_large", "body_too_large"), r.text
        _nothing_registered(c, small, "big")


def test_server_side_path_only_under_allowed_roots(seeded, dispatcher, tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app

    from .conftest import bearer, make_key

    allowed, other = tmp_path / "allowed", tmp_path / "elsewhere"
    allowed.mkdir(), other.mkdir()
    pq.write_table(_tabular(), allowed / "c.parquet")
    pq.write_table(_tabular(), other / "c.parquet")
    s = seeded.model_copy(update={"dataset_roots": str(allowed)})
    with TestClient(create_app(s, dispatcher=dispatcher), headers=bearer(make_key(s))) as c:
        for uri in (str(other / "c.parquet"), str(allowed / ".." / "elsewhere" / "c.parquet"), "/etc/passwd",
                    "s3://bucket/c.parquet"):
            r = c.post("/v1/datasets", data={"name": "srv", "uri": uri})
            assert r.status_code == 422 and r.json()["code"] == "path_not_allowed", (uri, r.text)
        _nothing_registered(c, s, "srv")
        r = c.post("/v1/datasets", data={"name": "srv", "uri": str(allowed / "c.parquet")})
        assert r.status_code == 201 and r.json()["source"] == str(allowed / "c.parquet"), r.text


def test_large_file_is_ingested_in_the_background(seeded, dispatcher):
    import time

    from fastapi.testclient import TestClient

    from app.main import create_app

    from .conftest import bearer, make_key

    s = seeded.model_copy(update={"dataset_inline_bytes": 100})
    with TestClient(create_app(s, dispatcher=dispatcher), headers=bearer(make_key(s))) as c:
        r = _post(c, "bg", _parquet(_tabular(n=300)))
        assert r.status_code == 202 and r.json()["status"] in ("ingesting", "ready"), r.text
        for _ in range(200):
            body = c.get("/v1/datasets/bg").json()
            if body["status"] != "ingesting":
                break
            time.sleep(0.05)
        assert body["status"] == "ready" and body["rows"] == 300 and body["progress"] == 1.0
        r = _post(c, "bg-bad", _parquet(_tabular(n=300, instance_id=["x"] * 300)))
        assert r.status_code == 202
        for _ in range(200):
            body = c.get("/v1/datasets/bg-bad").json()
            if body["status"] != "ingesting":
                break
            time.sleep(0.05)
        assert body["status"] == "failed" and body["error"]["code"] == "duplicate_instance_ids"
        assert not os.path.exists(datasets.store_dir(s, "bg-bad"))
        # a failed name can be registered again
        assert _post(c, "bg-bad", _parquet(_tabular(n=30)), ).status_code == 202


def test_reading_needs_a_key_and_writing_models_admin(seeded, dispatcher):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.security import FORGET_READ

    from .conftest import bearer, make_key

    with TestClient(create_app(seeded, dispatcher=dispatcher)) as c:
        assert c.get("/v1/datasets").status_code == 401
        reader = bearer(make_key(seeded, scopes=[FORGET_READ], name="reader"))
        assert c.get("/v1/datasets", headers=reader).status_code == 200
        r = c.post("/v1/datasets", data={"name": "x"}, files={"file": ("d.parquet", _parquet(_tabular()))},
                   headers=reader)
        assert r.status_code == 403


def test_counts_after_registration(client, seeded):
    _post(client, "customers", _parquet(_tabular()), classes=["ok", "fraud"])
    with session_scope(seeded.database_url) as db:
        assert datasets.get_ready(db, "customers").train_rows == 32
