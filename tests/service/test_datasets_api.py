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
    assert [d["name"] for d in client.get("/v1/datasets").json()] == ["customers", "toy"]  # toy: the fixture's
    assert client.get("/v1/datasets/customers").json()["rows"] == 40
    store = datasets.open_store(seeded, "customers")
    from app.security.pseudonyms import subject_ref

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


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_arrow_ipc_and_csv_and_npz(client, seeded):
    t = _tabular()
    buf = io.BytesIO()
    with pa.ipc.new_file(buf, t.schema) as w:
        w.write_table(t)
    assert _post(client, "ipc", buf.getvalue(), filename="d.arrow").json()["splits"] == {"train": 32, "test": 8}
    stream = io.BytesIO()
    with pa.ipc.new_stream(stream, t.schema) as w:
        w.write_table(t)
    assert _post(client, "ipc-stream", stream.getvalue(), filename="d.arrows").status_code == 201
    csv = t.to_pandas().to_csv(index=False).encode()
    r = _post(client, "csv", csv, filename="d.csv")
    assert r.status_code == 201 and r.json()["schema"]["columns"] == ["amount", "age"], r.text
    x = np.random.default_rng(0).random((20, 2, 3), dtype=np.float32)
    npz = io.BytesIO()
    np.savez(npz, instance_id=np.array([f"n{i}" for i in range(20)]), label=np.arange(20) % 4, x=x,
             split=np.array(["train"] * 15 + ["test"] * 5))
    r = _post(client, "npz", npz.getvalue(), filename="d.npz")
    assert r.status_code == 201 and r.json()["kind"] == "tensor" and r.json()["schema"]["shape"] == [2, 3], r.text
    store = datasets.open_store(seeded, "npz")
    from app.datasets.formats import decode

    got, y = decode(store.read(["n3", "n17"]), store.schema)
    np.testing.assert_array_equal(got, x[[3, 17]])
    assert y.tolist() == [3, 1]
    obj = io.BytesIO()
    np.savez(obj, instance_id=np.array([{"a": 1}] * 3, dtype=object), label=np.arange(3), x=np.zeros((3, 2)))
    r = _post(client, "npz-pickle", obj.getvalue(), filename="d.npz")
    assert r.status_code == 422 and r.json()["code"] == "unreadable_file"


def test_tensor_kind_refuses_ragged_and_nonfinite(client, seeded):
    ok = {"instance_id": ["a", "b", "c", "d"], "label": [0, 1, 0, 1], "split": ["train", "train", "train", "test"]}
    r = _post(client, "t", _parquet(pa.table({**ok, "features": [[0.0] * 6] * 4})), shape=[2, 3])
    assert r.status_code == 201 and r.json()["schema"]["shape"] == [2, 3], r.text
    r = _post(client, "t2", _parquet(pa.table({**ok, "features": [[0.0] * 6] * 3 + [[0.0] * 5]})), shape=[2, 3])
    assert r.status_code == 422 and r.json()["code"] == "ragged_tensor" and "row 3" in r.json()["detail"]
    r = _post(client, "t3", _parquet(pa.table({**ok, "features": [[0.0] * 6] * 3 + [[float("inf")] * 6]})))
    assert r.status_code == 422 and r.json()["code"] == "non_finite"
    r = _post(client, "t4", _parquet(pa.table({**ok, "features": [[0.0] * 6] * 4})), shape=[2, 0])
    assert r.status_code == 422 and r.json()["code"] == "bad_shape"
    _nothing_registered(client, seeded, "t2")


def test_image_kind_decodes_and_refuses_bad_images(client, seeded):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (5, 4), dtype=np.uint8) for _ in range(6)]
    base = {"instance_id": [f"img{i}" for i in range(6)], "label": ["cat", "dog"] * 3,
            "subject_id": [f"owner{i % 2}" for i in range(6)], "split": ["train"] * 5 + ["test"]}
    r = _post(client, "pics", _parquet(pa.table({**base, "image": [_png(a) for a in imgs]})))
    assert r.status_code == 201 and r.json()["kind"] == "image" and r.json()["schema"]["shape"] == [1, 5, 4], r.text
    store = datasets.open_store(seeded, "pics")
    from app.datasets.formats import decode

    x, y = decode(store.read(["img2"]), store.schema)
    np.testing.assert_allclose(x[0, 0], imgs[2] / 255.0, atol=1e-6)
    bad = [_png(a) for a in imgs[:5]] + [b"\x89PNG\r\n\x1a\n but truncated"]
    r = _post(client, "pics2", _parquet(pa.table({**base, "image": bad})))
    assert r.status_code == 422 and r.json()["code"] == "undecodable_image" and "row 5" in r.json()["detail"]
    odd = [_png(a) for a in imgs[:5]] + [_png(rng.integers(0, 256, (6, 4), dtype=np.uint8))]
    r = _post(client, "pics3", _parquet(pa.table({**base, "image": odd})))
    assert r.status_code == 422 and r.json()["code"] == "image_size_mismatch"
    _nothing_registered(client, seeded, "pics2")


def test_tokens_kind_pads_on_read(client, seeded):
    t = pa.table({"instance_id": ["s0", "s1", "s2"], "label": ["pos", "neg", "pos"],
                  "tokens": [[5, 7, 9], [3], [1, 2]], "split": ["train", "train", "test"]})
    r = _post(client, "texts", _parquet(t))
    assert r.status_code == 201 and r.json()["schema"]["shape"] == [3] and r.json()["schema"]["vocab_size"] == 10
    store = datasets.open_store(seeded, "texts")
    from app.datasets.formats import decode

    x, y = decode(store.read(["s1", "s0"]), store.schema)
    assert x.tolist() == [[3, 0, 0], [5, 7, 9]] and y.tolist() == [0, 1]  # classes sorted: neg, pos
    r = _post(client, "texts2", _parquet(t.set_column(2, "tokens", pa.array([[5, -1], [3], [1]]))))
    assert r.status_code == 422 and r.json()["code"] == "bad_features"


def test_evaluation_file_and_test_fraction(client, seeded):
    t = _tabular(n=50).drop(["split"])
    ev = _tabular(n=10, seed=1, instance_id=[f"ev-{i}" for i in range(10)]).drop(["split"])
    r = client.post("/v1/datasets", data={"name": "two-files"},
                    files={"file": ("a.parquet", _parquet(t)), "eval_file": ("b.parquet", _parquet(ev))})
    assert r.status_code == 201 and r.json()["splits"] == {"train": 50, "test": 10}, r.text
    assert r.json()["split_rule"] == "eval_file"
    clash = _tabular(n=10, seed=1).drop(["split"])  # ids cust-0000.. repeat the training file's
    r = client.post("/v1/datasets", data={"name": "clash"},
                    files={"file": ("a.parquet", _parquet(t)), "eval_file": ("b.parquet", _parquet(clash))})
    assert r.status_code == 422 and r.json()["code"] == "duplicate_instance_ids"
    r = _post(client, "frac", _parquet(t), test_fraction=0.3, seed=4)
    body = r.json()
    assert r.status_code == 201 and body["rows"] == 50 and 5 <= body["splits"]["test"] <= 25, body
    assert body["split_rule"] == "random:0.3:seed=4"
