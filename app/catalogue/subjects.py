"""A subject's rows wherever they are: every registered dataset, every split (training and
held-out), whether or not a model was trained on them.

A model's catalogue (``catalogue_instances``) holds only the rows it trained on; the
datasets' stores hold every row with its subject reference in their index. A subject-wide
erasure (GDPR Art. 17: all of a person's data, not only what a model trained on) therefore
reads the stores: rows that a model still holds live are erased through that model's
lineage (a job, then ``catalogue.purge_erased_raw``); every other row of the subject — its
held-out rows, rows of a dataset no model uses, training rows no manifest named — is
removed from the store at once (``erase_unheld``). Each model that evaluates on a dataset
whose held-out split shrank gets the smaller split from then on (its metrics are computed
on what remains); the group records the sizes before and after."""
from __future__ import annotations

import logging
import os

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..db import session_scope, utcnow
from .models import TrainingInstance

log = logging.getLogger("lethe.erasure")


def _ready_datasets(session: Session, only: set[str] | None = None) -> list[str]:
    from ..datasets.models import READY, Dataset

    names = session.execute(select(Dataset.name).where(Dataset.status == READY).order_by(Dataset.name)).scalars()
    return [n for n in names if only is None or n in only]


def _store(settings, name: str):
    from ..datasets import service as datasets
    from ..datasets.store import DatasetStore

    path = datasets.store_dir(settings, name)
    return DatasetStore(path) if os.path.isdir(path) else None


def rows_in_stores(session: Session, settings, ref: str, datasets: set[str] | None = None
                   ) -> dict[str, dict[str, list[str]]]:
    """{dataset: {split: instance ids}} of the subject ``ref`` in every ready dataset (or
    those in ``datasets``): one index probe per dataset."""
    out: dict[str, dict[str, list[str]]] = {}
    for name in _ready_datasets(session, datasets):
        store = _store(settings, name)
        got = store.subject_rows(ref) if store is not None else {}
        if got:
            out[name] = got
    return out


def held_live(session: Session, dataset: str, ids: list[str]) -> set[str]:
    """The ids among ``ids`` (rows of ``dataset``) that some model's catalogue still holds
    live (not erased): those go through the model's lineage, not straight from the store."""
    found: set[str] = set()
    for i in range(0, len(ids), 500):
        found.update(session.execute(select(TrainingInstance.instance_id).where(
            TrainingInstance.dataset == dataset, TrainingInstance.instance_id.in_(ids[i:i + 500]),
            TrainingInstance.erased_at.is_(None))).scalars())
    return found


def plan(session: Session, settings, ref: str, datasets: set[str] | None = None) -> dict:
    """What a group records at submission: {dataset: {"rows": {split: n}}}, every row of the
    subject in each dataset (training and held-out)."""
    return {name: {"rows": {split: len(ids) for split, ids in sorted(by_split.items())}}
            for name, by_split in rows_in_stores(session, settings, ref, datasets).items()}


def erase_unheld(settings, group_id: str, actor: str = "lethe") -> bool:
    """Remove from the stores every row of the group's subject that no model holds live
    (held-out rows, rows no model trained on), record per dataset and split what was removed
    and how each using model's evaluation set changed, and audit it (``dataset.rows_erased``).
    Runs once per group: the group row is claimed by setting ``rows_erased_at`` in the same
    transaction (a crash before the commit leaves it to ``erase_pending``). Removing rows
    from a store is idempotent, so a crash after the files changed and before the commit
    only repeats work. Returns whether this call did the work."""
    from ..audit import service as audit
    from ..datasets import service as datasets
    from ..datasets.models import Dataset
    from ..forget.models import ErasureGroup

    with session_scope(settings.database_url) as db:
        claimed = db.execute(update(ErasureGroup).where(ErasureGroup.id == group_id,
                                                        ErasureGroup.rows_erased_at.is_(None))
                             .values(rows_erased_at=utcnow())).rowcount
        if not claimed:
            return False
        group = db.get(ErasureGroup, group_id)
        if group.datasets is None:  # recorded before erasures reached the stores: the datasets of its models
            group.datasets = plan(db, settings, group.subject_ref, _datasets_of_models(db, group.models))
        record = {name: dict(entry) for name, entry in (group.datasets or {}).items()}
        for name in sorted(record):
            store = _store(settings, name)
            by_split = store.subject_rows(group.subject_ref) if store is not None else {}
            split_of = {i: split for split, ids in by_split.items() for i in ids}
            live = held_live(db, name, sorted(split_of))
            gone = sorted(i for i in split_of if i not in live)
            before = store.counts() if store is not None else {}
            report = store.erase(gone) if gone else None
            now_split: dict[str, int] = {}
            for i in gone:
                now_split[split_of[i]] = now_split.get(split_of[i], 0) + 1
            after = store.counts() if store is not None else {}
            ds = db.get(Dataset, name)
            if ds is not None and report is not None:
                ds.record_erasure(store, report.rows)
            for k in range(0, len(gone), 500):  # rows other models had forgotten: their raw data is gone now
                db.execute(update(TrainingInstance).where(
                    TrainingInstance.dataset == name, TrainingInstance.instance_id.in_(gone[k:k + 500]),
                    TrainingInstance.erased_at.is_not(None), TrainingInstance.raw_deleted_at.is_(None))
                    .values(raw_deleted_at=utcnow()))
            users = datasets.models_using(db, name)
            entry = record[name]
            entry["erased_from_store"] = dict(sorted(now_split.items()))
            entry["through_models"] = len(live)
            entry["held_out_rows"] = {"before": before.get("test", 0), "after": after.get("test", 0)}
            entry["evaluation_changed_for"] = users if before.get("test", 0) != after.get("test", 0) else []
            audit.append(db, actor=actor, action="dataset.rows_erased", subject_ref=group.subject_ref,
                         payload={"erasure_id": group.id, "dataset": name, **entry})
        group.datasets = record
    return True


def _datasets_of_models(session: Session, models: list[str]) -> set[str]:
    from ..registry.models import RegisteredModel

    return set(session.execute(select(RegisteredModel.dataset).where(RegisteredModel.name.in_(list(models))))
               .scalars()) - {None}


def erase_pending(settings) -> int:
    """Groups whose store erasure did not happen (the process stopped between the commit and
    it): done now. Run by the sweeper and when the embedded worker starts."""
    from ..forget.models import ErasureGroup

    with session_scope(settings.database_url) as db:
        ids = list(db.execute(select(ErasureGroup.id).where(ErasureGroup.rows_erased_at.is_(None))).scalars())
    done = 0
    for gid in ids:
        try:
            done += erase_unheld(settings, gid, actor="sweeper")
        except Exception:  # one dataset's failure must not stop the others; the next sweep retries
            log.exception("store erasure of erasure group %s failed; retried by the next sweep", gid)
    return done


def still_stored(settings, ref: str, datasets: list[str]) -> dict[str, dict[str, int]]:
    """{dataset: {split: rows}} of the subject that the stores still hold (a certificate says
    whether every row is gone)."""
    out: dict[str, dict[str, int]] = {}
    for name in datasets:
        store = _store(settings, name)
        got = store.subject_rows(ref) if store is not None else {}
        if got:
            out[name] = {s: len(v) for s, v in got.items()}
    return out
