"""Dataset services: register (from an upload, a server-side path/URI, or an in-memory
table: the demo goes through the same function), look up, open the store, erase.

Registration is all or nothing: rows are written into a staging directory and the
dataset becomes ``ready`` only when every row passed its checks; on any error the staging
directory is removed and the row says ``failed`` with the error's code and detail (or,
for an inline registration, the row is deleted and the caller gets the error)."""
from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..security.pseudonyms import subject_refs
from ..db import session_scope
from ..settings import Settings
from .formats import Converter, DatasetError, Source, Spec, bad
from .models import FAILED, INGESTING, READY, Dataset
from .store import FRAGMENT_ROWS, DatasetStore, DuplicateIds, EraseReport

log = logging.getLogger("lethe.datasets")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


# --- where things are ---------------------------------------------------------------------------
def datasets_dir(settings: Settings) -> str:
    return os.path.join(settings.data_dir, "datasets")


def store_dir(settings: Settings, name: str) -> str:
    return os.path.join(datasets_dir(settings), name)


def open_store(settings: Settings, name: str) -> DatasetStore:
    path = store_dir(settings, name)
    if not os.path.isdir(path):
        raise DatasetError(404, "unknown_dataset", f"dataset {name!r} has no store")
    return DatasetStore(path)


def get(session: Session, name: str) -> Dataset | None:
    return session.get(Dataset, name)


def get_ready(session: Session, name: str) -> Dataset:
    ds = session.get(Dataset, name)
    if ds is None:
        raise DatasetError(404, "unknown_dataset", f"dataset {name!r} is not registered")
    if ds.status != READY:
        raise DatasetError(409, "dataset_not_ready", f"dataset {name!r} is {ds.status}")
    return ds


def list_all(session: Session) -> list[Dataset]:
    return list(session.execute(select(Dataset).order_by(Dataset.name)).scalars())


def models_using(session: Session, name: str) -> list[str]:
    from ..registry.models import RegisteredModel

    return list(session.execute(select(RegisteredModel.name).where(RegisteredModel.dataset == name)
                                .order_by(RegisteredModel.name)).scalars())


# --- server-side locations ----------------------------------------------------------------------
def resolve_location(settings: Settings, uri: str):
    """(path, filesystem or None) for a server-side location the operator allows
    (LETHE_DATASET_ROOTS: local directories or URI prefixes such as ``s3://bucket/data/``)."""
    roots = settings.dataset_root_list
    if not roots:
        raise bad("path_not_allowed", "server-side paths are disabled (LETHE_DATASET_ROOTS is empty); upload the file")
    if "://" in uri and not uri.startswith("file://"):
        prefixes = [r if r.endswith("/") else r + "/" for r in roots if "://" in r]
        if ".." in uri.split("/") or not any(uri.startswith(p) for p in prefixes):
            raise bad("path_not_allowed", f"{uri!r} is not under an allowed root (LETHE_DATASET_ROOTS)")
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        if not fs.exists(path):
            raise bad("not_found", f"{uri!r} does not exist")
        return path, fs, fs.size(path)
    path = os.path.realpath(uri[len("file://"):] if uri.startswith("file://") else uri)
    allowed = [os.path.realpath(r) for r in roots if "://" not in r]
    if not any(path == r or path.startswith(r + os.sep) for r in allowed):
        raise bad("path_not_allowed", f"{uri!r} is not under an allowed root (LETHE_DATASET_ROOTS)")
    if not os.path.isfile(path):
        raise bad("not_found", f"{uri!r} is not a file")
    return path, None, os.path.getsize(path)


# --- registration -------------------------------------------------------------------------------
def begin(session: Session, name: str, *, source: str, actor: str) -> Dataset:
    """Claim the name: a row in ``ingesting`` (a failed registration of the name is replaced)."""
    if not NAME_RE.match(name or ""):
        raise bad("bad_name", "dataset name: 1-64 characters, a-z 0-9 . _ -, starting with a letter or digit")
    old = session.get(Dataset, name)
    if old is not None:
        if old.status != FAILED:
            raise DatasetError(409, "dataset_exists", f"dataset {name!r} is already registered ({old.status})")
        session.delete(old)
        session.flush()
    row = Dataset(name=name, status=INGESTING, source=source[:1024], created_by=actor[:128])
    session.add(row)
    session.flush()
    return row


