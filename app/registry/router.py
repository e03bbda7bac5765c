from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from ..catalogue import service as catalogue
from ..deps import DispatcherDep, ServingDep, SessionDep, SettingsDep
from ..errors import LetheError, responses
from ..jobs import consolidation
from ..jobs import service as jobs
from ..jobs.consolidation import Debt
from ..jobs.dispatch import send_after_commit
from ..jobs.schemas import JobRead
from ..limits import json_int
from ..security import AUDIT_READ, FORGET_READ, MODELS_ADMIN, MODELS_READ, Principal, require_scope
from ..security.ratelimit import EXPENSIVE
from ..tenants import service as tenant_policy
from . import governance
from . import service
from .models import PRODUCTION
from . import training
from .upload import parse_json_field, register_upload

router = APIRouter(prefix="/v1/models", tags=["models"])
architectures_router = APIRouter(prefix="/v1/architectures", tags=["models"])
trainers_router = APIRouter(prefix="/v1/trainers", tags=["models"])
# reading the registry: any key that has a reason to look (models:read: serving systems)
READ = Depends(require_scope(FORGET_READ, AUDIT_READ, MODELS_ADMIN, MODELS_READ))
Reader = Annotated[Principal, READ]  # a tenant's key sees only the models granted to it (app/tenants)
UNKNOWN_MODEL = responses(e404="unknown model")


class ModelRead(BaseModel):
    name: str
    dataset: str
    arch: str
    input_shape: list[int]
    classes: list[str]
    aliases: dict[str, int]
    latest_version: int | None
    family: str = "instance"
    status: str = Field(default="ready", description="ready | training (a training run will publish version 1) | "
                                                     "failed")
    arch_params: dict = Field(default_factory=dict, description="the architecture's constructor parameters")
    recipe: dict | None = Field(default=None, description="the training recipe retraining and SISA shards use")
    tainted: bool = Field(default=False, description="still holds instances erased from another model trained on "
                                                     "the same data: forget them here too")
    erased_elsewhere: int = 0


class VersionRead(BaseModel):
    version: int
    sha256: str
    storage_path: str
    parent_version: int | None
    job_id: str | None
    status: str
    metrics: dict | None
    created_at: dt.datetime
    purged_at: dt.datetime | None = None
    tainted: bool = Field(default=False, description="holds data erased since: never served again")
    erased_instances_held: int = 0
    exact: bool = Field(default=True, description="what training from scratch on the retained data gives (version 1, "
                                                  "a retrain, a sharded model); false: forgot approximately")
    debt: dict = Field(default_factory=dict, description="approximation debt since the last exact version: "
                                                         "instances, versions, due_at (earliest due date of a "
                                                         "request served approximately)")
    superseded_by: int | None = Field(default=None, description="the exact version that consolidated this "
                                                                "approximate one: never served again")


class AliasMoveRead(BaseModel):
    alias: str
    from_version: int | None
    to_version: int
    job_id: str | None
    actor: str
    moved_at: dt.datetime
    reason: str | None = None


class AliasBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"version": 3, "reason": "v4 misbehaves on class 7; back to v3"}]})

    version: json_int(1)
    reason: str | None = Field(default=None, max_length=2000)


class AliasRead(BaseModel):
    model: str
    alias: str
    version: int
    moved: bool
    aliases: dict[str, int]


class UploadRead(BaseModel):
    name: str
    arch: str
    arch_params: dict = {}
    recipe: dict | None = None
    dataset: str
    version: int
    sha256: str
    uploaded_sha256: str
    test_accuracy: float
    instances: int
    aliases: dict[str, int]


class VersionsRead(BaseModel):
    model: str
    aliases: dict[str, int]
    versions: list[VersionRead]
    alias_moves: list[AliasMoveRead]


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"instance_ids": ["mnist5k-00007"]}, {"inputs": [[[0.0] * 8] * 8]}]})

    instance_ids: list[str] | None = Field(default=None, description="catalogued instances (raw data not erased)")
    inputs: list[Any] | None = Field(default=None, description="raw inputs, each shaped like the model's input_shape "
                                                               "(or flattened)")
    probabilities: bool = Field(default=False, description="also return each prediction's probability vector "
                                                           "(softmax of the logits, in the model's class order)")


