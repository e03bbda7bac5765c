"""The catalogue's columnar store: one directory per dataset, rows in Parquet fragments,
an index beside them. Five verbs and nothing else reaches the files:
``ingest`` (append rows of a split), ``lookup_subject`` / ``locate`` (through the index),
``read`` / ``sample`` / ``batches`` (rows by id, random rows, every row in bounded
batches), ``erase`` (physically remove rows) and ``compact`` (drop files nothing
references).

Layout of ``<data_dir>/datasets/<name>/``::

    schema.json                     the dataset's feature schema (immutable)
    index.sqlite                    instances(instance_id PK, split, subject_ref, label, fragment, pos)
                                    fragments(name PK, split, rows, row_groups, bytes)
    train-000000-g0000.parquet      <= FRAGMENT_ROWS rows, row groups of ROW_GROUP rows
    test-000000-g0000.parquet

Why Parquet with fragment rewrites (the S3 Find-and-Forget approach): pyarrow is already
a dependency; deleting rows means writing the fragment again without them, fsync, making
the new file live in the index in one SQLite transaction, then unlinking the old file, so
the erased bytes exist in no file afterwards. A fragment is bounded (64k rows), so one
erasure rewrites a bounded number of bytes whatever N is. Data pages are written
uncompressed by default (``compression``): the erasure test can then show the bytes *were*
on disk before and are not after; compressed pages would hide them either way. Lance
(``pylance``) and Delta Lake (``deltalake``) were the alternatives; neither is on this
package index, and both add a native dependency for what fits in this module.

The index is an SQLite file owned by the store (not the service database): the store is
self-contained, a subject lookup is one B-tree probe (``subject_ref`` is indexed), and
``secure_delete`` overwrites the freed pages of erased index rows. Subject ids are never
given to the store: callers pass ``subject_ref`` (the service's HMAC).

Concurrency: readers may run at any time (a reader whose fragment was just replaced looks
it up again); ``erase``/``compact``/``ingest`` take an exclusive file lock on the dataset.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FRAGMENT_ROWS = 65_536
ROW_GROUP = 2_048
SPLITS = ("train", "test")
_FRAG = re.compile(r"^(train|test)-(\d{6})-g(\d{4})\.parquet$")
# columns every stored row has; the feature column(s) follow
BASE_FIELDS = [pa.field("instance_id", pa.string(), nullable=False), pa.field("label", pa.int32(), nullable=False)]


@dataclass(frozen=True)
class EraseReport:
    rows: int                    # rows physically removed
    fragments_rewritten: int
    bytes_rewritten: int         # bytes of the new fragment files written
    bytes_deleted: int           # bytes of the old files unlinked


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DatasetStore:
    """One dataset's rows. ``root`` is the dataset's directory."""

    def __init__(self, root: str):
        self.root = root
        self._schema: dict | None = None
        self._local = threading.local()  # one index connection per thread, opened on first use

    # --- creation ------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str, schema: dict, arrow_schema: pa.Schema, compression: str = "none") -> "DatasetStore":
        """A new, empty store; ``schema`` is the dataset's feature schema (JSON), and
        ``arrow_schema`` the columns each fragment holds (instance_id, label, features)."""
        os.makedirs(root, exist_ok=False)
        doc = dict(schema, compression=compression, arrow_schema=arrow_schema.serialize().to_pybytes().hex())
        with open(os.path.join(root, "schema.json"), "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        store = cls(root)
        with store._db() as db:
            db.executescript("""
                CREATE TABLE instances (instance_id TEXT PRIMARY KEY, split TEXT NOT NULL, subject_ref TEXT,
                                        label INTEGER NOT NULL, fragment TEXT NOT NULL, pos INTEGER NOT NULL)
                    WITHOUT ROWID;
                CREATE TABLE fragments (name TEXT PRIMARY KEY, split TEXT NOT NULL, n_rows INTEGER NOT NULL,
                                        row_groups INTEGER NOT NULL, bytes INTEGER NOT NULL);
            """)
        return store

    def seal(self) -> None:
        """Build the secondary indexes (subject, fragment position) once the first bulk
        ingestion is done: one sort is several times faster than updating them row by row.
        Idempotent; ``create`` + ``ingest`` + ``seal`` is how a dataset is written."""
        with self._db() as db:
            db.execute("CREATE INDEX IF NOT EXISTS instances_subject ON instances(subject_ref) "
                       "WHERE subject_ref IS NOT NULL")
            db.execute("CREATE INDEX IF NOT EXISTS instances_fragment ON instances(fragment, pos)")

    @property
    def schema(self) -> dict:
        if self._schema is None:
            with open(os.path.join(self.root, "schema.json")) as f:
                self._schema = json.load(f)
        return self._schema

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(self.schema["arrow_schema"])))

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(os.path.join(self.root, "index.sqlite"), timeout=60, isolation_level=None)
            con.execute("PRAGMA secure_delete=ON")  # freed pages are zeroed: erased ids leave no trace
            con.execute("PRAGMA journal_mode=DELETE")  # no WAL file keeping old pages around
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA cache_size=-65536")  # 64 MiB: a bulk insert's index pages stay in memory
            self._local.con = con
        yield con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(os.path.join(self.root, ".lock"), "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _path(self, fragment: str) -> str:
        return os.path.join(self.root, fragment)

    # --- ingest --------------------------------------------------------------------------
    def ingest(self, split: str, table: pa.Table, subject_refs: list[str | None] | None = None) -> int:
        """Append rows to ``split``: ``table`` has exactly the store's arrow schema;
        ``subject_refs`` (one per row, or None) go only into the index. Duplicate ids
        (within the table or against stored rows) raise ``DuplicateIds`` and write nothing."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")
        table = table.cast(self.arrow_schema)
        refs = subject_refs if subject_refs is not None else [None] * table.num_rows
        ids = table.column("instance_id").to_pylist()
        labels = table.column("label").to_numpy()
        written: list[str] = []
        with self._locked(), self._db() as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                seq = db.execute("SELECT count(*) FROM fragments WHERE split=?", (split,)).fetchone()[0]
                for start in range(0, table.num_rows, FRAGMENT_ROWS):
                    part = table.slice(start, FRAGMENT_ROWS)
                    name = f"{split}-{seq:06d}-g0000.parquet"
                    while os.path.exists(self._path(name)):  # a leftover of a crashed ingest
                        seq += 1
                        name = f"{split}-{seq:06d}-g0000.parquet"
                    nbytes = self._write_fragment(name, part)
                    written.append(name)
                    end = start + part.num_rows
                    # in id order: appending to the B-tree is several times faster than random inserts
                    db.executemany("INSERT INTO instances VALUES (?,?,?,?,?,?)", sorted(zip(
                        ids[start:end], [split] * part.num_rows, refs[start:end],
                        labels[start:end].tolist(), [name] * part.num_rows, range(part.num_rows))))
                    db.execute("INSERT INTO fragments VALUES (?,?,?,?,?)",
                               (name, split, part.num_rows, -(-part.num_rows // ROW_GROUP), nbytes))
                    seq += 1
                db.execute("COMMIT")
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                self._unlink(written)
                raise DuplicateIds(self._duplicates(ids))
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                self._unlink(written)
                raise
        return table.num_rows

    def _duplicates(self, ids: list[str]) -> list[str]:
        seen, dup = set(), []
        for i in ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
        with self._db() as db:
            for k in range(0, len(ids), 900):
                chunk = ids[k:k + 900]
                dup += [r[0] for r in db.execute(
                    f"SELECT instance_id FROM instances WHERE instance_id IN ({','.join('?' * len(chunk))})", chunk)]
        return sorted(set(dup))

    def _write_fragment(self, name: str, table: pa.Table) -> int:
        """Write, fsync, rename into place: a fragment file is either whole or absent."""
        path, tmp = self._path(name), self._path(name + ".tmp")
        pq.write_table(table, tmp, row_group_size=ROW_GROUP, compression=self.schema.get("compression", "none"),
                       use_dictionary=False,  # PLAIN pages: a row's values stay contiguous, as the erasure test reads them
                       write_statistics=False)  # no min/max copies of values in the footer
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.root)
        return os.path.getsize(path)

    def _unlink(self, names: Iterable[str]) -> int:
        freed = 0
        for n in names:
            with contextlib.suppress(FileNotFoundError):
                freed += os.path.getsize(self._path(n))
                os.unlink(self._path(n))
        _fsync_dir(self.root)
        return freed

    # --- lookups -------------------------------------------------------------------------
    def count(self, split: str | None = None) -> int:
        with self._db() as db:
            if split is None:
                return db.execute("SELECT coalesce(sum(n_rows), 0) FROM fragments").fetchone()[0]
            return db.execute("SELECT coalesce(sum(n_rows), 0) FROM fragments WHERE split=?", (split,)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        with self._db() as db:
            got = dict(db.execute("SELECT split, sum(n_rows) FROM fragments GROUP BY split").fetchall())
        return {s: int(got.get(s, 0)) for s in SPLITS}

    def subject_count(self) -> int:
        with self._db() as db:
            return db.execute("SELECT count(DISTINCT subject_ref) FROM instances").fetchone()[0]

    def lookup_subject(self, subject_ref: str) -> list[str]:
        """Instance ids of a subject (an index probe, not a scan)."""
        with self._db() as db:
            return [r[0] for r in db.execute(
                "SELECT instance_id FROM instances WHERE subject_ref=? ORDER BY instance_id", (subject_ref,))]

    def subject_rows(self, subject_ref: str) -> dict[str, list[str]]:
        """{split: instance ids} of every row of a subject, in every split (an index probe)."""
        out: dict[str, list[str]] = {}
        with self._db() as db:
            for iid, split in db.execute("SELECT instance_id, split FROM instances WHERE subject_ref=? "
                                         "ORDER BY instance_id", (subject_ref,)):
                out.setdefault(split, []).append(iid)
        return out

    def index(self, split: str = "train", ids: list[str] | None = None) -> list[tuple[str, str | None, int]]:
        """(instance_id, subject_ref, label) of the rows of ``split`` (or of ``ids``), in
        storage order: what a model's catalogue is built from."""
        with self._db() as db:
            if ids is None:
                return db.execute("SELECT instance_id, subject_ref, label FROM instances WHERE split=? "
                                  "ORDER BY fragment, pos", (split,)).fetchall()
            out = []
            for k in range(0, len(ids), 900):
                chunk = ids[k:k + 900]
                out += db.execute(f"SELECT instance_id, subject_ref, label FROM instances WHERE instance_id IN "
                                  f"({','.join('?' * len(chunk))})", chunk).fetchall()
            return out

    def locate(self, ids: list[str]) -> dict[str, tuple[str, int]]:
        """instance_id -> (fragment, row) for the ids the store holds."""
        out: dict[str, tuple[str, int]] = {}
        with self._db() as db:
            for k in range(0, len(ids), 900):
                chunk = ids[k:k + 900]
                for iid, frag, row in db.execute(
                        f"SELECT instance_id, fragment, pos FROM instances WHERE instance_id IN "
                        f"({','.join('?' * len(chunk))})", chunk):
                    out[iid] = (frag, row)
        return out

    def _fragments(self, split: str | None = None) -> list[tuple[str, int, int]]:
        with self._db() as db:
            q = "SELECT name, n_rows, row_groups FROM fragments"
            return db.execute(q + (" WHERE split=? ORDER BY name" if split else " ORDER BY name"),
                              (split,) if split else ()).fetchall()

    # --- reads ---------------------------------------------------------------------------
    def read(self, ids: list[str]) -> pa.Table:
        """The rows of ``ids``, in that order (KeyError naming the ids the store lacks).
        Reads only the row groups that hold them."""
        for attempt in range(3):
            where = self.locate(ids)
            missing = [i for i in ids if i not in where]
            if missing:
                raise KeyError(f"not in the store: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
            try:
                return self._read_located(ids, where)
            except FileNotFoundError:  # an erase replaced the fragment meanwhile: look again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _read_located(self, ids: list[str], where: dict[str, tuple[str, int]]) -> pa.Table:
        by_group: dict[tuple[str, int], list[int]] = {}
        for pos, iid in enumerate(ids):
            frag, row = where[iid]
            by_group.setdefault((frag, row // ROW_GROUP), []).append(pos)
        parts, order = [], []
        files: dict[str, pq.ParquetFile] = {}
        for (frag, rg), positions in sorted(by_group.items()):
            pf = files.get(frag) or files.setdefault(frag, pq.ParquetFile(self._path(frag)))
            group = pf.read_row_group(rg)
            parts.append(group.take(pa.array([where[ids[p]][1] - rg * ROW_GROUP for p in positions])))
            order += positions
        if not parts:
            return self.arrow_schema.empty_table()
        table = pa.concat_tables(parts)
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[np.asarray(order)] = np.arange(len(order))
        return table.take(pa.array(inverse))

    def sample(self, n: int, *, seed: int = 0, split: str = "train", exclude: Iterable[str] = (),
               where: Callable[[list[str]], list[bool]] | None = None) -> pa.Table:
        """``n`` random rows of ``split`` (fewer if it holds fewer), ``exclude``d ids left
        out, and only ids for which ``where`` says True (e.g. those a model was trained on).
        Reads random row groups until enough rows are in hand, so the cost and the memory
        follow ``n``, not the dataset's size; rows are shuffled within each ingest chunk, so
        a row group is itself a random draw."""
        rng = np.random.default_rng(seed)
        exclude = set(exclude)
        groups = [(name, g) for name, _, rgs in self._fragments(split) for g in range(rgs)]
        parts, have = [], 0
        for k in rng.permutation(len(groups)):
            name, g = groups[k]
            try:
                t = pq.ParquetFile(self._path(name)).read_row_group(g)
            except FileNotFoundError:  # replaced by an erase meanwhile; other groups will do
                continue
            if exclude or where is not None:
                ids = t.column("instance_id").to_pylist()
                keep = where(ids) if where is not None else [True] * len(ids)
                t = t.filter(pa.array([k and i not in exclude for k, i in zip(keep, ids)]))
            parts.append(t)
            have += t.num_rows
            if have >= n:
                break
        if not parts:
            return self.arrow_schema.empty_table()
        table = pa.concat_tables(parts)
        if table.num_rows > n:
            table = table.take(pa.array(np.sort(rng.choice(table.num_rows, n, replace=False))))
        return table

    def batches(self, split: str = "train", batch_size: int = 4096, *,
                exclude: Iterable[str] = ()) -> Iterator[pa.Table]:
        """Every row of ``split`` in storage order, ``batch_size`` rows at a time; memory
        holds one row group and one batch."""
        exclude = set(exclude)
        buf: list[pa.Table] = []
        have = 0
        for name, _, rgs in self._fragments(split):
            pf = pq.ParquetFile(self._path(name))
            for g in range(rgs):
                t = pf.read_row_group(g)
                if exclude:
                    t = t.filter(pa.array([i not in exclude for i in t.column("instance_id").to_pylist()]))
                buf.append(t)
                have += t.num_rows
                while have >= batch_size:
                    whole = pa.concat_tables(buf)
                    yield whole.slice(0, batch_size)
                    rest = whole.slice(batch_size)
                    buf, have = [rest], rest.num_rows
        if have:
            yield pa.concat_tables(buf)

    # --- erasure -------------------------------------------------------------------------
    def erase(self, ids: Iterable[str]) -> EraseReport:
        """Physically remove rows: each fragment that holds one is written again without
        them (fsync, then live in the index in one transaction), then the old file is
        unlinked. Idempotent: ids the store does not hold are ignored."""
        ids = list(dict.fromkeys(ids))
        with self._locked():
            where = self.locate(ids)
            by_frag: dict[str, list[int]] = {}
            for frag, row in where.values():
                by_frag.setdefault(frag, []).append(row)
            rewritten = written = deleted = 0
            for frag, rows in sorted(by_frag.items()):
                written += self._rewrite(frag, sorted(rows))
                rewritten += 1
                deleted += self._unlink([frag])
            self._sweep()
        return EraseReport(rows=len(where), fragments_rewritten=rewritten, bytes_rewritten=written,
                           bytes_deleted=deleted)

    def _rewrite(self, frag: str, rows: list[int]) -> int:
        m = _FRAG.match(frag)
        assert m, frag
        split, seq, gen = m.group(1), int(m.group(2)), int(m.group(3))
        table = pq.read_table(self._path(frag))
        keep = np.ones(table.num_rows, dtype=bool)
        keep[rows] = False
        table = table.filter(pa.array(keep))
        new = f"{split}-{seq:06d}-g{(gen + 1) % 10000:04d}.parquet"
        nbytes = self._write_fragment(new, table) if table.num_rows else 0
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("CREATE TEMP TABLE gone (pos INTEGER PRIMARY KEY)")
                db.executemany("INSERT INTO gone VALUES (?)", ((r,) for r in rows))
                db.execute("DELETE FROM instances WHERE fragment=? AND pos IN (SELECT pos FROM gone)", (frag,))
                # survivors keep their order: each moves up by the number of erased rows before it
                db.execute("UPDATE instances SET fragment=?, pos = pos - (SELECT count(*) FROM gone WHERE gone.pos < "
                           "instances.pos) WHERE fragment=?", (new, frag))
                db.execute("DELETE FROM fragments WHERE name=?", (frag,))
                if table.num_rows:
                    db.execute("INSERT INTO fragments VALUES (?,?,?,?,?)",
                               (new, split, table.num_rows, -(-table.num_rows // ROW_GROUP), nbytes))
                db.execute("DROP TABLE gone")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._unlink([new])
                raise
        return nbytes

    def compact(self) -> int:
        """Remove files nothing references (leftovers of a crash between writing a new
        fragment and unlinking the old one); returns bytes freed."""
        with self._locked():
            return self._sweep()

    def _sweep(self) -> int:
        live = {name for name, _, _ in self._fragments()}
        stale = [f for f in os.listdir(self.root)
                 if (f.endswith(".parquet") and f not in live) or f.endswith(".parquet.tmp")]
        return self._unlink(stale) if stale else 0

    def disk_bytes(self) -> int:
        return sum(os.path.getsize(os.path.join(self.root, f)) for f in os.listdir(self.root))


class DuplicateIds(ValueError):
    def __init__(self, ids: list[str]):
        super().__init__(f"duplicate instance ids: {', '.join(ids[:10])}" + (" ..." if len(ids) > 10 else ""))
        self.ids = ids
