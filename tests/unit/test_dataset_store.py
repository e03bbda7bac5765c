"""The columnar store on its own: ingest, index lookups, reads by id, sampling, batches,
erasure that removes the bytes from every file, crash leftovers swept."""
import os

import numpy as np
import pyarrow as pa
import pytest

from app.datasets import store as store_mod
from app.datasets.store import DatasetStore, DuplicateIds

DIM = 5
# small fragments and row groups keep the test fast; the code paths are the same
FRAGMENT_ROWS, ROW_GROUP = 4096, 256


def _schema():
    return pa.schema([pa.field("instance_id", pa.string(), False), pa.field("label", pa.int32(), False),
                      pa.field("x", pa.list_(pa.float32(), DIM))])


def _table(n, start=0, seed=0):
    x = np.random.default_rng(seed).random((n, DIM), dtype=np.float32)
    return x, pa.table({"instance_id": [f"r{i}" for i in range(start, start + n)],
                        "label": (np.arange(n) % 3).astype(np.int32),
                        "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)})


@pytest.fixture
def filled(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "FRAGMENT_ROWS", FRAGMENT_ROWS)
    monkeypatch.setattr(store_mod, "ROW_GROUP", ROW_GROUP)
    store = DatasetStore.create(str(tmp_path / "ds"), {"kind": "tensor", "shape": [DIM]}, _schema())
    n = FRAGMENT_ROWS + 3 * ROW_GROUP + 17  # two fragments, the second with partial row groups
    x, t = _table(n)
    store.ingest("train", t, [f"s{i // 4}" for i in range(n)])
    xt, tt = _table(50, start=n, seed=1)
    store.ingest("test", tt)
    store.seal()
    return store, x, n


def _xs(table):
    return np.asarray(table.column("x").to_pylist(), dtype=np.float32)


def test_ingest_counts_and_subject_lookup(filled):
    store, _, n = filled
    assert store.counts() == {"train": n, "test": 50}
    assert store.lookup_subject("s3") == ["r12", "r13", "r14", "r15"]
    assert store.lookup_subject("nobody") == []
    assert store.subject_count() == -(-n // 4)  # rows without a subject do not count


def test_read_by_id_in_the_order_asked(filled):
    store, x, n = filled
    ids = [n - 1, 3, FRAGMENT_ROWS + 5, 0, ROW_GROUP]
    got = store.read([f"r{i}" for i in ids])
    assert got.column("instance_id").to_pylist() == [f"r{i}" for i in ids]
    np.testing.assert_array_equal(_xs(got), x[ids])
    with pytest.raises(KeyError, match="r-missing"):
        store.read(["r1", "r-missing"])


def test_duplicates_write_nothing(filled, tmp_path):
    store, _, n = filled
    before = sorted(os.listdir(store.root))
    _, t = _table(10, start=n - 3)  # r{n-3}.. overlap the stored rows
    with pytest.raises(DuplicateIds) as e:
        store.ingest("train", t)
    assert e.value.ids == sorted(f"r{i}" for i in range(n - 3, n + 7))  # train and test ids alike
    assert sorted(os.listdir(store.root)) == before and store.counts()["train"] == n


def test_sample_is_bounded_and_excludes(filled):
    store, x, n = filled
    s = store.sample(300, seed=3, exclude={"r0", "r1"})
    ids = s.column("instance_id").to_pylist()
    assert len(ids) == 300 == len(set(ids)) and "r0" not in ids
    pos = [int(i[1:]) for i in ids]
    np.testing.assert_array_equal(_xs(s), x[pos])
    assert len({p // ROW_GROUP for p in pos}) <= 2  # reads a row group or two, not the whole dataset
    assert store.sample(300, seed=3).column("instance_id").to_pylist() == \
        store.sample(300, seed=3).column("instance_id").to_pylist()


def test_batches_cover_every_row_once(filled):
    store, _, n = filled
    seen = []
    for b in store.batches("train", batch_size=5000, exclude={"r7"}):
        assert b.num_rows <= 5000
        seen += b.column("instance_id").to_pylist()
    assert len(seen) == n - 1 == len(set(seen)) and "r7" not in seen


def test_erase_removes_the_bytes_from_every_file(filled):
    store, x, n = filled
    victims = [5, FRAGMENT_ROWS + 1]
    patterns = [x[i].tobytes() for i in victims]

    def files_with(p):
        return [f for f in os.listdir(store.root) if p in open(os.path.join(store.root, f), "rb").read()]

    assert all(files_with(p) for p in patterns)  # the check can fail: the bytes are there before
    rep = store.erase([f"r{i}" for i in victims] + ["not-stored"])
    assert rep.rows == 2 and rep.fragments_rewritten == 2 and rep.bytes_rewritten > 0
    assert [files_with(p) for p in patterns] == [[], []]
    assert store.counts()["train"] == n - 2
    # survivors moved up inside their fragment and still read back exactly
    ids = [4, 6, FRAGMENT_ROWS, FRAGMENT_ROWS + 2, n - 1]
    np.testing.assert_array_equal(_xs(store.read([f"r{i}" for i in ids])), x[ids])
    assert store.lookup_subject("s1") == ["r4", "r6", "r7"]
    assert store.erase(["r5"]).rows == 0  # idempotent


def test_erased_id_leaves_no_trace_in_the_index(filled):
    store, _, _ = filled
    marker = b"r1234"
    idx = os.path.join(store.root, "index.sqlite")
    assert marker in open(idx, "rb").read()
    store.erase(["r1234"])
    assert marker not in open(idx, "rb").read()  # secure_delete zeroes the freed cells


def test_compact_sweeps_crash_leftovers(filled):
    store, _, _ = filled
    stray = os.path.join(store.root, "train-000000-g0007.parquet")
    with open(stray, "wb") as f:
        f.write(b"old bytes of a crashed erase")
    open(os.path.join(store.root, "x.parquet.tmp"), "wb").close()
    assert store.compact().bytes_deleted > 0
    assert not os.path.exists(stray) and not os.path.exists(os.path.join(store.root, "x.parquet.tmp"))


def _files_with(store, p):
    return [f for f in os.listdir(store.root) if p in open(os.path.join(store.root, f), "rb").read()]


def test_hide_is_invisible_at_once_and_compact_removes_the_bytes(filled):
    """The deletion vector: hidden rows leave every read in the same transaction; one
    compaction rewrites each fragment once for all its hidden rows."""
    store, x, n = filled
    victims = [3, 700, FRAGMENT_ROWS + 2, FRAGMENT_ROWS + 300]  # two fragments, two rows in each
    ids = [f"r{i}" for i in victims]
    assert store.hide(ids + ["not-stored"]) == 4
    assert store.pending()[0] == 4
    assert all(_files_with(store, x[i].tobytes()) for i in victims)  # not yet compacted: the bytes are there
    with pytest.raises(KeyError):
        store.read(ids[:1])
    assert not store.locate(ids) and "r3" not in store.lookup_subject("s0")
    assert not set(ids) & {i for i, _, _ in store.index("train")}
    seen = [i for b in store.batches("train", batch_size=1000) for i in b.column("instance_id").to_pylist()]
    assert len(seen) == n - 4 and not set(ids) & set(seen)
    assert not set(ids) & set(store.sample(n, seed=1).column("instance_id").to_pylist())
    assert store.counts()["train"] == n - 4

    rep = store.compact()
    assert (rep.rows, rep.fragments_rewritten) == (4, 2) and rep.compacted_through is not None
    assert store.pending() == (0, None)
    assert [_files_with(store, x[i].tobytes()) for i in victims] == [[]] * 4
    # survivors kept their index rows; reads map original positions to the rewritten files
    keep = [2, 4, 699, 701, FRAGMENT_ROWS + 1, FRAGMENT_ROWS + 3, FRAGMENT_ROWS + 301, n - 1]
    np.testing.assert_array_equal(_xs(store.read([f"r{i}" for i in keep])), x[keep])
    # a second erasure in an already compacted fragment
    assert store.erase(["r701", "r2"]).rows == 2
    assert not _files_with(store, x[701].tobytes())
    keep = [0, 1, 4, 699, 702, ROW_GROUP * 3 + 1]
    np.testing.assert_array_equal(_xs(store.read([f"r{i}" for i in keep])), x[keep])
    s = store.sample(500, seed=2)
    pos = [int(i[1:]) for i in s.column("instance_id").to_pylist()]
    np.testing.assert_array_equal(_xs(s), x[pos])
    assert store.counts()["train"] == n - 6
    ids = [i for b in store.batches("train", batch_size=777) for i in b.column("instance_id").to_pylist()]
    assert len(ids) == n - 6 == len(set(ids))


def test_ingest_after_a_compaction_emptied_a_fragment(filled):
    store, _, n = filled
    tail = [f"r{i}" for i in range(FRAGMENT_ROWS, n)]  # every row of the second fragment
    assert store.erase(tail).fragments_rewritten == 1
    _, t = _table(10, start=10 * n)
    store.ingest("train", t)
    assert store.counts()["train"] == FRAGMENT_ROWS + 10
    assert store.read([f"r{10 * n + 9}"]).num_rows == 1


def test_a_store_written_before_deletion_vectors_is_upgraded(tmp_path):
    import sqlite3

    store = DatasetStore.create(str(tmp_path / "old"), {"kind": "tensor", "shape": [DIM]}, _schema())
    x, t = _table(100)
    store.ingest("train", t)
    store.close()
    con = sqlite3.connect(os.path.join(store.root, "index.sqlite"))
    (f,) = [r[0] for r in con.execute("SELECT file FROM fragments")]
    os.rename(os.path.join(store.root, f), os.path.join(store.root, "train-000000-g0003.parquet"))
    con.executescript("""DROP TABLE tombstones; ALTER TABLE fragments RENAME TO f0;
        CREATE TABLE fragments (name TEXT PRIMARY KEY, split TEXT NOT NULL, n_rows INTEGER NOT NULL,
                                row_groups INTEGER NOT NULL, bytes INTEGER NOT NULL);
        INSERT INTO fragments SELECT 'train-000000-g0003.parquet', split, n_rows, row_groups, bytes FROM f0;
        DROP TABLE f0; UPDATE instances SET fragment = 'train-000000-g0003.parquet';""")
    con.commit()
    con.close()
    old = DatasetStore(store.root)
    np.testing.assert_array_equal(_xs(old.read(["r7"])), x[[7]])
    assert old.erase(["r7"]).rows == 1 and not _files_with(old, x[7].tobytes())
    np.testing.assert_array_equal(_xs(old.read(["r8", "r99"])), x[[8, 99]])


def test_erase_compacts_only_what_it_hid(filled):
    """``erase`` removes its own rows at once; rows hidden earlier wait for their compaction
    (whose audit entry their certificates name)."""
    store, x, _ = filled
    store.hide(["r10"])
    assert store.erase(["r11"]).rows == 1 and not _files_with(store, x[11].tobytes())
    assert store.pending()[0] == 1 and _files_with(store, x[10].tobytes())
    assert store.compact().rows == 1 and not _files_with(store, x[10].tobytes())


def test_reads_meanwhile_compactions_see_the_survivors_exactly(filled):
    """Readers never lock: a read whose fragment a compaction replaced looks it up again."""
    import threading

    store, x, n = filled
    keep = [1, 2, ROW_GROUP + 1, FRAGMENT_ROWS + 1, n - 1]
    errors, stop = [], threading.Event()

    def reader():
        other = DatasetStore(store.root)  # its own index connection, as another worker's
        try:
            while not stop.is_set():
                np.testing.assert_array_equal(_xs(other.read([f"r{i}" for i in keep])), x[keep])
                s = other.sample(200, seed=int(stop.is_set()))
                pos = [int(i[1:]) for i in s.column("instance_id").to_pylist()]
                np.testing.assert_array_equal(_xs(s), x[pos])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            other.close()

    t = threading.Thread(target=reader)
    t.start()
    try:
        for k in range(6):
            store.erase([f"r{10 + k}", f"r{FRAGMENT_ROWS + 10 + k}"])
    finally:
        stop.set()
        t.join()
    assert not errors, errors


# --- fragments on an S3-compatible object store: moto's standalone server (``moto_server``, a
# real S3 API over HTTP, started here as a subprocess; nothing mocked in process), a versioned
# bucket. Erasure must leave the bytes in no object version and no unfinished multipart upload.
BUCKET = "lethe-data"


def _every_version_holding(client, prefix: str, pattern: bytes) -> list[str]:
    """Keys of every object version under ``prefix`` whose bytes hold ``pattern``."""
    found = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=prefix):
        for v in page.get("Versions", []):
            body = client.get_object(Bucket=BUCKET, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
            if pattern in body:
                found.append(f"{v['Key']}@{v['VersionId']}")
    return found


def test_fragments_on_a_versioned_bucket_erased_from_every_version(s3_server, tmp_path, monkeypatch):
    url, client = s3_server
    monkeypatch.setattr(store_mod, "FRAGMENT_ROWS", FRAGMENT_ROWS)
    monkeypatch.setattr(store_mod, "ROW_GROUP", ROW_GROUP)
    store = DatasetStore.create(str(tmp_path / "ds"), {"kind": "tensor", "shape": [DIM]}, _schema(), data_url=url)
    n = FRAGMENT_ROWS + 3 * ROW_GROUP + 17
    x, t = _table(n)
    store.ingest("train", t, [f"s{i // 4}" for i in range(n)])
    store.ingest("test", _table(50, start=n, seed=1)[1])
    store.seal()
    assert not [f for f in os.listdir(store.root) if f.endswith(".parquet")]  # no fragment on local disk
    prefix = store.objects.prefix + "/"
    ids = [3, FRAGMENT_ROWS + 5, n - 1]
    np.testing.assert_array_equal(_xs(store.read([f"r{i}" for i in ids])), x[ids])
    assert store.sample(100, seed=1).num_rows == 100
    assert sum(b.num_rows for b in store.batches("train", batch_size=999)) == n

    victims = [5, FRAGMENT_ROWS + 1]
    patterns = [x[i].tobytes() for i in victims]
    # a write cut short: an unfinished multipart upload whose part holds a victim's bytes
    up = client.create_multipart_upload(Bucket=BUCKET, Key=prefix + "train-000000-g0009.parquet")
    client.upload_part(Bucket=BUCKET, Key=prefix + "train-000000-g0009.parquet", UploadId=up["UploadId"],
                       PartNumber=1, Body=b"...." + patterns[0] + b"....")
    assert all(_every_version_holding(client, prefix, p) for p in patterns)  # the check can fail

    assert store.hide([f"r{i}" for i in victims]) == 2  # invisible at once, bytes still there
    assert all(_every_version_holding(client, prefix, p) for p in patterns)
    rep = store.compact()
    assert rep.rows == 2 and rep.fragments_rewritten == 2
    assert [_every_version_holding(client, prefix, p) for p in patterns] == [[], []]
    assert not client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads")
    keep = [4, 6, FRAGMENT_ROWS, FRAGMENT_ROWS + 2, n - 1]
    np.testing.assert_array_equal(_xs(store.read([f"r{i}" for i in keep])), x[keep])
    assert store.counts()["train"] == n - 2

    store.destroy()  # a removed store leaves no version behind
    assert not client.list_object_versions(Bucket=BUCKET, Prefix=prefix).get("Versions")
    assert not os.path.exists(store.root)


def test_service_writes_new_datasets_to_the_object_store_and_compacts_them(s3_server, tmp_path):
    """LETHE_DATASET_URL: a registered dataset's fragments go to the bucket; the compaction
    due (``LETHE_ERASE_WITHIN_S``) removes a hidden row from every object version and
    records it in the audit log; a failed registration leaves no object behind."""
    import pyarrow.parquet as pq

    from app.audit.models import AuditEvent
    from app.datasets import service
    from app.datasets.formats import Source, Spec
    from app.db import migrate, session_scope
    from app.settings import Settings

    url, client = s3_server
    s = Settings(database_url=f"sqlite:///{tmp_path}/lethe.db", data_dir=str(tmp_path / "data"),
                 registry_dir=str(tmp_path / "reg"), subject_secret="s3-secret", dataset_url=url, erase_within_s=0)
    migrate(s)
    x, t = _table(600)
    t = t.append_column("split", pa.array(["test" if i % 5 == 0 else "train" for i in range(600)]))
    path = str(tmp_path / "in.parquet")
    pq.write_table(t, path)
    before = {v["Key"] for v in client.list_object_versions(Bucket=BUCKET).get("Versions", [])}
    service.build_store(s, "objs", Source(path, "parquet"), Spec(kind="tensor", feature_column="x"), progress=False)
    store = service.open_store(s, "objs")
    assert store.objects is not None and not [f for f in os.listdir(store.root) if f.endswith(".parquet")]
    prefix = store.objects.prefix + "/"
    assert _every_version_holding(client, prefix, x[1].tobytes())
    assert store.hide(["r1"]) == 1
    [done] = service.compact_due(s)
    assert done["dataset"] == "objs" and done["rows"] == 1
    assert _every_version_holding(client, prefix, x[1].tobytes()) == []
    with session_scope(s.database_url) as db:
        assert db.query(AuditEvent).filter(AuditEvent.action == "dataset.compacted").count() == 1

    bad = t.set_column(0, "instance_id", pa.array(["dup"] * 600))  # refused: duplicate ids
    pq.write_table(bad, path)
    with pytest.raises(Exception, match="duplicate"):
        service.build_store(s, "refused", Source(path, "parquet"), Spec(kind="tensor", feature_column="x"), progress=False)
    after = {v["Key"] for v in client.list_object_versions(Bucket=BUCKET).get("Versions", [])}
    assert after - before == {k for k in after if k.startswith(prefix)}  # only the ready dataset's objects


def test_a_dataset_url_that_is_not_s3_is_refused_at_start():
    from pydantic import ValidationError

    from app.settings import Settings

    assert Settings(dataset_url="s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http").dataset_url
    for bad in ("/srv/data", "file:///srv/data", "gs://bucket/x", "s3:///no-bucket"):
        with pytest.raises(ValidationError, match="LETHE_DATASET_URL must be empty"):
            Settings(dataset_url=bad)