class Prediction(BaseModel):
    instance_id: str | None = None
    label: int
    class_name: str
    confidence: float
    probabilities: list[float] | None = Field(default=None, description="with probabilities=true: one per class, "
                                                                        "in the order of the model's classes")


class PredictRead(BaseModel):
    model: str
    version: int
    sha256: str
    predictions: list[Prediction]


def _model_or_404(session, name, settings=None, principal=None):
    """The model; 404 when it is not registered or, for a tenant's key, not granted (the
    same answer: app/tenants/service.py)."""
    m = service.get_model(session, name)
    seen = tenant_policy.visible_models(session, principal, settings) if principal is not None else None
    if m is None or (seen is not None and name not in seen):
        raise LetheError(404, "unknown_model", f"model {name!r} is not registered")
    return m


@router.get("", response_model=list[ModelRead],
            summary="The registered models: family, dataset, classes, latest version, aliases (a tenant's key: "
                    "those granted to it)")
def list_models(session: SessionDep, settings: SettingsDep, principal: Reader):
    out = []
    seen = tenant_policy.visible_models(session, principal, settings)
    for m in service.list_models(session):
        if seen is not None and m.name not in seen:
            continue
        vs = service.versions(session, m.name)
        out.append(_model_read(session, m, vs))
    return out


def _model_read(session, m, vs) -> ModelRead:
    held = catalogue.data_taint(session, m.name)
    return ModelRead(name=m.name, dataset=m.dataset, arch=m.arch, input_shape=m.input_shape, classes=m.classes,
                     aliases=service.aliases(session, m.name), latest_version=vs[-1].version if vs else None,
                     family=m.family, status=m.status or "ready", arch_params=m.arch_params or {},
                     recipe=service.recipe_of(m).to_json() if m.family == "instance" else m.recipe,
                     tainted=held > 0, erased_elsewhere=held)


@router.get("/{name}", response_model=ModelRead, responses=UNKNOWN_MODEL,
            summary="One model: architecture, recipe, "
            "status, aliases, and whether it still holds data erased elsewhere")
def read_model(name: str, session: SessionDep, settings: SettingsDep, principal: Reader):
    m = _model_or_404(session, name, settings, principal)
    return _model_read(session, m, service.versions(session, name))


@router.get("/{name}/versions", response_model=VersionsRead, responses=UNKNOWN_MODEL,
            summary="A model's versions (sha256, parent, job, metrics, tainted, purged), aliases and alias moves")
def list_versions(name: str, session: SessionDep, settings: SettingsDep, principal: Reader):
    _model_or_404(session, name, settings, principal)
    erased = governance.erased_by_job(session, name)
    versions = []
    rows = service.versions(session, name)
    for v in rows:
        t = governance.taint(session, name, v.version, erased)
        versions.append(VersionRead(version=v.version, sha256=v.sha256, storage_path=v.storage_path,
                                    parent_version=v.parent_version, job_id=v.job_id, status=v.status,
                                    metrics=v.metrics, created_at=v.created_at, purged_at=v.purged_at,
                                    tainted=t["tainted"], erased_instances_held=t["erased_instances"],
                                    exact=v.exact, debt=Debt.of(v).to_json(),
                                    superseded_by=governance.superseded_by(session, name, v.version, rows)))
    return VersionsRead(model=name, aliases=service.aliases(session, name), versions=versions,
                        alias_moves=[_move(a) for a in service.alias_moves(session, name)])


def _move(a) -> AliasMoveRead:
    return AliasMoveRead(alias=a.alias, from_version=a.from_version, to_version=a.to_version, job_id=a.job_id,
                         actor=a.actor, moved_at=a.moved_at, reason=a.reason)


