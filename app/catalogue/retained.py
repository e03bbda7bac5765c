"""Every retained row of a model: what exact retraining trains on (a consolidation, the
planner's ``retrain``), unlike an approximate job's bounded sample (``service.retained_arrays``)."""
from __future__ import annotations

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import TrainingInstance
from .service import _store, by_ids, load_arrays


def all_retained_arrays(session: Session, model_name: str, exclude: set[str],
                        batch_size: int = 8192, with_ids: bool = False):
    """EVERY retained training row of the model (what exact retraining trains on, unlike a
    job's bounded sample): the training split streamed through the store batch by batch
    (storage order), kept when the row is a live instance of this model and not excluded;
    live rows stored outside that split are read by id. Labels are the catalogue's."""
    import pyarrow as pa

    from ..datasets.formats import decode

    live = {iid: label for iid, label in session.execute(select(TrainingInstance.instance_id, TrainingInstance.label)
                                                          .where(TrainingInstance.model_name == model_name,
                                                                 TrainingInstance.erased_at.is_(None)))}
    for i in exclude:
        live.pop(i, None)
    roots = session.execute(select(TrainingInstance.storage_uri).where(TrainingInstance.model_name == model_name)
                            .distinct()).scalars().all()
    xs, ids = [], []
    for root in roots:
        store = _store(root)
        for table in store.batches("train", batch_size):
            got = table.column("instance_id").to_pylist()
            keep = [i in live for i in got]
            if not any(keep):
                continue
            table = table.filter(pa.array(keep))
            x, _ = decode(table, store.schema)
            xs.append(x)
            ids += table.column("instance_id").to_pylist()
    seen = set(ids)
    rest = [i for i in live if i not in seen]
    if rest:  # catalogued from another split (an uploaded model's manifest may name any row)
        rows = by_ids(session, model_name, rest)
        x, _ = load_arrays([rows[i] for i in rest])
        xs.append(x)
        ids += rest
    if not ids:
        out = np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    else:
        out = np.concatenate(xs), np.array([live[i] for i in ids], dtype=np.int64)
    return (*out, ids) if with_ids else out


def retained_count(session: Session, model_name: str, exclude: set[str]) -> int:
    """Live training instances of the model, ``exclude``d ones left out."""
    live = TrainingInstance.model_name == model_name, TrainingInstance.erased_at.is_(None)
    n = session.execute(select(func.count()).select_from(TrainingInstance).where(*live)).scalar()
    held = 0
    ids = sorted(exclude)
    for i in range(0, len(ids), 500):
        held += session.execute(select(func.count()).select_from(TrainingInstance).where(
            *live, TrainingInstance.instance_id.in_(ids[i:i + 500]))).scalar()
    return int(n - held)
