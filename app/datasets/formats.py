"""From a data team's file to the store's rows, and back to arrays.

Readers (``open_source``) turn Parquet, Arrow IPC (file or stream), CSV and NumPy ``.npz``
into a stream of Arrow record batches. ``Converter`` checks each batch against the
dataset's declared schema and turns it into the store's columns; every problem is a
``DatasetError`` with a precise code. ``decode`` turns stored rows into the arrays a
model takes.

Columns of an input file: ``instance_id`` (string, unique), ``label`` (class name or class
index), optional ``subject_id`` (hashed before it reaches the store), optional ``split``
(``train``/``test``), and the features, by kind:

- ``tabular``: numeric columns (all remaining columns, or those named in ``columns``);
- ``tensor``: one column (``feature_column``, default ``features``) holding a list of
  floats per row, ``prod(shape)`` long (``shape`` declared; default: the first row's length);
- ``image``: one column (default ``image``) of encoded PNG/JPEG bytes, decoded with Pillow;
  every image must decode and have the same size (``shape`` [C, H, W] declared or taken
  from the first image); stored as the original bytes;
- ``tokens``: one column (default ``tokens``) of integer token ids per row, variable
  length, padded with 0 to the longest row on read (``shape`` [max_len] may be declared).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import LetheError

KINDS = ("tabular", "tensor", "image", "tokens")
FORMATS = ("parquet", "arrow", "csv", "npz")
RESERVED = ("instance_id", "label", "subject_id", "split")
DEFAULT_COLUMN = {"tensor": "features", "image": "image", "tokens": "tokens"}
BATCH_ROWS = 65_536
MAX_ID_LEN = 128


class DatasetError(LetheError):
    """A dataset request that cannot be done (answered by the one handler in app/errors.py)."""


def bad(code: str, detail: str) -> DatasetError:
    return DatasetError(422, code, detail)


@dataclass
class Spec:
    """What the user declares about the features (everything optional but the kind's needs)."""

    kind: str | None = None
    columns: list[str] | None = None           # tabular feature columns
    feature_column: str | None = None          # tensor / image / tokens column
    shape: list[int] | None = None
    classes: list[str] | None = None
    test_fraction: float | None = None
    seed: int = 0
    # filled in while reading (first pass / first batch)
    resolved: dict = field(default_factory=dict)


# --- readers ---------------------------------------------------------------------------------
def guess_format(filename: str | None) -> str | None:
    name = (filename or "").lower()
    for suffix, fmt in ((".parquet", "parquet"), (".pq", "parquet"), (".arrow", "arrow"), (".feather", "arrow"),
                        (".ipc", "arrow"), (".arrows", "arrow"), (".csv", "csv"), (".csv.gz", "csv"),
                        (".npz", "npz")):
        if name.endswith(suffix):
            return fmt
    return None


class Source:
    """One input file as record batches; ``total_rows`` when the format knows it."""

    def __init__(self, path: str, fmt: str, filesystem=None):
        if fmt not in FORMATS:
            raise bad("unknown_format", f"format {fmt!r} unknown; formats: {', '.join(FORMATS)}")
        self.path, self.fmt, self.fs = path, fmt, filesystem
        self.total_rows: int | None = None
        try:
            self.schema = self._open_schema()
        except DatasetError:
            raise
        except Exception as e:  # noqa: BLE001 - an unreadable file is the client's
            raise bad("unreadable_file", f"the file is not readable as {fmt}: {e.__class__.__name__}: {e}"[:1000])

    def _open(self, mode="rb"):
        return self.fs.open(self.path, mode) if self.fs is not None else open(self.path, mode)

    def _open_schema(self) -> pa.Schema:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            with self._open() as f:
                md = pq.ParquetFile(f).metadata
                self.total_rows = md.num_rows
                return md.schema.to_arrow_schema()
        if self.fmt == "arrow":
            with self._open() as f:
                try:
                    r = pa.ipc.open_file(f)
                    self.total_rows = sum(r.get_batch(i).num_rows for i in range(r.num_record_batches))
                    self._ipc = "file"
                    return r.schema
                except pa.ArrowInvalid:
                    f.seek(0)
                    self._ipc = "stream"
                    return pa.ipc.open_stream(f).schema
        if self.fmt == "csv":
            import pyarrow.csv as pcsv

            with self._open() as f:
                return pcsv.open_csv(f, read_options=pcsv.ReadOptions(block_size=1 << 22),
                                     convert_options=self._csv_convert()).schema
        table = self._npz_table()
        self.total_rows = table.num_rows
        return table.schema

    @staticmethod
    def _csv_convert():
        import pyarrow.csv as pcsv

        return pcsv.ConvertOptions(column_types={"instance_id": pa.string(), "subject_id": pa.string(),
                                                 "split": pa.string()})

    def _npz_table(self) -> pa.Table:
        with self._open() as f:
            try:
                z = np.load(io.BytesIO(f.read()), allow_pickle=False)
                arrays = {k: z[k] for k in z.files}
            except ValueError as e:  # object arrays need pickle: refused
                raise bad("unreadable_file", f".npz arrays must be plain (no pickled objects): {e}")
        if "x" not in arrays:
            raise bad("missing_columns", f".npz needs an array 'x' (N, *shape) of features; it has {sorted(arrays)}")
        x = arrays.pop("x")
        if x.dtype.kind not in "biuf" or x.ndim < 2:
            raise bad("bad_features", f".npz 'x' must be a numeric array (N, *shape); got {x.dtype} {x.shape}")
        n = len(x)
        cols = {}
        for k, v in arrays.items():
            if v.shape[:1] != (n,):
                raise bad("ragged_tensor", f".npz array {k!r} has {v.shape[:1]} rows, 'x' has {n}")
            cols[k] = pa.array(v.astype(str) if v.dtype.kind in "US" else v)
        flat = np.ascontiguousarray(x, dtype=np.float32).reshape(n, -1)
        cols["features"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])
        self.npz_shape = list(x.shape[1:])
        return pa.table(cols)

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._batches(columns)
        except DatasetError:
            raise
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, ValueError) as e:
            raise bad("unreadable_file", f"reading the {self.fmt} file failed: {e}"[:1000])

    def _batches(self, columns):
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            with self._open() as f:
                yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=columns)
        elif self.fmt == "arrow":
            with self._open() as f:
                r = pa.ipc.open_file(f) if self._ipc == "file" else pa.ipc.open_stream(f)
                it = (r.get_batch(i) for i in range(r.num_record_batches)) if self._ipc == "file" else r
                for b in it:
                    yield b.select(columns) if columns else b
        elif self.fmt == "csv":
            import pyarrow.csv as pcsv

            with self._open() as f:
                reader = pcsv.open_csv(f, read_options=pcsv.ReadOptions(block_size=1 << 22),
                                       convert_options=self._csv_convert())
                for b in reader:
                    yield b.select(columns) if columns else b
        else:
            t = self._npz_table()
            for b in (t.select(columns) if columns else t).to_batches(BATCH_ROWS):
                yield b


