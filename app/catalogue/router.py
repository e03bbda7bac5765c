from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from ..deps import SessionDep, SettingsDep
from ..errors import LetheError, responses
from ..security import MODELS_ADMIN, SUBJECTS_READ, Principal, require_scope
from ..tenants import service as tenant_policy
from ..security import pseudonyms
from ..security.ratelimit import EXPENSIVE
from . import service

router = APIRouter(prefix="/v1", tags=["subjects"])
# an oracle by nature (does a model hold this person's data?): its own scope (app/security/scopes.py)
Reader = Annotated[Principal, Depends(require_scope(SUBJECTS_READ, MODELS_ADMIN, limit=EXPENSIVE))]


class InstanceRead(BaseModel):
    instance_id: str
    model: str
    label: int
    content_hash: str
    erased: bool
    erased_at: dt.datetime | None = None
    raw_data_deleted: bool
    shard: int | None = None  # sharded (exact) models: SISA shard / ARCANE class sub-model
    slice: int | None = None


class SubjectRow(BaseModel):
    """One row of the subject as a dataset holds it, whatever its split and whether or not
    a model trained on it."""
    dataset: str
    split: str = Field(description="train | test (held-out)")
    instance_id: str
    models: list[str] = Field(description="models whose catalogue holds the row (trained on it, not yet erased)")


class SubjectInstances(BaseModel):
    subject_ref: str
    rows: list[SubjectRow] = Field(default_factory=list,
                                   description="every row of the subject the datasets hold, by dataset and split")
    instances: list[InstanceRead] = Field(description="the models' catalogue rows of the subject (erased ones "
                                                      "included)")


@router.get("/subjects/{subject_id}/instances", response_model=SubjectInstances,
            responses=responses(e404="no dataset and no catalogue holds anything of this subject"),
            summary="What the catalogue holds for a subject (also answers an access request)")
def subject_instances(subject_id: str, session: SessionDep, settings: SettingsDep, principal: Reader,
                      model: str | None = Query(default=None, max_length=128)):
    """Needs `subjects:read` (or `models:admin`): the answer tells whether a model holds the
    person's data. `rows`: every row of the subject in every dataset and split (held-out rows
    and rows no model trained on included), with the models that hold each; `instances`: the
    models' catalogue rows. A tenant's key sees only the models granted to it and their
    datasets (app/tenants); `model` narrows both to one model."""
    ref = pseudonyms.subject_ref(settings.subject_secret, subject_id)
    seen = tenant_policy.visible_models(session, principal, settings)
    rows = [r for r in service.by_subject(session, ref, model) if seen is None or r.model_name in seen]
    stored = _stored_rows(session, settings, ref, seen, model)
    if not rows and not stored:
        raise LetheError(404, "unknown_subject", "no dataset and no catalogue holds anything of this subject"
                         + (f" in model {model!r}" if model else ""))
    return SubjectInstances(subject_ref=ref, rows=stored, instances=[
        InstanceRead(instance_id=r.instance_id, model=r.model_name, label=r.label, content_hash=r.content_hash,
                     erased=r.erased_at is not None, erased_at=r.erased_at,
                     raw_data_deleted=r.raw_deleted_at is not None, shard=r.shard, slice=r.slice) for r in rows])


def _stored_rows(session, settings, ref: str, seen: set[str] | None, model: str | None) -> list[SubjectRow]:
    """The subject's rows in the datasets' stores (those of the visible models for a tenant,
    of ``model`` when named), each with the visible models that hold it live."""
    from sqlalchemy import select

    from ..registry.models import RegisteredModel
    from .models import TrainingInstance
    from .subjects import rows_in_stores

    limit = None
    if seen is not None or model is not None:
        names = [m for m in (seen if seen is not None else [model]) if model is None or m == model]
        limit = set(session.execute(select(RegisteredModel.dataset).where(RegisteredModel.name.in_(names)))
                    .scalars()) - {None}
    out = []
    for dataset, by_split in rows_in_stores(session, settings, ref, limit).items():
        ids = [i for v in by_split.values() for i in v]
        holders: dict[str, list[str]] = {}
        for k in range(0, len(ids), 500):
            for iid, m in session.execute(select(TrainingInstance.instance_id, TrainingInstance.model_name).where(
                    TrainingInstance.dataset == dataset, TrainingInstance.instance_id.in_(ids[k:k + 500]),
                    TrainingInstance.erased_at.is_(None))):
                if (seen is None or m in seen) and (model is None or m == model):
                    holders.setdefault(iid, []).append(m)
        # A tenant's key sees a stored row only through a model granted to it that holds the
        # row: the other rows of a shared dataset (other tenants' subjects, held-out rows) would
        # tell it who is in the data (no oracle, docs/service.md). Operators see every row.
        out += [SubjectRow(dataset=dataset, split=split, instance_id=i, models=sorted(holders.get(i, [])))
                for split, got in sorted(by_split.items()) for i in got if seen is None or holders.get(i)]
    return out
