"""Weights on an S3-compatible object store (LETHE_REGISTRY_URL): moto's standalone server
(``moto_server``, a real S3 API over HTTP started as a subprocess by tests/conftest.py; a
versioned bucket). Each "node" is the same database with its own empty LETHE_REGISTRY_DIR,
which is then that node's cache: a node loads a version another node wrote (its sha256
checked as the bytes arrive), refuses tampered bytes, keeps its cache within its bound, and
a purge leaves the weights in no object version, no unfinished upload and, once each node
reconciles, no cache."""
import os

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.db import migrate, session_scope
from app.errors import LetheError
from app.main import create_app
from app.registry import governance
from app.registry import service as registry
from app.registry.storage import WeightStore

from .conftest import MODEL, bearer, make_key, make_settings, seed
from .test_governance import _erase_alice

BUCKET = "lethe-data"


@pytest.fixture
def on_s3(s3_server, tmp_path):
    url, client = s3_server
    reg_url = url.replace("/datasets?", f"/registry-{os.urandom(4).hex()}?")
    s = make_settings(tmp_path, registry_url=reg_url)
    migrate(s)
    return seed(s), client


def _node(s, tmp_path, name: str, **kw):
    return s.model_copy(update={"registry_dir": str(tmp_path / name), **kw})


def _versions(client, key: str) -> list[dict]:
    got = client.list_object_versions(Bucket=BUCKET, Prefix=key)
    return [v for v in got.get("Versions", []) + got.get("DeleteMarkers", []) if v["Key"] == key]


def _v(s, n: int):
    with session_scope(s.database_url) as db:
        return registry.get_version(db, MODEL, n)


def test_another_node_loads_the_weights_from_the_object_store_checked(on_s3, tmp_path):
    s, client = on_s3
    store = registry.weights(s)
    v1 = _v(s, 1)
    key = f"{store.remote.prefix}/{v1.storage_path}"
    assert v1.storage_path == f"{MODEL}/{v1.sha256}.safetensors"  # content-addressed
    assert _versions(client, key)  # written to the bucket when published

    b = _node(s, tmp_path, "node-b")
    assert not os.path.exists(b.registry_dir)
    net_b, meta = registry.load_version(registry.weights(b), v1)
    net_a, _ = registry.load_version(store, v1)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(net_a(x), net_b(x)) and meta["arch"] == "cnn"
    assert os.path.exists(os.path.join(b.registry_dir, v1.storage_path))  # now cached on node B

    # bytes on the store that are not the version's are refused, and nothing is kept
    client.put_object(Bucket=BUCKET, Key=key, Body=b"not the weights")
    c = _node(s, tmp_path, "node-c")
    with pytest.raises(LetheError) as e:
        registry.load_version(registry.weights(c), v1)
    assert e.value.status == 500 and "sha256" in e.value.detail
    assert not os.path.exists(os.path.join(c.registry_dir, v1.storage_path))
    assert not [f for _, _, fs in os.walk(c.registry_dir) for f in fs]  # no partial download either


def test_weights_download_and_card_read_through_the_object_store(on_s3, tmp_path, dispatcher):
    s, _ = on_s3
    v1 = _v(s, 1)
    gw = _node(s, tmp_path, "gateway")  # a gateway whose disk never held the weights
    key = make_key(gw, ["models:read", "models:admin"], name="reader")
    with TestClient(create_app(gw, dispatcher=dispatcher), headers=bearer(key)) as c:
        r = c.get(f"/v1/models/{MODEL}/versions/1/weights")
        assert r.status_code == 200, r.text
        import hashlib

        assert hashlib.sha256(r.content).hexdigest() == v1.sha256
        assert c.get(f"/v1/models/{MODEL}/versions/1").json()["size_bytes"] == len(r.content)


def test_purge_deletes_every_object_version_upload_and_cached_copy(on_s3, tmp_path, dispatcher, monkeypatch):
    s, client = on_s3
    store = registry.weights(s)
    v1 = _v(s, 1)
    key = f"{store.remote.prefix}/{v1.storage_path}"
    # a second version of the same object (published again) and an upload cut short holding its bytes
    raw = open(store.path(v1.storage_path), "rb").read()
    client.put_object(Bucket=BUCKET, Key=key, Body=raw)
    up = client.create_multipart_upload(Bucket=BUCKET, Key=key)
    client.upload_part(Bucket=BUCKET, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=raw)
    assert len(_versions(client, key)) == 2
    b = _node(s, tmp_path, "node-b")  # another worker that used v1: it holds a cached copy
    cached_b = registry.weights(b).fetch_version(v1.storage_path, v1.sha256)

    with TestClient(create_app(s, dispatcher=dispatcher), headers=bearer(make_key(s))) as c:
        _erase_alice(c, s, through_worker=True, monkeypatch=monkeypatch)  # v2 published, v1 purged
    assert _v(s, 1).status == "PURGED"
    assert _versions(client, key) == []  # no version, no delete marker
    assert not client.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads")
    assert not os.path.exists(store.path(v1.storage_path))  # the purging node's copy

    v2 = _v(s, 2)
    registry.weights(b).fetch_version(v2.storage_path, v2.sha256)
    assert os.path.exists(cached_b)  # node B has not looked yet
    os.utime(cached_b, (1, 1))  # (a file used within the last second is left for the next check)
    assert registry.weights(b).reconcile() == [v1.storage_path]
    assert not os.path.exists(cached_b)
    assert os.path.exists(registry.weights(b).path(v2.storage_path))  # what still serves stays