@router.post("/{name}/consolidate", response_model=JobRead, status_code=202,
             responses=responses(e404="unknown model",
                                 e409="a sharded model (always exact) or no 'production' version"),
             summary="Retrain from scratch now (a consolidation job): the next version is exact and "
                     "consolidates every request served approximately")
def consolidate(name: str, session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep,
                principal: Annotated[Principal, Depends(require_scope(MODELS_ADMIN))]):
    """The job retrains with the model's recipe on every retained row and takes over the
    model's queued forget requests it serves; the sweeper starts one by itself when the
    approximation debt passes `LETHE_CONSOLIDATE_AFTER_*` or a due date nears. A
    consolidation already queued or running is answered instead of a second one."""
    job, created = consolidation.request(session, name, actor=principal.actor, reason=f"asked by {principal.actor}",
                                         max_attempts=settings.max_attempts)
    session.commit()
    if created:
        send_after_commit(dispatcher, job.id)
    return JobRead.of(*jobs.get_with_request_ids(session, job.id))


@router.get("/{name}/aliases/history", response_model=list[AliasMoveRead], responses=UNKNOWN_MODEL,
            summary="Every move of the model's aliases, oldest first (who, when, from, to, why)")
def alias_history(name: str, session: SessionDep, settings: SettingsDep, principal: Reader,
                  alias: Annotated[str | None, Query(max_length=64, description="only this alias")] = None):
    _model_or_404(session, name, settings, principal)
    return [_move(a) for a in governance.alias_history(session, name, alias)]


@router.put("/{name}/aliases/{alias}", response_model=AliasRead,
            responses=responses(e404="unknown model or version",
                                e409="the version is tainted (trained on data erased since) or purged",
                                e422="an alias name or version that is not well formed"),
            summary="Point an alias at a version (rollback or move forward); refused for tainted versions")
def put_alias(name: str, alias: str, body: AliasBody, session: SessionDep,
              principal: Annotated[Principal, Depends(require_scope(MODELS_ADMIN))]):
    move = governance.set_alias(session, model_name=name, alias=alias, version=body.version,
                                actor=principal.actor, reason=body.reason)
    return AliasRead(model=name, alias=alias, version=body.version, moved=move is not None,
                     aliases=service.aliases(session, name))


@router.post("", response_model=UploadRead, status_code=201,
             responses=responses(e409="name taken", e415="pickled checkpoint refused",
                                 e422="not safetensors, weights do not fit, bad manifest, unknown arch or dataset"),
             summary="Register your own model: safetensors weights + architecture + training-data manifest")
def upload_model(session: SessionDep, settings: SettingsDep,
                 principal: Annotated[Principal, Depends(require_scope(MODELS_ADMIN, limit=EXPENSIVE))],
                 name: Annotated[str, Form(description="new model name")],
                 arch: Annotated[str, Form(description="architecture name: the zoo or an installed plug-in "
                                                       "(GET /v1/architectures)")],
                 dataset: Annotated[str, Form(description="dataset the manifest's instance ids come from")],
                 weights: Annotated[UploadFile, File(description="safetensors state dict (pickles are refused)")],
                 manifest: Annotated[UploadFile | str, File(description='JSON, a file (-F manifest=@m.json) or the '
                                                                          'text itself (-F \'manifest={...}\'): '
                                                                          '{"instances": [{"instance_id", '
                                                                          '"subject_id"?}, ...]} or '
                                                                          '{"all_training_rows": true}')],
                 arch_params: Annotated[str | None, Form(description='JSON object: the architecture\'s constructor '
                                                                     'parameters, e.g. {"widths": [64, 32]}')] = None,
                 recipe: Annotated[str | None, Form(description='JSON object: how it was trained (optimizer, lr, '
                                                                'epochs, batch_size, weight_decay, seed); retraining '
                                                                'uses it')] = None):
    """The weights are checked against the architecture, evaluated on the dataset's test
    split, re-saved with Lethe's metadata (content-addressed), registered as version 1 under
    `production`, and the manifest's instances are catalogued (subject ids as keyed hashes)."""
    out = register_upload(session, settings, name=name, arch=arch, dataset=dataset, weights=weights.file.read(),
                          filename=weights.filename, actor=principal.actor,
                          manifest_raw=manifest if isinstance(manifest, str) else manifest.file.read(),
                          arch_params=parse_json_field(arch_params, "arch_params"), recipe=parse_json_field(recipe, "recipe"))
    return UploadRead(**out)


