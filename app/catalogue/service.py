"""Catalogue services: subject references, selection of instances, erasure, raw-data purge."""
from __future__ import annotations

import hashlib
import hmac

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..db import utcnow
from . import store
from .models import TrainingInstance


def subject_ref(secret: str, subject_id: str) -> str:
    """Keyed hash of a subject id; the raw id is never stored."""
    return hmac.new(secret.encode("utf-8"), subject_id.encode("utf-8"), hashlib.sha256).hexdigest()


def by_subject(session: Session, ref: str, model_name: str | None = None) -> list[TrainingInstance]:
    q = select(TrainingInstance).where(TrainingInstance.subject_ref == ref)
    if model_name:
        q = q.where(TrainingInstance.model_name == model_name)
    return list(session.execute(q.order_by(TrainingInstance.model_name, TrainingInstance.instance_id)).scalars())


def erased_among(session: Session, model_name: str, instance_ids: list[str]) -> list[str]:
    """The ids among ``instance_ids`` already erased from the model (one indexed query)."""
    return sorted(session.execute(select(TrainingInstance.instance_id).where(
        TrainingInstance.model_name == model_name, TrainingInstance.instance_id.in_(instance_ids),
        TrainingInstance.erased_at.is_not(None))).scalars())


def by_ids(session: Session, model_name: str, instance_ids: list[str]) -> dict[str, TrainingInstance]:
    out: dict[str, TrainingInstance] = {}
    for i in range(0, len(instance_ids), 500):
        chunk = instance_ids[i:i + 500]
        rows = session.execute(select(TrainingInstance).where(
            TrainingInstance.model_name == model_name, TrainingInstance.instance_id.in_(chunk))).scalars()
        out.update({r.instance_id: r for r in rows})
    return out


def retained(session: Session, model_name: str, exclude: set[str]) -> list[TrainingInstance]:
    rows = session.execute(select(TrainingInstance).where(
        TrainingInstance.model_name == model_name, TrainingInstance.erased_at.is_(None))
        .order_by(TrainingInstance.id)).scalars()
    return [r for r in rows if r.instance_id not in exclude]


def load_arrays(rows: list[TrainingInstance], *, check_hash: bool = False) -> tuple[np.ndarray, np.ndarray]:
    xs = []
    for r in rows:
        arr = store.read(r.storage_uri)
        if check_hash and store.content_hash(arr) != r.content_hash:
            raise RuntimeError(f"raw data of {r.instance_id} does not match its catalogued content hash")
        xs.append(arr)
    x = np.stack(xs).astype(np.float32) if xs else np.zeros((0,), np.float32)
    y = np.array([r.label for r in rows], dtype=np.int64)
    return x, y


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
    """Delete the raw data of erased instances (after the erasure committed). Idempotent:
    run after every job and at start-up, so a crash in between leaves nothing behind."""
    q = select(TrainingInstance).where(TrainingInstance.erased_at.is_not(None),
                                       TrainingInstance.raw_deleted_at.is_(None))
    if model_name:
        q = q.where(TrainingInstance.model_name == model_name)
    rows = list(session.execute(q).scalars())
    now = utcnow()
    for r in rows:
        store.delete(r.storage_uri)
        r.raw_deleted_at = now
    session.flush()
    return len(rows)
