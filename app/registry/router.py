from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from ..catalogue import service as catalogue
from ..catalogue import store
from ..deps import ServingDep, SessionDep, SettingsDep
from . import service
from .models import PRODUCTION

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelRead(BaseModel):
    name: str
    dataset: str
    arch: str
    input_shape: list[int]
    classes: list[str]
    aliases: dict[str, int]
    latest_version: int | None
    family: str = "instance"


class VersionRead(BaseModel):
    version: int
    sha256: str
    storage_path: str
    parent_version: int | None
    job_id: str | None
    status: str
    metrics: dict | None
    created_at: dt.datetime


class AliasMoveRead(BaseModel):
    alias: str
    from_version: int | None
    to_version: int
    job_id: str | None
    actor: str
    moved_at: dt.datetime


class VersionsRead(BaseModel):
    model: str
    aliases: dict[str, int]
    versions: list[VersionRead]
    alias_moves: list[AliasMoveRead]


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"instance_ids": ["mnist5k-00007"]}, {"inputs": [[[0.0] * 8] * 8]}]})

    instance_ids: list[str] | None = Field(default=None, description="catalogued instances (raw data not erased)")
    inputs: list[Any] | None = Field(default=None, description="raw inputs, each shaped like the model's input_shape "
                                                               "(or flattened)")


class Prediction(BaseModel):
    instance_id: str | None = None
    label: int
    class_name: str
    confidence: float


class PredictRead(BaseModel):
    model: str
    version: int
    sha256: str
    predictions: list[Prediction]


def _model_or_404(session, name):
    m = service.get_model(session, name)
    if m is None:
        raise HTTPException(404, f"model {name!r} is not registered")
    return m


@router.get("", response_model=list[ModelRead])
def list_models(session: SessionDep):
    out = []
    for m in service.list_models(session):
        vs = service.versions(session, m.name)
        out.append(ModelRead(name=m.name, dataset=m.dataset, arch=m.arch, input_shape=m.input_shape,
                             classes=m.classes, aliases=service.aliases(session, m.name),
                             latest_version=vs[-1].version if vs else None, family=m.family))
    return out


@router.get("/{name}/versions", response_model=VersionsRead)
def list_versions(name: str, session: SessionDep):
    _model_or_404(session, name)
    return VersionsRead(
        model=name, aliases=service.aliases(session, name),
        versions=[VersionRead(version=v.version, sha256=v.sha256, storage_path=v.storage_path,
                              parent_version=v.parent_version, job_id=v.job_id, status=v.status,
                              metrics=v.metrics, created_at=v.created_at) for v in service.versions(session, name)],
        alias_moves=[AliasMoveRead(alias=a.alias, from_version=a.from_version, to_version=a.to_version,
                                   job_id=a.job_id, actor=a.actor, moved_at=a.moved_at)
                     for a in service.alias_moves(session, name)])


def _numeric(x, path="inputs") -> None:
    if isinstance(x, list):
        for i, v in enumerate(x):
            _numeric(v, f"{path}[{i}]")
    elif isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise HTTPException(422, f"{path} must be a finite number, got {x!r}")


@router.post("/{name}/predict", response_model=PredictRead,
             summary="Predict with the version the 'production' alias points to now")
def predict(name: str, body: PredictBody, session: SessionDep, settings: SettingsDep, serving: ServingDep):
    m = _model_or_404(session, name)
    if (body.instance_ids is None) == (body.inputs is None):
        raise HTTPException(422, "give exactly one of instance_ids or inputs")
    n = len(body.instance_ids if body.instance_ids is not None else body.inputs)
    if n == 0:
        raise HTTPException(422, "nothing to predict: the list is empty")
    if n > settings.max_predict_inputs:
        raise HTTPException(422, f"{n} inputs; at most {settings.max_predict_inputs} per call")
    shape = tuple(m.input_shape)
    ids: list[str | None] = [None] * n
    if body.instance_ids is not None:
        rows = catalogue.by_ids(session, name, body.instance_ids)
        unknown = [i for i in body.instance_ids if i not in rows]
        if unknown:
            raise HTTPException(422, f"not in the catalogue of {name!r}: {', '.join(unknown[:10])}")
        gone = [i for i in body.instance_ids if rows[i].raw_deleted_at is not None or rows[i].erased_at is not None]
        if gone:
            raise HTTPException(410, f"raw data erased for: {', '.join(gone[:10])}; send their inputs instead")
        x = np.stack([store.read(rows[i].storage_uri) for i in body.instance_ids]).astype(np.float32)
        ids = list(body.instance_ids)
    else:
        _numeric(body.inputs)
        try:
            x = np.asarray(body.inputs, dtype=np.float32)
        except ValueError:
            raise HTTPException(422, "inputs are ragged: every input must have the same shape")
        size = int(np.prod(shape))
        if x.shape[1:] == shape:
            pass
        elif x.ndim == 2 and x.shape[1] == size:
            x = x.reshape((n, *shape))
        else:
            raise HTTPException(422, f"each input must have shape {list(shape)} or be a flat list of {size} "
                                     f"numbers; got {list(x.shape[1:])}")
    version = service.resolve_alias(session, name, PRODUCTION)
    if version is None:
        raise HTTPException(409, f"model {name!r} has no '{PRODUCTION}' alias")
    import torch

    model, meta = serving.get(settings.registry_dir, version)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x)), dim=1)
    conf, labels = probs.max(dim=1)
    classes = meta["classes"]
    return PredictRead(model=name, version=version.version, sha256=version.sha256, predictions=[
        Prediction(instance_id=ids[k], label=int(labels[k]), class_name=str(classes[int(labels[k])]),
                   confidence=float(conf[k])) for k in range(n)])
