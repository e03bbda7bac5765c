"""The catalogue's columnar store: one directory per dataset, rows in Parquet fragments,
an index beside them. These verbs and nothing else reach the files: ``ingest`` (append rows
of a split), ``lookup_subject`` / ``locate`` (through the index), ``read`` / ``sample`` /
``batches`` (rows by id, random rows, every row in bounded batches), ``hide`` (erase rows
from every read at once: a deletion vector), ``compact`` (physically remove hidden rows, in
one batched rewrite of the fragments that hold them) and ``erase`` (both at once).

Layout of ``<data_dir>/datasets/<name>/``::

    schema.json                     the dataset's feature schema (immutable)
    index.sqlite                    instances(instance_id PK, split, subject_ref, label, fragment, pos)
                                    fragments(name PK, split, n_rows, row_groups, bytes, file, orig_rows, gone)
                                    tombstones(fragment, pos, at)   the deletion vector
    train-000000-g0000.parquet      <= FRAGMENT_ROWS rows, row groups of ROW_GROUP rows
    test-000000-g0000.parquet

Positions are stable: ``instances.pos`` is a row's position in its fragment as first written
(``orig_rows`` of them); ``fragments.gone`` lists (sorted uint32) the positions a compaction
has physically removed, so the row at original position ``p`` is physical row
``p - #(gone < p)`` of the current file. A compaction therefore touches no index row of a
survivor: it writes the fragment again and swaps ``file`` and ``gone`` in one transaction.

Erasure in two steps, as Lance's deletion files + compaction and Delta Lake's deletion
vectors + ``OPTIMIZE``/``VACUUM`` do it: ``hide`` deletes the rows from the index and records
their (fragment, pos) in ``tombstones`` in one SQLite transaction, so no read sees them from
then on (reads by id go through the index; scans drop tombstoned positions); ``compact``
later rewrites each fragment holding tombstones once for all of them (temporary file, fsync,
rename, fsync of the directory), then unlinks the old file: the erased bytes exist in no
file afterwards. Data pages are written uncompressed by default (``compression``): the
erasure test can then show the bytes *were* on disk before and are not after.

The index is an SQLite file owned by the store (not the service database): the store is
self-contained, a subject lookup is one B-tree probe (``subject_ref`` is indexed), and
``secure_delete`` overwrites the freed pages of erased index rows. Subject ids are never
given to the store: callers pass ``subject_ref`` (the service's HMAC).

Concurrency: readers may run at any time (a reader whose fragment was just replaced looks
it up again); ``compact``/``ingest`` take an exclusive file lock on the dataset, ``hide`` is
one SQLite write transaction.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..objectstore import ObjectFiles

FRAGMENT_ROWS = 65_536
ROW_GROUP = 2_048
SPLITS = ("train", "test")
_FRAG = re.compile(r"^(train|test)-(\d{6})-g(\d{4})\.parquet$")
# columns every stored row has; the feature column(s) follow
BASE_FIELDS = [pa.field("instance_id", pa.string(), nullable=False), pa.field("label", pa.int32(), nullable=False)]


@dataclass(frozen=True)
class EraseReport:
    rows: int                    # rows erased (hidden by ``hide``; physically removed by ``compact``)
    fragments_rewritten: int
    bytes_rewritten: int         # bytes of the new fragment files written
    bytes_deleted: int           # bytes of the old files unlinked
    compacted_through: float | None = None  # newest tombstone time (epoch s) the compaction removed


@dataclass(frozen=True)
class _Frag:
    name: str                    # the fragment's key (instances.fragment)
    file: str                    # its current file
    orig_rows: int               # rows as first written (positions 0..orig_rows-1)
    row_groups: int              # row groups of the current file
    gone: np.ndarray             # sorted original positions physically removed

    def kept(self) -> np.ndarray:
        """Original position of each physical row of the current file."""
        return np.delete(np.arange(self.orig_rows, dtype=np.int64), self.gone)

    def physical(self, pos: int) -> int:
        return pos - int(np.searchsorted(self.gone, pos))


def _positions(blob: bytes | None) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.uint32).astype(np.int64) if blob else np.empty(0, dtype=np.int64)


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
        self._objects: "ObjectFiles | None | bool" = False  # resolved on first use

    @property
    def objects(self) -> "ObjectFiles | None":
        """The object store holding the fragments, or None: they are files beside the index."""
        if self._objects is False:
            url = self.schema.get("data_url")
            self._objects = ObjectFiles(url) if url else None
        return self._objects  # type: ignore[return-value]

    def _open(self, file: str) -> pq.ParquetFile:
        obj = self.objects
        return pq.ParquetFile(self._path(file) if obj is None else obj.open(file))

    # --- creation ------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str, schema: dict, arrow_schema: pa.Schema, compression: str = "none",
               data_url: str = "") -> "DatasetStore":
        """A new, empty store; ``schema`` is the dataset's feature schema (JSON), and
        ``arrow_schema`` the columns each fragment holds (instance_id, label, features).
        ``data_url``: where the fragments go when not beside the index, an object store
        prefix such as ``s3://bucket/lethe?endpoint_override=host:9000&scheme=http``
        (``ObjectFiles``); the store takes a prefix of its own under it."""
        os.makedirs(root, exist_ok=False)
        doc = dict(schema, compression=compression, arrow_schema=arrow_schema.serialize().to_pybytes().hex())
        if data_url:
            doc["data_url"] = ObjectFiles.child(data_url, f"{os.path.basename(root)}-{os.urandom(8).hex()}")
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
                                        row_groups INTEGER NOT NULL, bytes INTEGER NOT NULL,
                                        file TEXT NOT NULL, orig_rows INTEGER NOT NULL, gone BLOB);
                CREATE TABLE tombstones (fragment TEXT NOT NULL, pos INTEGER NOT NULL, at REAL NOT NULL,
                                         PRIMARY KEY (fragment, pos)) WITHOUT ROWID;
            """)
        return store

    def seal(self) -> None:
        """Build the secondary index (subject) once the first bulk ingestion is done: one
        sort is several times faster than updating it row by row. (No index on the fragment
        position: a compaction changes no index row.) Idempotent; ``create`` + ``ingest`` +
        ``seal`` is how a dataset is written."""
        with self._db() as db:
            db.execute("CREATE INDEX IF NOT EXISTS instances_subject ON instances(subject_ref) "
                       "WHERE subject_ref IS NOT NULL")

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
            self._upgrade(con)
        yield con

    @staticmethod
    def _upgrade(con: sqlite3.Connection) -> None:
        """A store written before deletion vectors: fragments gain ``file`` (= their name,
        which was the file), ``orig_rows`` (= rows) and ``gone``; the tombstones table."""
        cols = {r[1] for r in con.execute("PRAGMA table_info(fragments)")}
        if not cols or "file" in cols:
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            if "file" not in {r[1] for r in con.execute("PRAGMA table_info(fragments)")}:
                con.execute("ALTER TABLE fragments ADD COLUMN file TEXT")
                con.execute("ALTER TABLE fragments ADD COLUMN orig_rows INTEGER")
                con.execute("ALTER TABLE fragments ADD COLUMN gone BLOB")
                con.execute("UPDATE fragments SET file = name, orig_rows = n_rows")
                con.execute("CREATE TABLE IF NOT EXISTS tombstones (fragment TEXT NOT NULL, pos INTEGER NOT NULL, "
                            "at REAL NOT NULL, PRIMARY KEY (fragment, pos)) WITHOUT ROWID")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

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
    def ingest(self, split: str, table: pa.Table, subject_refs: "list[str | None] | pa.Array | None" = None) -> int:
        """Append rows to ``split``: ``table`` has exactly the store's arrow schema;
        ``subject_refs`` (one per row, or None) go only into the index. Duplicate ids
        (within the table or against stored rows) raise ``DuplicateIds`` and write nothing."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")
        table = table.cast(self.arrow_schema)
        refs = pa.nulls(table.num_rows, pa.string()) if subject_refs is None else \
            subject_refs if isinstance(subject_refs, (pa.Array, pa.ChunkedArray)) else pa.array(subject_refs, pa.string())
        ids = table.column("instance_id")
        written: list[str] = []
        with self._locked(), self._db() as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                seq = 1 + max((int(n[len(split) + 1:len(split) + 7]) for (n,) in db.execute(
                    "SELECT name FROM fragments WHERE split=?", (split,))), default=-1)
                for start in range(0, table.num_rows, FRAGMENT_ROWS):
                    part = table.slice(start, FRAGMENT_ROWS)
                    name = f"{split}-{seq:06d}"
                    while self._exists(f"{name}-g0000.parquet"):  # a leftover of a crashed ingest
                        seq += 1
                        name = f"{split}-{seq:06d}"
                    file = f"{name}-g0000.parquet"
                    nbytes = self._write_fragment(file, part)
                    written.append(file)
                    # in id order (sorted in Arrow): appending to the B-tree is several times faster
                    # than random inserts; split and fragment are literals of our own making
                    order = pc.sort_indices(part.column("instance_id"))
                    db.executemany(f"INSERT INTO instances VALUES (?, '{split}', ?, ?, '{name}', ?)", zip(
                        pc.take(part.column("instance_id"), order).to_pylist(),
                        pc.take(refs.slice(start, part.num_rows), order).to_pylist(),
                        pc.take(part.column("label"), order).to_pylist(), order.to_pylist()))
                    db.execute("INSERT INTO fragments VALUES (?,?,?,?,?,?,?,NULL)",
                               (name, split, part.num_rows, -(-part.num_rows // ROW_GROUP), nbytes, file,
                                part.num_rows))
                    seq += 1
                db.execute("COMMIT")
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                self._unlink(written)
                raise DuplicateIds(self._duplicates(ids.to_pylist()))
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

    def _exists(self, file: str) -> bool:
        obj = self.objects
        return os.path.exists(self._path(file)) if obj is None else obj.exists(file)

    def _write_fragment(self, name: str, table: pa.Table) -> int:
        """Write, fsync, rename into place: a fragment file is either whole or absent (an
        object store's PUT is atomic by itself)."""
        kw = dict(row_group_size=ROW_GROUP, compression=self.schema.get("compression", "none"),
                  use_dictionary=False,  # PLAIN pages: a row's values stay contiguous, as the erasure test reads them
                  write_statistics=False)  # no min/max copies of values in the footer
        obj = self.objects
        if obj is not None:
            return obj.write(name, lambda sink: pq.write_table(table, sink, **kw))
        path, tmp = self._path(name), self._path(name + ".tmp")
        pq.write_table(table, tmp, **kw)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.root)
        return os.path.getsize(path)

    def _unlink(self, names: Iterable[str]) -> int:
        obj = self.objects
        if obj is not None:  # every version of each object, and any unfinished upload of it
            return sum(obj.purge(n) for n in names)
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
            return db.execute("SELECT count(DISTINCT subject_ref) FROM instances "
                              "WHERE subject_ref IS NOT NULL").fetchone()[0]  # the partial index covers it

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
        """(instance_id, subject_ref, label) of the rows of ``split`` (or of those of ``ids``
        that are rows of ``split``), in storage order: what a model's catalogue is built from."""
        with self._db() as db:
            if ids is None:
                return db.execute("SELECT instance_id, subject_ref, label FROM instances WHERE split=? "
                                  "ORDER BY fragment, pos", (split,)).fetchall()
            out = []
            for k in range(0, len(ids), 900):
                chunk = ids[k:k + 900]
                out += db.execute(f"SELECT instance_id, subject_ref, label FROM instances WHERE split=? AND "
                                  f"instance_id IN ({','.join('?' * len(chunk))})", [split, *chunk]).fetchall()
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

    def _fragments(self, split: str | None = None) -> list[_Frag]:
        with self._db() as db:
            q = "SELECT name, file, orig_rows, row_groups, gone FROM fragments"
            return [_Frag(n, f, o, g, _positions(b)) for n, f, o, g, b in db.execute(
                q + (" WHERE split=? ORDER BY name" if split else " ORDER BY name"), (split,) if split else ())]

    def _tombstones(self, split: str | None = None) -> dict[str, set[int]]:
        """fragment -> original positions hidden but not yet compacted away."""
        out: dict[str, set[int]] = {}
        with self._db() as db:
            q = "SELECT fragment, pos FROM tombstones"
            if split:
                q += " WHERE fragment IN (SELECT name FROM fragments WHERE split=?)"
            for frag, pos in db.execute(q, (split,) if split else ()):
                out.setdefault(frag, set()).add(pos)
        return out

    def _visible(self, frag: _Frag, group: int, t: pa.Table, tomb: dict[str, set[int]],
                 exclude: set[str], where: Callable[[list[str]], list[bool]] | None = None) -> pa.Table:
        """Row group ``group`` of ``frag`` without tombstoned rows, ``exclude``d ids and ids
        ``where`` refuses."""
        dead = tomb.get(frag.name)
        if dead:
            orig = frag.kept()[group * ROW_GROUP:group * ROW_GROUP + t.num_rows]
            t = t.filter(pa.array(~np.isin(orig, np.fromiter(dead, dtype=np.int64))))
        if exclude or where is not None:
            ids = t.column("instance_id").to_pylist()
            keep = where(ids) if where is not None else [True] * len(ids)
            t = t.filter(pa.array([k and i not in exclude for k, i in zip(keep, ids)]))
        return t

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
            except (FileNotFoundError, KeyError):  # a compaction replaced the fragment meanwhile: look again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _read_located(self, ids: list[str], where: dict[str, tuple[str, int]]) -> pa.Table:
        frags = {f.name: f for f in self._fragments()}
        by_group: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for k, iid in enumerate(ids):
            frag, pos = where[iid]
            row = frags[frag].physical(pos)
            by_group.setdefault((frag, row // ROW_GROUP), []).append((k, row))
        parts, order = [], []
        files: dict[str, pq.ParquetFile] = {}
        for (frag, rg), found in sorted(by_group.items()):
            pf = files.get(frag) or files.setdefault(frag, self._open(frags[frag].file))
            group = pf.read_row_group(rg)
            parts.append(group.take(pa.array([row - rg * ROW_GROUP for _, row in found])))
            order += [k for k, _ in found]
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
        groups = [(f, g) for f in self._fragments(split) for g in range(f.row_groups)]
        tomb = self._tombstones(split)
        parts, have = [], 0
        files: dict[str, pq.ParquetFile] = {}  # each footer read once (one request on an object store)
        for k in rng.permutation(len(groups)):
            frag, g = groups[k]
            try:
                pf = files.get(frag.file) or files.setdefault(frag.file, self._open(frag.file))
                t = pf.read_row_group(g)
            except FileNotFoundError:  # a compaction replaced the fragment meanwhile: read its new file
                # (every fragment may have been replaced since the listing; skipping them all
                # would answer an empty sample)
                frag = next((f for f in self._fragments(split) if f.name == frag.name), None)
                tomb = self._tombstones(split)
                if frag is None or g >= frag.row_groups:
                    continue
                try:
                    pf = files.setdefault(frag.file, self._open(frag.file))
                    t = pf.read_row_group(g)
                except FileNotFoundError:  # replaced once more; other groups will do
                    continue
            t = self._visible(frag, g, t, tomb, exclude, where)
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
        tomb = self._tombstones(split)
        for frag in self._fragments(split):
            try:
                pf = self._open(frag.file)
            except FileNotFoundError:  # a compaction replaced it since the listing: take the new file
                frag = next(f for f in self._fragments(split) if f.name == frag.name)
                pf = self._open(frag.file)
            for g in range(frag.row_groups):
                t = self._visible(frag, g, pf.read_row_group(g), tomb, exclude)
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
    def hide(self, ids: Iterable[str], *, at: float | None = None) -> int:
        """Erase rows from every read at once: one SQLite transaction deletes their index
        rows (``secure_delete`` zeroes the freed cells) and records their positions in the
        deletion vector (``tombstones``), which scans honour. The bytes stay in the fragment
        files until ``compact``. Idempotent: ids the store does not hold are ignored.
        Returns the rows hidden."""
        return len(self._hide(ids, at))

    def _hide(self, ids: Iterable[str], at: float | None) -> list[tuple[str, int]]:
        ids = list(dict.fromkeys(ids))
        at = time.time() if at is None else at
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                hidden: list[tuple[str, int]] = []
                for k in range(0, len(ids), 900):  # ids as bound parameters: they reach no temporary table
                    chunk = ids[k:k + 900]
                    marks = ",".join("?" * len(chunk))
                    hidden += db.execute(f"SELECT fragment, pos FROM instances WHERE instance_id IN ({marks})",
                                         chunk).fetchall()
                    db.execute(f"DELETE FROM instances WHERE instance_id IN ({marks})", chunk)
                db.executemany("INSERT OR IGNORE INTO tombstones VALUES (?,?,?)", [(f, p, at) for f, p in hidden])
                per_frag: dict[str, int] = {}
                for frag, _ in hidden:
                    per_frag[frag] = per_frag.get(frag, 0) + 1
                db.executemany("UPDATE fragments SET n_rows = n_rows - ? WHERE name = ?",
                               [(n, f) for f, n in per_frag.items()])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return hidden

    def pending(self) -> tuple[int, float | None]:
        """(rows hidden but not yet physically removed, epoch time of the oldest of them)."""
        with self._db() as db:
            n, oldest = db.execute("SELECT count(*), min(at) FROM tombstones").fetchone()
        return int(n), oldest

    def erase(self, ids: Iterable[str]) -> EraseReport:
        """Hide the rows, then compact at once: their bytes are in no file when this returns.
        Idempotent: ids the store does not hold are ignored."""
        hidden = self._hide(ids, None)
        rep = self.compact(only=set(hidden))
        return EraseReport(rows=len(hidden), fragments_rewritten=rep.fragments_rewritten,
                           bytes_rewritten=rep.bytes_rewritten, bytes_deleted=rep.bytes_deleted,
                           compacted_through=rep.compacted_through)

    def compact(self, only: set[tuple[str, int]] | None = None) -> EraseReport:
        """Physically remove every hidden row: each fragment holding tombstones is written
        again once, without all of them (temporary file, fsync, rename), its new file and
        ``gone`` positions made live and its tombstones dropped in one transaction, then the
        old file unlinked; files nothing references (leftovers of a crash) are deleted too.
        Survivors keep their index rows (positions are original ones). ``only``: just these
        (fragment, position) tombstones (what ``erase`` hid), the others wait."""
        with self._locked():
            with self._db() as db:
                tomb: dict[str, list[tuple[int, float]]] = {}
                for frag, pos, at in db.execute("SELECT fragment, pos, at FROM tombstones"):
                    if only is None or (frag, pos) in only:
                        tomb.setdefault(frag, []).append((pos, at))
            frags = {f.name: f for f in self._fragments()}
            rows = rewritten = written = deleted = 0
            through = None
            for name, dead in sorted(tomb.items()):
                frag = frags.get(name)
                positions = np.array(sorted(p for p, _ in dead), dtype=np.int64)
                if frag is not None:
                    written += self._rewrite(frag, positions)
                    rewritten += 1
                    deleted += self._unlink([frag.file])
                else:  # the fragment is gone already (nothing to rewrite)
                    self._drop_tombstones(name, positions, None)
                rows += len(positions)
                newest = max(at for _, at in dead)
                through = newest if through is None else max(through, newest)
            deleted += self._sweep()
        return EraseReport(rows=rows, fragments_rewritten=rewritten, bytes_rewritten=written,
                           bytes_deleted=deleted, compacted_through=through)

    def _drop_tombstones(self, frag: str, positions: np.ndarray, update: tuple | None) -> None:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("DELETE FROM tombstones WHERE fragment=? AND pos=?",
                               [(frag, int(p)) for p in positions])
                if update is not None:
                    new, row_groups, nbytes, gone, left = update
                    if left:
                        db.execute("UPDATE fragments SET file=?, row_groups=?, bytes=?, gone=? WHERE name=?",
                                   (new, row_groups, nbytes, gone, frag))
                    else:
                        db.execute("DELETE FROM fragments WHERE name=?", (frag,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _rewrite(self, frag: _Frag, positions: np.ndarray) -> int:
        m = _FRAG.match(frag.file)
        assert m, frag.file
        split, seq, gen = m.group(1), int(m.group(2)), int(m.group(3))
        table = self._open(frag.file).read()
        kept = frag.kept()
        table = table.filter(pa.array(~np.isin(kept, positions)))
        gone = np.union1d(frag.gone, positions).astype(np.uint32)
        new = f"{split}-{seq:06d}-g{(gen + 1) % 10000:04d}.parquet"
        nbytes = self._write_fragment(new, table) if table.num_rows else 0
        try:
            self._drop_tombstones(frag.name, positions, (new, -(-table.num_rows // ROW_GROUP), nbytes,
                                                         gone.tobytes(), table.num_rows))
        except BaseException:
            self._unlink([new])
            raise
        return nbytes

    def _sweep(self) -> int:
        live = {f.file for f in self._fragments()}
        obj = self.objects
        names = os.listdir(self.root) if obj is None else obj.names()
        stale = [f for f in names if (f.endswith(".parquet") and f not in live) or f.endswith(".parquet.tmp")]
        freed = self._unlink(stale) if stale else 0
        if obj is not None:
            obj.abort_uploads()  # parts of a write cut short hold rows too
        return freed

    def disk_bytes(self) -> int:
        local = sum(os.path.getsize(os.path.join(self.root, f)) for f in os.listdir(self.root))
        return local + (self.objects.size() if self.objects is not None else 0)

    def destroy(self) -> None:
        """Remove the store: its fragments (every object version) and its directory."""
        import shutil

        if self.objects is not None:
            self.objects.purge_all()
            self.objects.abort_uploads()
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)


class DuplicateIds(ValueError):
    def __init__(self, ids: list[str]):
        super().__init__(f"duplicate instance ids: {', '.join(ids[:10])}" + (" ..." if len(ids) > 10 else ""))
        self.ids = ids