def ingest(settings: Settings, name: str, source: Source, spec: Spec, eval_source: Source | None = None) -> dict:
    """Check and write every row into a staging store, then move it into place and mark
    the dataset ready. Raises DatasetError (the staging store is gone by then)."""
    summary = build_store(settings, name, source, spec, eval_source)
    from ..audit import service as audit

    with session_scope(settings.database_url) as db:
        row = db.get(Dataset, name)
        apply_summary(row, summary)
        audit.append(db, actor=row.created_by or "api", action="dataset.registered",
                     payload={"dataset": name, "source": row.source, "kind": row.kind, "train_rows": row.train_rows,
                              "test_rows": row.test_rows, "subjects": row.subjects, "split_rule": row.split_rule})
    log.info("dataset %s ready: %d train + %d test rows in %.1f s", name, summary["train_rows"], summary["test_rows"],
             summary["seconds"])
    return summary


def apply_summary(row: Dataset, summary: dict) -> None:
    row.status, row.progress, row.kind = READY, 1.0, summary["schema"]["kind"]
    row.schema, row.classes = summary["schema"], summary["schema"]["classes"]
    row.train_rows, row.test_rows = summary["train_rows"], summary["test_rows"]
    row.subjects, row.bytes, row.split_rule = summary["subjects"], summary["bytes"], summary["split_rule"]


def build_store(settings: Settings, name: str, source: Source, spec: Spec, eval_source: Source | None = None,
                *, progress: bool = True) -> dict:
    """The store half of ``ingest`` (no dataset row touched but the progress; the data
    migration uses it with ``progress=False``)."""
    staging = os.path.join(datasets_dir(settings), ".staging", f"{name}-{uuid.uuid4().hex[:8]}")
    os.makedirs(os.path.dirname(staging), exist_ok=True)
    t0 = time.perf_counter()
    try:
        summary = _ingest_into(settings, name, staging, source, spec, eval_source, progress)
        final = store_dir(settings, name)
        if os.path.exists(final):  # left by a crash after the move of an earlier, failed attempt
            _destroy(final)
        os.replace(staging, final)
    except BaseException:
        _destroy(staging)
        raise
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def _destroy(root: str) -> None:
    """A store directory and its fragments, wherever they are (every object version)."""
    if os.path.exists(os.path.join(root, "schema.json")):
        try:
            DatasetStore(root).destroy()
        except Exception:  # noqa: BLE001 - a half-written store: remove what is here
            log.exception("removing the fragments of %s failed", root)
    shutil.rmtree(root, ignore_errors=True)