def test_the_cache_stays_within_its_bound_least_recently_used_first(on_s3, tmp_path):
    s, _ = on_s3
    from .test_registry_events import _new_version

    _new_version(s, MODEL, seed=2)
    _new_version(s, MODEL, seed=3)
    files = [_v(s, n) for n in (1, 2, 3)]
    size = os.path.getsize(registry.weights(s).path(files[0].storage_path))
    node = WeightStore(str(tmp_path / "small"), s.registry_url, cache_bytes=2 * size + size // 2)
    paths = [node.fetch_version(v.storage_path, v.sha256) for v in files[:2]]
    os.utime(paths[0], (1, 1))
    os.utime(paths[1], (2, 2))
    node.fetch(files[0].storage_path)  # used again: now the most recent
    node.fetch_version(files[2].storage_path, files[2].sha256)
    assert [os.path.exists(p) for p in paths] == [True, False]  # v2, the least recently used, went
    assert node.cached_bytes() <= node.cache_bytes
    assert node.fetch(files[1].storage_path) == paths[1]  # fetched again on demand


def test_slice_checkpoints_are_shared_through_the_object_store(on_s3, tmp_path):
    s, client = on_s3
    a, b = registry.weights(s), registry.weights(_node(s, tmp_path, "node-b"))
    key = "ab" * 32
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    a.slices(MODEL).put(key, state)
    got = b.slices(MODEL).get(key)
    assert got is not None and torch.equal(got["w"], state["w"])
    assert b.slices(MODEL).get("cd" * 32) is None
    assert b.slices(MODEL).delete(key) is True
    assert a.slices(MODEL).get(key) is not None  # A's cached copy until it reconciles ...
    os.utime(a.path(f"{MODEL}/slices/{key}.safetensors"), (1, 1))
    assert a.reconcile() == [f"{MODEL}/slices/{key}.safetensors"]
    assert a.slices(MODEL).get(key) is None  # ... then gone everywhere
    assert _versions(client, f"{a.remote.prefix}/{MODEL}/slices/{key}.safetensors") == []


def test_a_file_in_use_is_left_for_the_next_check(on_s3, tmp_path):
    s, client = on_s3
    v1 = _v(s, 1)
    b = registry.weights(_node(s, tmp_path, "node-b"))
    p = b.fetch_version(v1.storage_path, v1.sha256)
    client.delete_object(Bucket=BUCKET, Key=f"{b.remote.prefix}/{v1.storage_path}")  # gone from the store
    assert b.reconcile() == [] and os.path.exists(p)  # just read by a job: kept this time
    os.utime(p, (1, 1))
    assert b.reconcile() == [v1.storage_path] and not os.path.exists(p)


def test_local_default_is_unchanged(settings):
    store = registry.weights(settings)
    assert store.remote is None and store.root == settings.registry_dir
    assert store.reconcile() == [] and store.trim() == 0
    assert np.isfinite(store.cache_bytes)


def test_sealed_forget_rows_travel_through_the_object_store_and_are_shredded_from_every_version(on_s3, tmp_path):
    """A worker seals a job's forget rows (app/registry/probes.py); the gateway that scores a
    retrain order's upload reads them on another node; shredding leaves no object version."""
    from app.registry import probes

    s, client = on_s3
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    with session_scope(s.database_url) as db:
        p = probes.seal(db, s, model_name=MODEL, job_id="job-1", instance_ids=["a", "b", "c"], x=x,
                        y=np.array([1, 2, 3]), due_at=None, actor="worker:w1")
    key = f"{registry.weights(s).remote.prefix}/{p.path}"
    assert _versions(client, key)
    gw = _node(s, tmp_path, "gateway")
    with session_scope(s.database_url) as db:
        p = db.merge(p)
        fx, fy, ids = probes.open_rows(gw, [p], ["b", "c"])
        assert ids == ["b", "c"] and np.array_equal(fx, x[1:]) and fy.tolist() == [2, 3]
        probes.shred(db, gw, p, reason="test", actor="test")
    assert _versions(client, key) == []
    os.utime(registry.weights(s).path(p.path), (1, 1))
    assert registry.weights(s).reconcile() == [p.path]  # the sealing worker's copy goes at its next check


def test_a_retrain_orders_snapshot_lives_on_the_object_store_and_leaves_with_the_order(on_s3, tmp_path):
    """With LETHE_REGISTRY_URL an order's snapshot of the retained rows is an object like the
    weights: another node (a gateway serving the download) reads it with its sha256 checked,
    and when the order closes it is removed from every object version."""
    import pyarrow.parquet as pq

    from app.registry import orders

    s, client = on_s3
    with session_scope(s.database_url) as db:
        registry.get_model(db, MODEL).recipe = {"trainer": "external"}  # the team's pipeline retrains it
    with session_scope(s.database_url) as db:
        order, created = orders.issue(db, s, MODEL, actor="ops", reason="test")
        oid, rel, sha = order.id, order.snapshot_path, order.snapshot_sha256
    assert created
    key = f"{registry.weights(s).remote.prefix}/{rel}"
    assert _versions(client, key)
    b = _node(s, tmp_path, "gateway-b")
    with session_scope(b.database_url) as db:
        o = db.get(orders.RetrainOrder, oid)
        path = orders.snapshot_file(b, o)
        assert path.startswith(b.registry_dir) and pq.read_table(path).num_rows == o.rows > 0
        assert orders.to_json(o, b)["snapshot"]["uri"] is None  # no local file:// to hand out: the URL serves it
    with session_scope(s.database_url) as db:
        orders.cancel(db, s, db.get(orders.RetrainOrder, oid), actor="ops", reason="test")
    assert _versions(client, key) == [] and not os.path.exists(os.path.join(s.registry_dir, rel))
    os.utime(path, (os.path.getmtime(path) - 5,) * 2)  # not in use (a check leaves a file used in the last second)
    registry.weights(b).reconcile()  # node B's cached copy goes at its next check, like purged weights
    assert sha and not os.path.exists(path)
