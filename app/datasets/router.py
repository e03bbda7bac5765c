"""/v1/datasets: register a dataset (upload or server-side location), list, inspect."""
from __future__ import annotations

import datetime as dt
import json
import os
import threading
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from pydantic import BaseModel, Field

from ..deps import SessionDep, SettingsDep
from ..errors import responses
from ..security import AUDIT_READ, FORGET_READ, MODELS_ADMIN, Principal, require_scope
from ..limits import check_depth
from ..security.ratelimit import EXPENSIVE
from ..settings import Settings
from ..tenants import service as tenant_policy
from . import service
from .formats import FORMATS, KINDS, DatasetError, Source, Spec, bad, guess_format
from .models import Dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
READ = Depends(require_scope(FORGET_READ, AUDIT_READ, MODELS_ADMIN))


class ErrorRead(BaseModel):
    """Why an ingestion failed (a background ingestion's error, kept on the dataset)."""

    code: str
    detail: str


class DatasetRead(BaseModel):
    name: str
    status: str = Field(description="ingesting, ready or failed")
    progress: float = Field(description="ingestion progress, 0..1")
    kind: str | None = Field(None, description="tabular, tensor, image or tokens")
    schema_: dict | None = Field(None, alias="schema", description="features: kind, shape, classes, columns/column")
    classes: list[str] | None = None
    splits: dict[str, int] = Field(description="live rows per split (train, test)")
    rows: int
    erased_rows: int
    subjects: int
    bytes: int
    source: str
    split_rule: str
    models: list[str] = Field(description="models trained on this dataset")
    error: ErrorRead | None = None
    created_at: dt.datetime

    model_config = {"populate_by_name": True}


def to_read(row: Dataset, models: list[str]) -> DatasetRead:
    return DatasetRead(name=row.name, status=row.status, progress=row.progress, kind=row.kind, schema=row.schema,
                       classes=row.classes, splits={"train": row.train_rows, "test": row.test_rows},
                       rows=row.train_rows + row.test_rows, erased_rows=row.erased_rows, subjects=row.subjects,
                       bytes=row.bytes, source=row.source, split_rule=row.split_rule, models=models,
                       error=ErrorRead(code=row.error_code, detail=row.error_detail or "") if row.error_code else None,
                       created_at=row.created_at)


def _json_field(raw: str | None, what: str, kind: type):
    if raw is None or raw == "":
        return None
    check_depth(raw, what)  # json.loads recurses: deep nesting is a 422, not a RecursionError
    try:
        v = json.loads(raw)
    except ValueError:
        if kind is list and what != "shape":  # a comma-separated list is fine too
            return [p.strip() for p in raw.split(",") if p.strip()]
        raise bad(f"bad_{what}", f"{what} must be JSON: {raw[:100]!r}")
    if not isinstance(v, kind):
        raise bad(f"bad_{what}", f"{what} must be a JSON {kind.__name__}")
    return v


def _save_upload(settings: Settings, up: UploadFile, fmt: str) -> str:
    tmp_dir = os.path.join(service.datasets_dir(settings), ".uploads")
    os.makedirs(tmp_dir, exist_ok=True)
    path = os.path.join(tmp_dir, f"{uuid.uuid4().hex}.{fmt}")
    size = 0
    with open(path, "wb") as out:
        while chunk := up.file.read(1 << 20):
            size += len(chunk)
            if size > settings.max_dataset_bytes:
                out.close()
                os.unlink(path)
                raise DatasetError(413, "dataset_too_large", f"{up.filename or 'the file'} exceeds the limit of "
                                                             f"{settings.max_dataset_bytes} bytes (LETHE_MAX_DATASET_BYTES)")
            out.write(chunk)
    return path


def _open(settings: Settings, up: UploadFile | None, uri: str | None, fmt: str | None, role: str, tmp: list[str]):
    """(Source, description, size) of an upload or a server-side location."""
    if up is not None and uri:
        raise bad("ambiguous_source", f"give either the {role} file or its uri, not both")
    if up is None and not uri:
        return None, None, 0
    if fmt is not None and fmt not in FORMATS:  # before it names the saved upload's file
        raise bad("unknown_format", f"format {fmt[:100]!r} unknown; formats: {', '.join(FORMATS)}")
    if up is not None:
        fmt = fmt or guess_format(up.filename)
        if fmt is None:
            raise bad("unknown_format", f"cannot tell the format of {up.filename!r}; pass format= (parquet, arrow, "
                                        f"csv, npz)")
        path = _save_upload(settings, up, fmt)
        tmp.append(path)
        return Source(path, fmt), f"upload:{(up.filename or '')[:200]}", os.path.getsize(path)
    path, fs, size = service.resolve_location(settings, uri)
    fmt = fmt or guess_format(uri)
    if fmt is None:
        raise bad("unknown_format", f"cannot tell the format of {uri!r}; pass format= (parquet, arrow, csv, npz)")
    if size > settings.max_dataset_bytes:
        raise DatasetError(413, "dataset_too_large", f"{uri!r} holds {size} bytes; the limit is "
                                                     f"{settings.max_dataset_bytes} (LETHE_MAX_DATASET_BYTES)")
    return Source(path, fmt, fs), uri, size