_F32_MAX = float(np.finfo(np.float32).max)


def _finite32(x: int | float) -> bool:
    """Inputs are cast to float32: 1e300 becomes inf (and the softmax NaN); 10**400 does not
    even fit a float (OverflowError)."""
    try:
        return math.isfinite(x) and abs(float(x)) <= _F32_MAX
    except OverflowError:
        return False


def _numeric(x, path="inputs") -> None:
    if isinstance(x, list):
        for i, v in enumerate(x):
            _numeric(v, f"{path}[{i}]")
    elif isinstance(x, bool) or not isinstance(x, (int, float)) or not _finite32(x):
        raise LetheError(422, "bad_input", f"{path} must be a finite number as float32 "
                                           f"(|x| <= {_F32_MAX:.4g}), got {str(x)[:40]}")


@router.post("/{name}/predict", response_model=PredictRead,
             summary="Predict with the version the 'production' alias points to now",
             responses=responses(e404="unknown model", e409="no 'production' alias",
                                 e422="not exactly one of instance_ids/inputs, too many, wrong shape, not numbers, "
                                      "an id with no stored data (never catalogued or erased: the same answer)",
                                 e500="the weights fail their sha256 check or are missing"))
def predict(name: str, body: PredictBody, session: SessionDep, settings: SettingsDep, serving: ServingDep,
            principal: Annotated[Principal, Depends(require_scope(FORGET_READ, MODELS_ADMIN, limit=EXPENSIVE))]):
    m = _model_or_404(session, name, settings, principal)
    if (body.instance_ids is None) == (body.inputs is None):
        raise LetheError(422, "bad_selection", "give exactly one of instance_ids or inputs")
    n = len(body.instance_ids if body.instance_ids is not None else body.inputs)
    if n == 0:
        raise LetheError(422, "empty_selection", "nothing to predict: the list is empty")
    if n > settings.max_predict_inputs:
        raise LetheError(422, "too_many_inputs", f"{n} inputs; at most {settings.max_predict_inputs} per call")
    shape = tuple(m.input_shape)
    ids: list[str | None] = [None] * n
    if body.instance_ids is not None:
        rows = catalogue.by_ids(session, name, body.instance_ids)
        # one answer for "never catalogued" and "erased": a distinct 410 told a caller which
        # ids had been in the data and were erased (no oracle, docs/service.md)
        missing = [i for i in body.instance_ids if i not in rows
                   or rows[i].raw_deleted_at is not None or rows[i].erased_at is not None]
        if missing:
            raise LetheError(422, "unknown_instances", f"no stored data in the catalogue of {name!r} for: "
                                                       f"{', '.join(missing[:10])}; send their inputs instead")
        x, _ = catalogue.load_arrays([rows[i] for i in body.instance_ids])
        ids = list(body.instance_ids)
    else:
        _numeric(body.inputs)
        try:
            x = np.asarray(body.inputs, dtype=np.float32)
        except ValueError:
            raise LetheError(422, "bad_input", "inputs are ragged: every input must have the same shape")
        size = int(np.prod(shape))
        if x.shape[1:] == shape:
            pass
        elif x.ndim == 2 and x.shape[1] == size:
            x = x.reshape((n, *shape))
        else:
            raise LetheError(422, "bad_input_shape", f"each input must have shape {list(shape)} or be a flat list of {size} "
                                     f"numbers; got {list(x.shape[1:])}")
    version = service.resolve_alias(session, name, PRODUCTION)
    if version is None:
        raise LetheError(409, "no_production_version", f"model {name!r} has no '{PRODUCTION}' alias")
    import torch

    model, meta = serving.get(service.weights(settings), version)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x)), dim=1)
    conf, labels = probs.max(dim=1)
    classes = meta["classes"]
    return PredictRead(model=name, version=version.version, sha256=version.sha256, predictions=[
        Prediction(instance_id=ids[k], label=int(labels[k]), class_name=str(classes[int(labels[k])]),
                   confidence=float(conf[k]), probabilities=probs[k].tolist() if body.probabilities else None)
        for k in range(n)])


