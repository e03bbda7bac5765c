"""Catalogue services: subject references, selection of instances, reading their data
through the dataset store, erasure, physical removal of erased rows.

A catalogue row says that a model was trained on one row of a dataset; ``storage_uri`` is
that dataset's store directory (``app/datasets/store.py``), so the row's data is read with
the store's verbs and never copied per instance."""
from __future__ import annotations

import hashlib
import os


import numpy as np
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from ..db import utcnow
from .models import TrainingInstance


def by_subject(session: Session, ref: str, model_name: str | None = None) -> list[TrainingInstance]:
    q = select(TrainingInstance).where(TrainingInstance.subject_ref == ref)
    if model_name:
        q = q.where(TrainingInstance.model_name == model_name)
    return list(session.execute(q.order_by(TrainingInstance.model_name, TrainingInstance.instance_id)).scalars())


def erased_among(session: Session, model_name: str, instance_ids: list[str]) -> list[str]:
    """The ids among ``instance_ids`` already erased from the model (one indexed query; Core,
    on the session's connection: every submission runs it)."""
    return sorted(session.connection().execute(_ERASED_AMONG, {"model": model_name, "ids": list(instance_ids)})
                  .scalars())


def facts_by_ids(session: Session, model_name: str, instance_ids: list[str]) -> dict:
    """What a submission checks of each named instance that the catalogue holds: rows with
    ``instance_id``, ``subject_ref``, ``label``, ``erased_at`` (Core, on the session's
    connection; ``POST /v1/forget`` runs it every time: loading the entities cost four times
    the query)."""
    conn, out = session.connection(), {}
    for i in range(0, len(instance_ids), 500):
        out.update({r.instance_id: r for r in conn.execute(_FACTS_BY_IDS, {"model": model_name,
                                                                            "ids": instance_ids[i:i + 500]})})
    return out


def by_ids(session: Session, model_name: str, instance_ids: list[str]) -> dict[str, TrainingInstance]:
    out: dict[str, TrainingInstance] = {}
    for i in range(0, len(instance_ids), 500):
        rows = session.execute(_BY_IDS, {"model": model_name, "ids": instance_ids[i:i + 500]}).scalars()
        out.update({r.instance_id: r for r in rows})
    return out


# Built once (the ids are an expanding parameter): every submission runs both; building the
# statement and its cache key each time cost about as much as the query itself.
_BY_IDS = select(TrainingInstance).where(TrainingInstance.model_name == bindparam("model"),
                                         TrainingInstance.instance_id.in_(bindparam("ids", expanding=True)))
_T = TrainingInstance.__table__
_FACTS_BY_IDS = select(_T.c.instance_id, _T.c.subject_ref, _T.c.label, _T.c.erased_at).where(
    _T.c.model_name == bindparam("model"), _T.c.instance_id.in_(bindparam("ids", expanding=True)))
_ERASED_AMONG = select(_T.c.instance_id).where(_T.c.model_name == bindparam("model"),
                                               _T.c.instance_id.in_(bindparam("ids", expanding=True)),
                                               _T.c.erased_at.is_not(None))


def retained(session: Session, model_name: str, exclude: set[str]) -> list[TrainingInstance]:
    rows = session.execute(select(TrainingInstance).where(
        TrainingInstance.model_name == model_name, TrainingInstance.erased_at.is_(None))
        .order_by(TrainingInstance.id)).scalars()
    return [r for r in rows if r.instance_id not in exclude]


def content_hash(arr: np.ndarray) -> str:
    """sha256 of a row's features as float32 (shape included): checked when a job reads it."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    h = hashlib.sha256()
    h.update(repr(tuple(arr.shape)).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _store(root: str):
    from ..datasets.store import DatasetStore

    return DatasetStore(root)


def load_arrays(rows: list[TrainingInstance], *, check_hash: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of ``rows`` (in that order), read from their dataset's store:
    only the row groups that hold them. KeyError when the store no longer holds one."""
    from ..datasets.formats import decode

    if not rows:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    by_store: dict[str, list[int]] = {}
    for pos, r in enumerate(rows):
        by_store.setdefault(r.storage_uri, []).append(pos)
    x = None
    for root, positions in by_store.items():
        store = _store(root)
        part, _ = decode(store.read([rows[p].instance_id for p in positions]), store.schema)
        if x is None:
            x = np.empty((len(rows), *part.shape[1:]), dtype=part.dtype)
        x[positions] = part
    if check_hash:
        for r, arr in zip(rows, x):
            if content_hash(arr) != r.content_hash:
                raise RuntimeError(f"raw data of {r.instance_id} does not match its catalogued content hash")
    y = np.array([r.label for r in rows], dtype=np.int64)
    return x, y