@router.post("", status_code=201, response_model=DatasetRead,
             summary="Register a dataset: upload a file or name a server-side location",
             responses={202: {"model": DatasetRead, "description": "accepted; ingesting in the background"},
                        **responses(e409="the name is taken", e413="a file above LETHE_MAX_DATASET_BYTES",
                                    e422="the file or a field is refused: the code says which check failed")})
def create_dataset(
        session: SessionDep, settings: SettingsDep, response: Response,
        principal: Annotated[Principal, Depends(require_scope(MODELS_ADMIN, limit=EXPENSIVE))],
        name: Annotated[str, Form(description="dataset name: a-z 0-9 . _ -")],
        file: Annotated[UploadFile | None, File(description="Parquet, Arrow IPC, CSV or .npz")] = None,
        uri: Annotated[str | None, Form(description="instead of a file: a path or URI under LETHE_DATASET_ROOTS")] = None,
        eval_file: Annotated[UploadFile | None, File(description="held-out evaluation rows (same columns)")] = None,
        eval_uri: Annotated[str | None, Form(description="held-out evaluation rows at a server-side location")] = None,
        format: Annotated[str | None, Form(description="parquet, arrow, csv or npz (default: from the name)",
                                          json_schema_extra={"enum": list(FORMATS)})] = None,
        kind: Annotated[str | None, Form(description="tabular, tensor, image or tokens (default: inferred)",
                                        json_schema_extra={"enum": list(KINDS)})] = None,
        columns: Annotated[str | None, Form(description="tabular: feature columns (JSON list)")] = None,
        feature_column: Annotated[str | None, Form(description="tensor/image/tokens: the feature column")] = None,
        shape: Annotated[str | None, Form(description="JSON list: tensor shape, image [C,H,W], tokens [max_len]")] = None,
        classes: Annotated[str | None, Form(description="JSON list of class names; labels must be among them")] = None,
        test_fraction: Annotated[float | None, Form(description="hold out this random fraction as the test split")] = None,
        seed: Annotated[int, Form(description="seed of the random split and of the row shuffle")] = 0):
    spec = Spec(kind=kind, columns=_json_field(columns, "columns", list), feature_column=feature_column,
                shape=_json_field(shape, "shape", list), classes=_json_field(classes, "classes", list),
                test_fraction=test_fraction, seed=seed)
    if spec.classes is not None:
        spec.classes = [str(c) for c in spec.classes]
    tmp: list[str] = []
    try:
        source, desc, size = _open(settings, file, uri, format, "training", tmp)
        if source is None:
            raise bad("missing_file", "upload a file (field 'file') or name a server-side location (field 'uri')")
        eval_source, eval_desc, eval_size = _open(settings, eval_file, eval_uri, format, "evaluation", tmp)
        if eval_desc:
            desc = f"{desc} + eval {eval_desc}"
        actor = principal.actor
        if size + eval_size <= settings.dataset_inline_bytes:
            service.register(settings, name, source, spec, source_desc=desc, actor=actor, eval_source=eval_source)
        else:
            service.begin(session, name, source=desc, actor=actor)
            session.commit()  # the row is visible before the thread starts
            threading.Thread(target=_background, name=f"ingest-{name}", daemon=True,
                             args=(settings, name, source, spec, eval_source, list(tmp))).start()
            tmp = []  # the thread removes them
            response.status_code = 202
    finally:
        for p in tmp:
            with _suppress():
                os.unlink(p)
    session.expire_all()
    row = service.get(session, name)
    return to_read(row, service.models_using(session, name))


def _background(settings: Settings, name: str, source, spec, eval_source, tmp: list[str]) -> None:
    try:
        service.ingest(settings, name, source, spec, eval_source)
    except DatasetError as e:
        service.fail(settings, name, e)
    except Exception as e:  # noqa: BLE001 - recorded on the dataset row
        service.log.exception("dataset %s: background ingestion failed", name)
        service.fail(settings, name, DatasetError(500, "ingest_failed", f"{e.__class__.__name__}: {e}"))
    finally:
        for p in tmp:
            with _suppress():
                os.unlink(p)


def _suppress():
    import contextlib

    return contextlib.suppress(FileNotFoundError)


def _seen(session, settings, principal, name: str) -> list[str] | None:
    """The models trained on dataset ``name`` that the caller may see; None when a tenant's
    key may see none of them (then the dataset is not shown to it: app/tenants)."""
    models = service.models_using(session, name)
    seen = tenant_policy.visible_models(session, principal, settings)
    if seen is None:
        return models
    mine = [m for m in models if m in seen]
    return mine or None


@router.get("", response_model=list[DatasetRead], summary="Registered datasets (a tenant's key: those its "
                                                          "granted models were trained on)")
def list_datasets(session: SessionDep, settings: SettingsDep, principal: Annotated[Principal, READ]):
    out = []
    for r in service.list_all(session):
        models = _seen(session, settings, principal, r.name)
        if models is not None:
            out.append(to_read(r, models))
    return out


@router.get("/{name}", response_model=DatasetRead,
            summary="One dataset: status, schema, splits, rows, erased rows, models trained on it",
            responses=responses(e404="no dataset of that name"))
def get_dataset(name: str, session: SessionDep, settings: SettingsDep, principal: Annotated[Principal, READ]):
    row = service.get(session, name)
    models = _seen(session, settings, principal, name) if row is not None else None
    if models is None:
        raise DatasetError(404, "unknown_dataset", f"dataset {name!r} is not registered")
    return to_read(row, models)