class ArchitecturesRead(BaseModel):
    architectures: list[dict] = Field(description="name, inputs (image | tabular | tokens | any), summary, source "
                                                  "(entry point), params (type, default, choices, required)")
    problems: dict[str, str] = Field(description="plug-ins that failed to load or clashed with a taken name, and why")


@architectures_router.get("", response_model=ArchitecturesRead, dependencies=[READ],
                          summary="Architectures a model can use: the built-in zoo and installed plug-ins")
def list_architectures():
    """Plug-ins are Python packages the operator installs, declared in the entry-point group
    `lethe.architectures`; nothing executable is ever uploaded (docs/own-models.md)."""
    from models import architectures

    return ArchitecturesRead(architectures=[architectures.get(n).to_json() for n in architectures.names()],
                             problems=architectures.problems())


class TrainersRead(BaseModel):
    trainers: list[dict] = Field(description="name, summary, source (entry point), params (the trainer's JSON "
                                             "schema: what recipe.trainer_params accepts)")
    problems: dict[str, str] = Field(description="plug-ins that failed to load or clashed with a taken name, and why")


@trainers_router.get("", response_model=TrainersRead, dependencies=[READ],
                     summary="Trainers a model can be trained and retrained by: Lethe's loop and installed plug-ins")
def list_trainers():
    """Plug-ins are Python packages the operator installs, declared in the entry-point group
    `lethe.trainers`; a model names one in its recipe (`trainer`, `trainer_params`) and every
    training run, retrain, shard retrain and consolidation of it uses it (docs/own-models.md)."""
    from models import trainers

    return TrainersRead(trainers=[trainers.get(n).to_json() for n in trainers.names()],
                        problems=trainers.problems())


class TrainingRunRead(BaseModel):
    id: str
    model: str
    dataset: str
    status: str = Field(description="queued | running | completed | failed")
    stage: str
    progress: float
    error: str | None = None
    metrics: dict | None = None
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


def _run_read(r) -> TrainingRunRead:
    return TrainingRunRead(id=r.id, model=r.model_name, dataset=r.dataset, status=r.status, stage=r.stage,
                           progress=r.progress, error=r.error, metrics=r.metrics, created_at=r.created_at,
                           started_at=r.started_at, finished_at=r.finished_at)


@router.post("/{name}/train", response_model=TrainingRunRead, status_code=202,
             responses=responses(e404="unknown dataset", e409="name taken, dataset not ready",
                                 e422="bad name, architecture, parameters or recipe"),
             summary="Lethe trains a new model on a registered dataset (a job with progress)")
def train_model(name: str, body: training.TrainBody, session: SessionDep, settings: SettingsDep,
                dispatcher: DispatcherDep, principal: Annotated[Principal, Depends(require_scope(MODELS_ADMIN, limit=EXPENSIVE))]):
    """Registers `name` (status `training`) with its architecture, parameters and recipe, and
    starts a training run on the dataset's training split; `GET /v1/models/{name}/training`
    shows its progress. When it completes, version 1 is `production` and every training row
    of the dataset is in the model's catalogue, with its subject: the model can forget."""
    run = training.start(session, settings, name, body, actor=principal.actor)
    session.commit()  # the run must be visible before it starts
    training.launch(dispatcher, run.id)
    return _run_read(run)


@router.get("/{name}/training", response_model=list[TrainingRunRead], responses=UNKNOWN_MODEL,
            summary="The model's training runs (status, stage, progress, metrics), oldest first")
def training_runs(name: str, session: SessionDep, settings: SettingsDep, principal: Reader):
    _model_or_404(session, name, settings, principal)
    return [_run_read(r) for r in training.runs_of(session, name)]