# --- conversion ------------------------------------------------------------------------------
class Converter:
    """Checks input batches against the declared schema and yields the store's rows.

    ``resolve`` looks at the input's columns (and a first pass over labels and token
    lengths when classes or the token shape are not declared); ``convert`` then turns each
    batch into (store table, subject ids or None, split per row or None)."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.kind: str | None = None
        self.schema: dict = {}

    # -- schema -----------------------------------------------------------------------------
    def resolve(self, source: Source, extra_sources: list[Source] = ()) -> dict:
        s, names = self.spec, source.schema.names
        for req in ("instance_id", "label"):
            if req not in names:
                raise bad("missing_columns", f"column {req!r} is missing; the file has {names}")
        kind = s.kind or self._infer_kind(source)
        if kind not in KINDS:
            raise bad("unknown_kind", f"kind {kind!r} unknown; kinds: {', '.join(KINDS)}")
        if source.fmt == "csv" and kind != "tabular":
            raise bad("unsupported_kind", f"CSV holds tabular data only; use Parquet or Arrow for {kind!r}")
        self.kind = kind
        others = [c for c in names if c not in RESERVED]
        if kind == "tabular":
            cols = s.columns or others
            missing = [c for c in cols if c not in names]
            if missing:
                raise bad("missing_columns", f"feature columns missing from the file: {missing}")
            extra = [c for c in others if c not in cols]
            if extra:
                raise bad("extra_columns", f"columns not declared as features: {extra}")
            if not cols:
                raise bad("missing_columns", "no feature columns: a tabular dataset needs at least one")
            for c in cols:
                t = source.schema.field(c).type
                if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                    raise bad("non_numeric_column", f"feature column {c!r} is {t}, not numeric")
            feature = {"columns": list(cols), "shape": [len(cols)]}
        else:
            col = s.feature_column or DEFAULT_COLUMN[kind]
            if col not in names:
                raise bad("missing_columns", f"feature column {col!r} is missing; the file has {names}")
            extra = [c for c in others if c != col]
            if extra:
                raise bad("extra_columns", f"columns beyond instance_id, label, subject_id, split and {col!r}: {extra}")
            feature = {"column": col}
            t = source.schema.field(col).type
            if kind in ("tensor", "tokens") and not (pa.types.is_list(t) or pa.types.is_large_list(t)
                                                     or pa.types.is_fixed_size_list(t)):
                raise bad("bad_features", f"column {col!r} must hold a list per row for kind {kind!r}; it is {t}")
            if kind == "image" and not (pa.types.is_binary(t) or pa.types.is_large_binary(t)):
                raise bad("bad_features", f"column {col!r} must hold encoded image bytes (binary); it is {t}")
            if kind == "tensor":
                shape = s.shape or getattr(source, "npz_shape", None)
                if shape is None and pa.types.is_fixed_size_list(t):
                    shape = [t.list_size]
                if shape is not None:
                    self._check_shape(shape)
                feature["shape"] = shape
        sources = [source, *extra_sources]
        classes = self._resolve_classes(sources, source.schema.field("label").type)
        if kind == "tokens":
            feature.update(self._token_stats(sources, feature["column"]))
        self.schema = {"kind": kind, "classes": classes, **feature}
        return self.schema

    @staticmethod
    def _check_shape(shape) -> None:
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise bad("bad_shape", f"shape must be a list of positive integers; got {shape!r}")

    def _infer_kind(self, source: Source) -> str:
        for kind, col in (("image", "image"), ("tokens", "tokens"), ("tensor", "features")):
            if col in source.schema.names:
                return kind
        return "tabular"

    def _resolve_classes(self, sources, label_type) -> list[str]:
        declared = self.spec.classes
        if declared is not None:
            if not declared or len(set(declared)) != len(declared) or not all(isinstance(c, str) for c in declared):
                raise bad("bad_classes", "classes must be a non-empty list of distinct strings")
            return list(declared)
        seen: set = set()
        for src in sources:
            for b in src.batches(["label"]):
                seen.update(pc.unique(b.column(0)).to_pylist())
        seen.discard(None)
        if not seen:
            raise bad("missing_labels", "no labels: the file has no rows or only null labels")
        if pa.types.is_integer(label_type):
            if min(seen) < 0:
                raise bad("unknown_label", f"integer labels are class indices >= 0; found {min(seen)}")
            return [str(c) for c in range(max(seen) + 1)]
        return sorted(str(c) for c in seen)

    def _token_stats(self, sources, col) -> dict:
        max_len, max_id = 0, -1
        for src in sources:
            for b in src.batches([col]):
                arr = b.column(0)
                if arr.null_count:
                    raise bad("null_values", f"column {col!r} has null rows")
                lens = pc.list_value_length(arr)
                max_len = max(max_len, pc.max(lens).as_py() or 0)
                flat = pc.list_flatten(arr)
                if len(flat):
                    if not pa.types.is_integer(flat.type):
                        raise bad("bad_features", f"token ids in {col!r} must be integers; they are {flat.type}")
                    if pc.min(flat).as_py() < 0:
                        raise bad("bad_features", f"token ids in {col!r} must be >= 0")
                    max_id = max(max_id, pc.max(flat).as_py())
        shape = self.spec.shape
        if shape is not None:
            self._check_shape(shape)
            if len(shape) != 1 or shape[0] < max_len:
                raise bad("ragged_tensor", f"declared shape {shape} but a row holds {max_len} tokens")
            max_len = shape[0]
        return {"shape": [max(1, max_len)], "vocab_size": max_id + 1}

    def arrow_schema(self) -> pa.Schema:
        from .store import BASE_FIELDS

        if self.kind == "image":
            feat = pa.field("image", pa.binary())
        elif self.kind == "tokens":
            feat = pa.field("tokens", pa.list_(pa.int32()))
        else:
            feat = pa.field("x", pa.list_(pa.float32(), int(np.prod(self.schema["shape"]))))
        return pa.schema([*BASE_FIELDS, feat])

    # -- rows -------------------------------------------------------------------------------
    def convert(self, batch: pa.RecordBatch) -> tuple[pa.Table, list | None, np.ndarray | None]:
        n = batch.num_rows
        names = batch.schema.names
        ids = batch.column(names.index("instance_id"))
        if ids.null_count:
            raise bad("null_values", "instance_id has null rows")
        ids = pc.cast(ids, pa.string())
        too_long = pc.greater(pc.utf8_length(ids), MAX_ID_LEN)
        if pc.any(too_long).as_py() or pc.any(pc.equal(pc.utf8_length(ids), 0)).as_py():
            raise bad("bad_instance_id", f"instance ids must be 1-{MAX_ID_LEN} characters")
        labels = self._labels(batch.column(names.index("label")))
        subjects = None
        if "subject_id" in names:
            subjects = pc.cast(batch.column(names.index("subject_id")), pa.string()).to_pylist()
        split = None
        if "split" in names:
            sp = pc.cast(batch.column(names.index("split")), pa.string())
            wrong = pc.invert(pc.is_in(sp, pa.array(["train", "test"])))
            if sp.null_count or pc.any(wrong).as_py():
                bad_val = pc.filter(sp, pc.fill_null(wrong, True))[0] if sp.null_count == 0 else None
                raise bad("bad_split", f"split must be 'train' or 'test'; found {bad_val!r}")
            split = np.asarray(sp.to_pylist()) == "test"
        feat = self._features(batch, n)
        return pa.table([ids, labels, feat], schema=self.arrow_schema()), subjects, split

    def _labels(self, col: pa.Array) -> pa.Array:
        classes = self.schema["classes"]
        if col.null_count:
            raise bad("null_values", "label has null rows")
        if pa.types.is_integer(col.type):
            v = col.to_numpy(zero_copy_only=False)
            out = (v < 0) | (v >= len(classes))
            if out.any():
                raise bad("unknown_label", f"label {int(v[out][0])} is not a class index (0..{len(classes) - 1} "
                                           f"for classes {classes[:20]})")
            return pa.array(v.astype(np.int32))
        if pa.types.is_floating(col.type):
            raise bad("unknown_label", "labels must be class names (strings) or class indices (integers), not floats")
        idx = pc.index_in(pc.cast(col, pa.string()), value_set=pa.array(classes))
        if idx.null_count:
            first = pc.filter(col, pc.is_null(idx))[0].as_py()
            raise bad("unknown_label", f"label {first!r} is not one of the declared classes {classes[:20]}")
        return pc.cast(idx, pa.int32())

    def _features(self, batch: pa.RecordBatch, n: int) -> pa.Array:
        sch, names = self.schema, batch.schema.names
        if self.kind == "tabular":
            cols = []
            for c in sch["columns"]:
                a = batch.column(names.index(c))
                if a.null_count:
                    raise bad("null_values", f"feature column {c!r} has null rows")
                cols.append(a.to_numpy(zero_copy_only=False).astype(np.float32))
            x = np.stack(cols, axis=1) if cols else np.zeros((n, 0), np.float32)
            self._check_finite(x, "tabular features")
            return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
        col = batch.column(names.index(sch["column"]))
        if col.null_count:
            raise bad("null_values", f"column {sch['column']!r} has null rows")
        if self.kind == "tensor":
            lens = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            if sch.get("shape") is None:
                sch["shape"] = [int(lens[0])] if n else None
                self._check_shape(sch["shape"])
            size = int(np.prod(sch["shape"]))
            wrong = np.nonzero(lens != size)[0]
            if len(wrong):
                raise bad("ragged_tensor", f"row {int(wrong[0])} holds {int(lens[wrong[0]])} values; shape "
                                           f"{sch['shape']} needs {size}")
            flat = pc.list_flatten(col)
            if flat.null_count:
                raise bad("null_values", "a tensor holds null values")
            if not (pa.types.is_integer(flat.type) or pa.types.is_floating(flat.type)):
                raise bad("bad_features", f"tensor values must be numbers; they are {flat.type}")
            x = flat.to_numpy(zero_copy_only=False).astype(np.float32)
            self._check_finite(x, "tensor")
            return pa.FixedSizeListArray.from_arrays(pa.array(x), size)
        if self.kind == "image":
            self._check_images(col)
            return pc.cast(col, pa.binary())
        lens = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if (lens > sch["shape"][0]).any():
            raise bad("ragged_tensor", f"a row holds {int(lens.max())} tokens; shape {sch['shape']}")
        return pc.cast(col, pa.list_(pa.int32()))

    @staticmethod
    def _check_finite(x: np.ndarray, what: str) -> None:
        if not np.isfinite(x).all():
            raise bad("non_finite", f"{what} hold NaN or infinite values (first at flat position "
                                    f"{int(np.argmin(np.isfinite(x.ravel())))})")

    def _check_images(self, col: pa.Array) -> None:
        from PIL import Image, UnidentifiedImageError

        sch = self.schema
        for i, raw in enumerate(col.to_pylist()):
            try:
                with Image.open(io.BytesIO(raw)) as im:
                    if im.format not in ("PNG", "JPEG"):
                        raise bad("undecodable_image", f"image of row {i} is {im.format}; PNG or JPEG expected")
                    im.load()
                    c = 1 if im.mode in ("L", "1", "I;16", "I") else 3
                    shape = [c, im.height, im.width]
            except DatasetError:
                raise
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
                raise bad("undecodable_image", f"image of row {i} does not decode: {e}"[:500])
            if sch.get("shape") is None:
                sch["shape"] = list(self.spec.shape) if self.spec.shape else shape
                self._check_shape(sch["shape"])
            if shape[1:] != sch["shape"][1:]:
                raise bad("image_size_mismatch", f"image of row {i} is {shape[2]}x{shape[1]}; the dataset's images "
                                                 f"are {sch['shape'][2]}x{sch['shape'][1]}")


# --- decoding ----------------------------------------------------------------------------------
def decode(table: pa.Table, schema: dict) -> tuple[np.ndarray, np.ndarray]:
    """Stored rows -> (x, y): float32 features of the dataset's shape (images as [C,H,W]
    in [0, 1]; tokens as int64 ids padded with 0) and int64 class indices."""
    y = table.column("label").to_numpy().astype(np.int64)
    shape, n = schema["shape"], table.num_rows
    kind = schema["kind"]
    if kind in ("tabular", "tensor"):
        col = table.column("x").combine_chunks()
        x = col.flatten().to_numpy(zero_copy_only=False).reshape(n, *shape) if n else np.zeros((0, *shape), np.float32)
        return np.array(x, dtype=np.float32), y  # a writable copy (torch.from_numpy wants one)
    if kind == "image":
        from PIL import Image

        mode = "L" if shape[0] == 1 else "RGB"
        x = np.zeros((n, *shape), np.float32)
        for i, raw in enumerate(table.column("image").to_pylist()):
            with Image.open(io.BytesIO(raw)) as im:
                a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
            x[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return x, y
    x = np.zeros((n, shape[0]), np.int64)
    for i, row in enumerate(table.column("tokens").to_pylist()):
        x[i, :len(row)] = row
    return x, y