def retained_arrays(session: Session, model_name: str, exclude: set[str], limit: int,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Retained training data for a job, at most ``limit`` rows: all of it (in catalogue
    order) when the model has no more, else a random sample drawn through the store (random
    row groups, kept when the row is a live instance of this model), so a job's memory
    follows ``limit``, not the size of the dataset."""
    from ..datasets.formats import decode

    live = TrainingInstance.model_name == model_name, TrainingInstance.erased_at.is_(None)
    n = session.execute(select(func.count()).select_from(TrainingInstance).where(*live)).scalar()
    if n - len(exclude) <= limit:
        return load_arrays(retained(session, model_name, exclude))
    root = session.execute(select(TrainingInstance.storage_uri).where(*live).limit(1)).scalar()

    def is_live(ids: list[str]) -> list[bool]:
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            found.update(session.execute(select(TrainingInstance.instance_id).where(
                *live, TrainingInstance.instance_id.in_(ids[i:i + 500]))).scalars())
        return [i in found for i in ids]

    store = _store(root)
    return decode(store.sample(limit, seed=seed, exclude=exclude, where=is_live), store.schema)


class LineageError(ValueError):
    """A manifest that disagrees with its dataset: ``code`` says how, the message names the ids."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail


def rows_for_model(store_root: str, model_name: str, dataset: str, ids: list[str] | None = None,
                   subject_refs: dict[str, str | None] | None = None) -> list[dict]:
    """Catalogue rows (dicts for a bulk insert) of a model trained on ``ids`` of a
    dataset's training split (all of it when None). The dataset is the one source of truth
    for whose row it is: subject and label come from the store's index; ``subject_refs``
    (a manifest's, keyed) may only repeat them. Raises ``LineageError``: ``not_training_rows``
    (held-out rows, or ids the dataset does not hold, named) or ``subject_mismatch``."""
    from ..datasets.formats import decode

    store = _store(store_root)
    index = store.index("train") if ids is None else store.index("train", ids=ids)
    meta = {iid: (ref, label) for iid, ref, label in index}
    order = [i for i, _, _ in index] if ids is None else ids
    missing = [i for i in order if i not in meta]
    if missing:
        held_out = set(store.locate(missing))
        parts = [f"held-out rows (the dataset's test split): {_ids_preview([i for i in missing if i in held_out])}"
                 if held_out else "",
                 f"not in the dataset: {_ids_preview([i for i in missing if i not in held_out])}"
                 if len(held_out) < len(missing) else ""]
        raise LineageError("not_training_rows" if held_out else "unknown_instances",
                           f"a manifest names only training rows of dataset {dataset!r}; "
                                                + "; ".join(p for p in parts if p))
    wrong = sorted(i for i, ref in (subject_refs or {}).items() if ref is not None and ref != meta[i][0])
    if wrong:
        raise LineageError("subject_mismatch", f"the manifest's subject_id disagrees with dataset {dataset!r} for: "
                                               f"{_ids_preview(wrong)} (the dataset says whose each row is: omit "
                                               "subject_id, or correct the dataset)")
    rows = []
    for k in range(0, len(order), 4096):
        chunk = order[k:k + 4096]
        x, y = decode(store.read(chunk), store.schema)
        for iid, arr, label in zip(chunk, x, y):
            rows.append(dict(model_name=model_name, instance_id=iid, dataset=dataset, subject_ref=meta[iid][0],
                             label=int(label), content_hash=content_hash(arr), storage_uri=store_root))
    return rows


def _ids_preview(ids: list[str], n: int = 10) -> str:
    return ", ".join(ids[:n]) + (f" (and {len(ids) - n} more)" if len(ids) > n else "")


def disagreeing_rows(session, store_for, limit: int = 20) -> dict[str, dict]:
    """Models whose catalogue disagrees with its dataset (registered before manifests were
    checked against it): {model: {"dataset", "held_out_rows": n, "subject_mismatch": n,
    "examples": ids}}. ``session``: a Session or a Connection (a migration's). ``store_for(dataset)``:
    the dataset's DatasetStore, or None. Reported,
    never rewritten: which side is right is the operator's call."""
    out: dict[str, dict] = {}
    groups: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
    for model, dataset, iid, ref in session.execute(select(
            TrainingInstance.model_name, TrainingInstance.dataset, TrainingInstance.instance_id,
            TrainingInstance.subject_ref).where(TrainingInstance.raw_deleted_at.is_(None))):
        groups.setdefault((model, dataset), []).append((iid, ref))
    for (model, dataset), rows in sorted(groups.items()):
        store = store_for(dataset)
        if store is None:
            continue
        ids = [i for i, _ in rows]
        train = {iid: ref for iid, ref, _ in store.index("train", ids=ids)}
        held_out = sorted(store.locate([i for i in ids if i not in train]))
        mismatch = [i for i, ref in rows if i in train and train[i] != ref]
        if held_out or mismatch:
            out[model] = {"dataset": dataset, "held_out_rows": len(held_out), "subject_mismatch": len(mismatch),
                          "examples": sorted(held_out + mismatch)[:limit]}
    return out


def set_locations(session: Session, model_name: str, locations: dict[str, tuple[int, int | None]]) -> int:
    """Record where each instance of a sharded model sits: (shard or class sub-model, slice;
    slice None = pooled but not trained on, e.g. not selected by ARCANE)."""
    rows = by_ids(session, model_name, list(locations))
    changed = 0
    for iid, (shard, sl) in locations.items():
        r = rows.get(iid)
        if r is not None and (r.shard, r.slice) != (shard, sl):
            r.shard, r.slice = shard, sl
            changed += 1
    session.flush()
    return changed


def mark_erased(session: Session, model_name: str, instance_ids: list[str], job_id: str) -> int:
    now = utcnow()
    res = session.execute(update(TrainingInstance).where(
        TrainingInstance.model_name == model_name, TrainingInstance.instance_id.in_(instance_ids),
        TrainingInstance.erased_at.is_(None)).values(erased_at=now, erased_by_job=job_id))
    return res.rowcount or 0


def purge_erased_raw(session: Session, model_name: str | None = None) -> int:
    """Erase erased instances from their dataset's store (after the erasure committed): a
    row goes once no model's catalogue still holds it live; the store hides it from every
    read at once (its deletion vector) and ``datasets.service.compact_due`` removes its
    bytes within ``LETHE_ERASE_WITHIN_S``; then every catalogue row of it is marked
    ``raw_deleted_at``. Idempotent: run after every job and at start-up, so a crash in
    between leaves nothing behind. Returns rows erased."""
    from ..datasets.models import Dataset

    q = select(TrainingInstance).where(TrainingInstance.erased_at.is_not(None),
                                       TrainingInstance.raw_deleted_at.is_(None))
    if model_name:
        q = q.where(TrainingInstance.model_name == model_name)
    groups: dict[tuple[str, str], set[str]] = {}
    for r in session.execute(q).scalars():
        groups.setdefault((r.storage_uri, r.dataset), set()).add(r.instance_id)
    removed, now = 0, utcnow()
    for (root, dataset), ids in groups.items():
        ids = sorted(ids)
        still_live: set[str] = set()
        for i in range(0, len(ids), 500):
            still_live.update(session.execute(select(TrainingInstance.instance_id).where(
                TrainingInstance.storage_uri == root, TrainingInstance.instance_id.in_(ids[i:i + 500]),
                TrainingInstance.erased_at.is_(None))).scalars())
        gone = [i for i in ids if i not in still_live]
        if not gone:
            continue
        if os.path.isdir(root):
            store = _store(root)
            hidden = store.hide(gone, at=now.timestamp())  # the certificate matches compactions by this time
            ds = session.get(Dataset, dataset)
            if ds is not None:
                ds.record_erasure(store, hidden)
            removed += hidden
        for i in range(0, len(gone), 500):
            session.execute(update(TrainingInstance).where(
                TrainingInstance.storage_uri == root, TrainingInstance.instance_id.in_(gone[i:i + 500]),
                TrainingInstance.raw_deleted_at.is_(None)).values(raw_deleted_at=now))
    session.flush()
    return removed


def data_taint(session: Session, model_name: str) -> int:
    """How many of the model's live (not erased) training instances were erased from another
    model trained on the same data (same dataset and instance id): a model is *tainted*
    until it has forgotten them too. A subject erased with ``POST /v1/forget`` and no model
    reaches every such model; naming one model leaves the others tainted."""
    from sqlalchemy.orm import aliased

    other = aliased(TrainingInstance)
    return int(session.execute(
        select(func.count(func.distinct(TrainingInstance.instance_id)))
        .select_from(TrainingInstance)
        .join(other, (other.dataset == TrainingInstance.dataset) & (other.instance_id == TrainingInstance.instance_id))
        .where(TrainingInstance.model_name == model_name, TrainingInstance.erased_at.is_(None),
               other.model_name != model_name, other.erased_at.is_not(None))).scalar() or 0)