def _ingest_into(settings, name, staging, source, spec, eval_source, progress=True) -> dict:
    conv = Converter(spec)
    schema = conv.resolve(source, [eval_source] if eval_source is not None else [])
    has_split = "split" in source.schema.names
    if eval_source is not None:
        missing = [c for c in source.schema.names if c != "split" and c not in eval_source.schema.names]
        if missing:
            raise bad("missing_columns", f"the evaluation file lacks columns of the training file: {missing}")
        rule = "eval_file"
    elif has_split:
        rule = "split_column"
    elif spec.test_fraction is not None:
        if not 0.0 < spec.test_fraction < 1.0:
            raise bad("bad_test_fraction", f"test_fraction must be in (0, 1); got {spec.test_fraction}")
        rule = f"random:{spec.test_fraction}:seed={spec.seed}"
    else:
        raise bad("no_eval_split", "declare a held-out evaluation split: a 'split' column (train/test), an "
                                   "evaluation file, or test_fraction; verification needs data never trained on")
    store = None
    rng = np.random.default_rng(spec.seed)
    pending: dict[str, list] = {"train": [], "test": []}
    total = (source.total_rows or 0) + ((eval_source.total_rows or 0) if eval_source is not None else 0)
    done, last = 0, time.monotonic()

    def flush(split: str, force: bool = False) -> None:
        parts = pending[split]
        if not parts or (not force and sum(t.num_rows for t, _ in parts) < FRAGMENT_ROWS):
            return
        table = pa.concat_tables([t for t, _ in parts])
        refs = pa.concat_arrays([r for _, r in parts])
        pending[split] = []
        try:
            store.ingest(split, table, refs)
        except DuplicateIds as e:
            raise bad("duplicate_instance_ids", str(e))

    for src, role in ((source, "main"), (eval_source, "eval")):
        if src is None:
            continue
        for batch in src.batches():
            table, subjects, is_test = conv.convert(batch)
            if store is None:  # the tensor/image shape is known after the first batch
                store = DatasetStore.create(staging, conv.schema, conv.arrow_schema(), settings.dataset_compression,
                                            settings.dataset_url)
            n = table.num_rows
            if role == "eval":
                is_test = np.ones(n, bool) if is_test is None else is_test
            elif is_test is None:
                is_test = rng.random(n) < spec.test_fraction if rule.startswith("random") else np.zeros(n, bool)
            if subjects:  # one HMAC per distinct subject of the batch, mapped back to the rows in Arrow
                sids = pa.array(subjects, pa.string())
                uniq = pc.drop_null(pc.unique(pc.if_else(pc.equal(sids, ""), None, sids)))
                refs = pc.take(pa.array(subject_refs(settings.subject_secret, uniq.to_pylist()), pa.string()),
                               pc.index_in(sids, value_set=uniq))
            else:
                refs = pa.nulls(n, pa.string())
            order = pa.array(rng.permutation(n))  # rows of a chunk shuffled: a row group is a random draw (store.sample)
            table, is_test, refs = table.take(order), is_test[order.to_numpy()], refs.take(order)
            for split, mask in (("train", ~is_test), ("test", is_test)):
                if mask.any():
                    idx = pa.array(np.nonzero(mask)[0])
                    pending[split].append((table.take(idx), refs.take(idx)))
                    flush(split)
            done += n
            if progress and total and time.monotonic() - last > 1.0:
                last = time.monotonic()
                _progress(settings, name, min(0.99, done / total))
    if store is None:
        raise bad("empty_dataset", "the file holds no rows")
    for split in ("train", "test"):
        flush(split, force=True)
    store.seal()
    counts = store.counts()
    if not counts["train"] or not counts["test"]:
        raise bad("empty_split", f"both splits need rows; got {counts['train']} train and {counts['test']} test")
    summary = {"schema": conv.schema, "train_rows": counts["train"], "test_rows": counts["test"],
               "subjects": store.subject_count(), "bytes": store.disk_bytes(), "split_rule": rule}
    store.close()  # before the staging directory moves into place
    return summary


def _progress(settings: Settings, name: str, fraction: float) -> None:
    with session_scope(settings.database_url) as db:
        row = db.get(Dataset, name)
        if row is not None and row.status == INGESTING:
            row.progress = round(fraction, 4)


def fail(settings: Settings, name: str, err: DatasetError) -> None:
    with session_scope(settings.database_url) as db:
        row = db.get(Dataset, name)
        if row is not None and row.status == INGESTING:
            row.status, row.error_code, row.error_detail = FAILED, err.code, err.detail[:4000]


def register(settings: Settings, name: str, source: Source, spec: Spec, *, source_desc: str, actor: str,
             eval_source: Source | None = None, keep_failed: bool = False) -> dict:
    """begin + ingest in this thread. A refused registration leaves no row (or, with
    ``keep_failed``, a ``failed`` row that says why: what a background ingestion leaves)."""
    with session_scope(settings.database_url) as db:
        begin(db, name, source=source_desc, actor=actor)
    try:
        return ingest(settings, name, source, spec, eval_source)
    except BaseException as e:
        err = e if isinstance(e, DatasetError) else DatasetError(
            500, "ingest_failed", f"ingestion failed: {e.__class__.__name__}: {e}"[:2000])
        if keep_failed:
            fail(settings, name, err)
        else:
            with session_scope(settings.database_url) as db:
                row = db.get(Dataset, name)
                if row is not None and row.status == INGESTING:
                    db.delete(row)
        if not isinstance(e, DatasetError):
            log.exception("dataset %s: ingestion failed", name)
        raise err from e


class TableSource(Source):
    """An in-memory Arrow table read like a file (the demo datasets, tests)."""

    def __init__(self, table: pa.Table):
        self.path, self.fmt, self.fs, self.table = "<table>", "table", None, table
        self.schema, self.total_rows = table.schema, table.num_rows

    def batches(self, columns=None):
        t = self.table.select(columns) if columns else self.table
        yield from t.to_batches(65_536)


