from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from ..deps import SessionDep, SettingsDep
from ..errors import LetheError, responses
from ..security import MODELS_ADMIN, SUBJECTS_READ, Principal, require_scope
from ..tenants import service as tenant_policy
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


class SubjectInstances(BaseModel):
    subject_ref: str
    instances: list[InstanceRead]


@router.get("/subjects/{subject_id}/instances", response_model=SubjectInstances,
            responses=responses(e404="the catalogue holds nothing for this subject"),
            summary="What the catalogue holds for a subject (also answers an access request)")
def subject_instances(subject_id: str, session: SessionDep, settings: SettingsDep, principal: Reader,
                      model: str | None = Query(default=None, max_length=128)):
    """Needs `subjects:read` (or `models:admin`): the answer tells whether a model holds the
    person's data. A tenant's key sees only the models granted to it (app/tenants)."""
    ref = service.subject_ref(settings.subject_secret, subject_id)
    seen = tenant_policy.visible_models(session, principal, settings)
    rows = [r for r in service.by_subject(session, ref, model) if seen is None or r.model_name in seen]
    if not rows:
        raise LetheError(404, "unknown_subject", "the catalogue holds no instances for this subject"
                         + (f" in model {model!r}" if model else ""))
    return SubjectInstances(subject_ref=ref, instances=[
        InstanceRead(instance_id=r.instance_id, model=r.model_name, label=r.label, content_hash=r.content_hash,
                     erased=r.erased_at is not None, erased_at=r.erased_at,
                     raw_data_deleted=r.raw_deleted_at is not None, shard=r.shard, slice=r.slice) for r in rows])
