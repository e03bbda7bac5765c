"""Lethe trains a model on a registered dataset: ``POST /v1/models/{name}/train``.

``start`` checks everything a training run needs (a free name, a ready dataset, an
architecture that takes the dataset's inputs with valid parameters and keeps the unlearning
contract, a valid recipe) and records, in one transaction, the model (status ``training``,
its architecture parameters and recipe) and a ``training_runs`` row; nothing is written when
a check fails. The run itself (``worker.training.run_training``) goes to Celery (task
``lethe.train_model``) or to a thread of the gateway, reports its progress on the run row, and
publishes version 1 + ``production`` + the model's catalogue (every training row of the
dataset, with its subject) in one transaction through ``publish_first_version``, the same
function the demo bootstrap and an upload of weights end in.
"""
from __future__ import annotations

import logging
import uuid

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..catalogue.models import TrainingInstance
from ..db import utcnow
from ..errors import LetheError
from ..settings import Settings
from . import service as registry
from . import starting
from .models import MODEL_FAILED, MODEL_TRAINING, PRODUCTION, TrainingRun
from .upload import NAME_RE, check_model_spec
from ..events import service as events

log = logging.getLogger("lethe.training")

QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"


class TrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"dataset": "customers", "arch": "mlp", "arch_params": {"widths": [64, 32]},
         "recipe": {"optimizer": "adam", "lr": 0.001, "epochs": 10, "batch_size": 64, "weight_decay": 0.0,
                    "seed": 0}}]})

    dataset: str = Field(min_length=1, max_length=64, description="a registered, ready dataset (GET /v1/datasets)")
    arch: str = Field(min_length=1, max_length=64, description="an architecture name (GET /v1/architectures)")
    arch_params: dict | None = Field(default=None, description="the architecture's constructor parameters")
    recipe: dict | None = Field(default=None, description="optimizer, lr, epochs, batch_size, weight_decay, seed "
                                                          "(momentum for sgd), or trainer + trainer_params: a "
                                                          "trainer plug-in (GET /v1/trainers) and its parameters; "
                                                          "stored with the model, every retrain uses it")


def dataset_defaults(arch: str, schema: dict, params: dict | None) -> dict | None:
    """Parameters the dataset decides: a text architecture's ``vocab_size`` (token ids seen
    at ingestion + padding), unless the caller gave one."""
    from models.architectures import ArchitectureError, get

    try:
        a = get(arch)
    except ArchitectureError:
        return params  # check_model_spec names the problem
    params = dict(params or {})
    if "vocab_size" in a.params and "vocab_size" not in params and schema.get("vocab_size"):
        params["vocab_size"] = int(schema["vocab_size"])
    return params or None


def start(session: Session, settings: Settings, name: str, body: TrainBody, *, actor: str) -> TrainingRun:
    """Validate and record a training run (model row ``training`` + run ``queued``)."""
    from ..datasets import service as datasets

    if not NAME_RE.match(name):
        raise LetheError(422, "bad_name", "model name: 1-128 characters, a-z 0-9 . _ -, starting with a letter or digit")
    old = registry.get_model(session, name, lock=True)
    if old is not None and old.status != MODEL_FAILED:
        raise LetheError(409, "model_exists", f"model {name!r} is already registered")
    ds = datasets.get_ready(session, body.dataset)
    shape, classes = list(ds.schema["shape"]), list(ds.classes)
    params, recipe = check_model_spec(body.arch, shape, len(classes),
                                      dataset_defaults(body.arch, ds.schema, body.arch_params), body.recipe)
    if (recipe or {}).get("trainer") == "external":
        raise LetheError(422, "external_trainer", "a model with trainer 'external' is trained by your own pipeline: "
                                                  "register its weights with POST /v1/models; Lethe issues retrain "
                                                  "orders for its exact versions")
    recipe = starting.resolve(session, settings, recipe, arch=body.arch, input_shape=shape,
                              num_classes=len(classes), arch_params=params)
    if old is not None:  # a failed training run left the name: train it again, as now specified
        old.dataset, old.arch, old.input_shape, old.classes = ds.name, body.arch, shape, classes
        old.arch_params, old.recipe, old.status = params or None, recipe, MODEL_TRAINING
    else:
        registry.register_model(session, name=name, dataset=ds.name, arch=body.arch, input_shape=shape,
                                classes=classes, arch_params=params, recipe=recipe, status=MODEL_TRAINING)
    run = TrainingRun(id=str(uuid.uuid4()), model_name=name, dataset=ds.name, status=QUEUED, stage="queued",
                      progress=0.0, created_by=actor[:128], created_at=utcnow())
    session.add(run)
    session.flush()
    audit.append(session, actor=actor, action="model.training_requested",
                 payload={"model": name, "run_id": run.id, "dataset": ds.name, "arch": body.arch,
                          "arch_params": params, "recipe": recipe})
    return run


def get(session: Session, run_id: str) -> TrainingRun | None:
    return session.get(TrainingRun, run_id)


def runs_of(session: Session, model_name: str) -> list[TrainingRun]:
    return list(session.execute(select(TrainingRun).where(TrainingRun.model_name == model_name)
                                .order_by(TrainingRun.created_at)).scalars())


def launch(dispatcher, run_id: str) -> None:
    """Hand the run to the worker side: Celery (task ``lethe.train_model``) or, embedded, a
    thread of the gateway (``worker.embedded.EmbeddedWorker.dispatch_training``)."""
    dispatcher.dispatch_training(run_id)


def publish_first_version(db: Session, name: str, sha: str, rel: str, metrics: dict, rows: list[dict], dataset: str,
                          *, actor: str, **version_extra) -> int:
    """Version 1, the production alias on it and the catalogue, each audited (inside the
    caller's transaction). Returns the version number."""
    v = registry.add_version(db, model_name=name, sha256=sha, storage_path=rel, parent_version=None,
                             job_id=None, metrics=metrics)
    audit.append(db, actor=actor, action="model.version_created",
                 payload={"model": name, "version": v.version, "sha256": sha, "parent_version": None,
                          **version_extra, "metrics": metrics})
    registry.move_alias(db, model_name=name, alias=PRODUCTION, to_version=v.version, actor=actor)
    events.version_published(db, v)
    events.alias_moved(db, name, PRODUCTION, None, v, actor=actor)
    audit.append(db, actor=actor, action="alias.moved",
                 payload={"model": name, "alias": PRODUCTION, "from_version": None, "to_version": v.version})
    db.bulk_insert_mappings(TrainingInstance, rows)
    audit.append(db, actor=actor, action="catalogue.loaded",
                 payload={"model": name, "dataset": dataset, "instances": len(rows)})
    return v.version
