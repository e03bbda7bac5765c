"""Carry an installation from the per-instance ``.npy`` catalogue (before migration 0009)
into the dataset store: one store per dataset named in the catalogue, holding every live
instance whose file is still there (deduplicated across models) and, for the shipped
datasets, their held-out split; called by ``migrations/versions/0009_catalogue_store.py``."""
from __future__ import annotations

import logging
import os
import shutil
import time

import numpy as np
import pyarrow as pa

from . import service
from .demo import test_id
from .formats import Converter, Spec
from .store import DatasetStore

log = logging.getLogger("lethe.datasets.legacy")


def import_npy_catalogue(data_dir: str, rows: list[dict], classes_of: dict[str, list[str]]) -> list[dict]:
    """``rows``: the catalogue rows that point to ``.npy`` files (instance_id, dataset,
    subject_ref, label, storage_uri, erased_at). Writes one store per dataset under
    ``<data_dir>/datasets/<name>`` and returns one ``datasets`` row (dict) per dataset. The
    ``.npy`` files are left for ``remove_npy_files`` (after the stores are in place)."""
    from models.data import LOADERS, load_dataset

    out = []
    by_dataset: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["erased_at"] is None and os.path.exists(r["storage_uri"]):
            by_dataset.setdefault(r["dataset"], {}).setdefault(r["instance_id"], r)
    for name, live in sorted(by_dataset.items()):
        t0 = time.perf_counter()
        ids = sorted(live)
        x = np.stack([np.load(live[i]["storage_uri"], allow_pickle=False) for i in ids]).astype(np.float32)
        shape = list(x.shape[1:])
        classes = classes_of.get(name) or [str(c) for c in range(max(live[i]["label"] for i in ids) + 1)]
        train = pa.table({"instance_id": ids, "label": [live[i]["label"] for i in ids],
                          "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(len(ids), -1).ravel()),
                                                                        int(np.prod(shape)))})
        conv = Converter(Spec(kind="tensor", shape=shape, classes=classes))
        conv.resolve(service.TableSource(train))
        root = os.path.join(data_dir, "datasets", name)
        if os.path.exists(root):  # a previous, interrupted run of this migration
            shutil.rmtree(root)
        store = DatasetStore.create(root, conv.schema, conv.arrow_schema())
        table, _, _ = conv.convert(train.combine_chunks().to_batches()[0])
        store.ingest("train", table, [live[i]["subject_ref"] for i in ids])
        rule = "none (migrated catalogue without held-out rows)"
        if name in LOADERS:  # a shipped dataset: its held-out split as a fresh install has it
            ds = load_dataset(name)
            xt = ds.x_test.numpy().reshape(len(ds.y_test), -1)
            test = pa.table({"instance_id": [test_id(name, i) for i in range(len(xt))],
                             "label": ds.y_test.numpy().astype(np.int32),
                             "x": pa.FixedSizeListArray.from_arrays(pa.array(xt.ravel()), xt.shape[1])})
            store.ingest("test", test.cast(store.arrow_schema))
            rule = "split_column"
        store.seal()
        counts = store.counts()
        out.append({"name": name, "kind": "tensor", "schema": conv.schema, "classes": classes,
                    "train_rows": counts["train"], "test_rows": counts["test"], "subjects": store.subject_count(),
                    "bytes": store.disk_bytes(), "split_rule": rule, "root": root,
                    "seconds": round(time.perf_counter() - t0, 3)})
        log.info("migrated %d instances of %s into the store in %.1f s", counts["train"], name, out[-1]["seconds"])
    return out


def remove_npy_files(rows: list[dict]) -> int:
    """Delete the per-instance files (live ones now live in a store; erased ones had to go)."""
    n = 0
    for r in rows:
        path = r["storage_uri"]
        if path.endswith(".npy") and os.path.exists(path):
            os.unlink(path)
            n += 1
            parent = os.path.dirname(path)
            if not os.listdir(parent):
                os.rmdir(parent)
    return n