def recover(settings: Settings) -> int:
    """At start-up: an ingestion that was running when the process died is failed and its
    staging store removed."""
    staging = os.path.join(datasets_dir(settings), ".staging")
    for name in os.listdir(staging) if os.path.isdir(staging) else []:
        _destroy(os.path.join(staging, name))
    shutil.rmtree(staging, ignore_errors=True)
    n = 0
    with session_scope(settings.database_url) as db:
        for row in db.execute(select(Dataset).where(Dataset.status == INGESTING)).scalars():
            row.status, row.error_code = FAILED, "interrupted"
            row.error_detail = "the service stopped while this dataset was being ingested; register it again"
            n += 1
    return n


# --- erasure ------------------------------------------------------------------------------------
def erase(settings: Settings, name: str, instance_ids: Iterable[str]) -> EraseReport:
    """Physically remove rows from the dataset's store and count them as erased."""
    store = open_store(settings, name)
    report = store.erase(instance_ids)
    with session_scope(settings.database_url) as db:
        row = db.get(Dataset, name)
        if row is not None:
            row.record_erasure(store, report.rows)
    return report


def holdout_arrays(settings: Settings, name: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's held-out (test) rows as arrays, at most ``limit`` of them, in
    instance-id order (for the demo datasets: the order of ``models/data.py``)."""
    import pyarrow.compute as pc

    from .formats import decode

    store = open_store(settings, name)
    parts, n = [], 0
    for b in store.batches("test", batch_size=min(limit, 8192)):
        parts.append(b)
        n += b.num_rows
        if n >= limit:
            break
    table = pa.concat_tables(parts) if parts else store.arrow_schema.empty_table()
    table = table.take(pc.sort_indices(table, [("instance_id", "ascending")])).slice(0, limit)
    return decode(table, store.schema)


def compact_due(settings: Settings, *, force: bool = False, actor: str = "compactor") -> list[dict]:
    """Physically remove hidden rows (``DatasetStore.compact``) from every store whose oldest
    hidden row is at least half of ``LETHE_ERASE_WITHIN_S`` old (or any with hidden rows,
    ``force``): erasures arriving within that half are rewritten in one batch, and a caller
    running at least every half bound (the sweeper, each worker after its job) keeps every
    row within the bound. Each compaction is a signed audit event, ``dataset.compacted``,
    stating when the bytes were gone and the newest erasure it covers (``hidden_through``);
    a deletion certificate names it. Returns the events' payloads."""
    import datetime as dt

    from ..audit import service as audit

    root = datasets_dir(settings)
    if not os.path.isdir(root):
        return []
    done = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith(".") or not os.path.exists(os.path.join(path, "index.sqlite")):
            continue
        store = DatasetStore(path)
        try:
            n, oldest = store.pending()
            if not n or (not force and time.time() - oldest < settings.erase_within_s / 2):
                continue
            if time.time() - oldest > settings.erase_within_s:
                log.warning("dataset %s: %d erased rows hidden for %.0f s, past LETHE_ERASE_WITHIN_S=%.0f",
                            name, n, time.time() - oldest, settings.erase_within_s)
            rep = store.compact()
            if not rep.rows:
                continue
            payload = {"dataset": name, "rows": rep.rows, "fragments_rewritten": rep.fragments_rewritten,
                       "bytes_rewritten": rep.bytes_rewritten, "bytes_deleted": rep.bytes_deleted,
                       "hidden_through": dt.datetime.fromtimestamp(rep.compacted_through, dt.timezone.utc)
                       .isoformat(timespec="microseconds"),
                       "bytes_gone_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")}
            with session_scope(settings.database_url) as db:
                row = db.get(Dataset, name)
                if row is not None:
                    row.bytes = store.disk_bytes()
                audit.append(db, actor=actor, action="dataset.compacted", payload=payload)
            log.info("dataset %s: compacted %d erased rows (%d fragments, %d bytes rewritten)", name, rep.rows,
                     rep.fragments_rewritten, rep.bytes_rewritten)
            done.append(payload)
        finally:
            store.close()
    return done
