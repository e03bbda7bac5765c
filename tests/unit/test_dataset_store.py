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
    assert store.compact() > 0
    assert not os.path.exists(stray) and not os.path.exists(os.path.join(store.root, "x.parquet.tmp"))
