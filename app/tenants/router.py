"""/v1/tenants: the operator's view and control of each tenant's grants, methods, quotas."""
from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from models import unlearn

from ..deps import SessionDep, SettingsDep
from ..errors import LetheError, responses
from ..limits import json_int
from ..security import AUDIT_READ, MODELS_ADMIN, Principal, require_scope
from ..security import tenants as names
from . import service
from .models import Tenant

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])
Admin = Annotated[Principal, Depends(require_scope(MODELS_ADMIN))]
READ = Depends(require_scope(MODELS_ADMIN, AUDIT_READ))
# the pattern only documents the rule (a bad name answers 422 bad_tenant_name, from check_name)
TenantName = Annotated[str, Path(max_length=64, description="lowercase letters, digits, '_', '.', '-'",
                                 json_schema_extra={"pattern": names.NAME_PATTERN})]
ModelName = Annotated[str, Path(max_length=128)]


class Limits(BaseModel):
    max_open_requests: int = Field(description="0: unlimited")
    max_requests_per_day: int = Field(description="0: unlimited")


class Usage(BaseModel):
    open_requests: int
    requests_last_24h: int
    active_keys: int


class TenantRead(BaseModel):
    name: str
    all_models: bool = Field(description="may target every model, present and future")
    models: list[str] = Field(description="models granted one by one")
    methods: list[str] | None = Field(description="methods it may ask for; null: every method")
    max_open_requests: int | None = Field(description="its own limit; null: LETHE_TENANT_MAX_OPEN_REQUESTS")
    max_requests_per_day: int | None = Field(description="its own limit; null: LETHE_TENANT_MAX_REQUESTS_PER_DAY")
    limits: Limits = Field(description="the limits in force (its own, else the settings)")
    usage: Usage
    created_at: dt.datetime
    updated_at: dt.datetime


class TenantBody(BaseModel):
    """Only the fields sent change; `null` clears `methods` (every method) or a limit (the setting's)."""
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"methods": ["lethe", "finetune"], "max_open_requests": 20, "max_requests_per_day": 500}]})

    all_models: bool = False
    # the enum only documents the methods (an unknown one answers 422 unknown_method, naming them)
    methods: list[Annotated[str, Field(max_length=64, json_schema_extra={"enum": unlearn.method_names()})]] | None = \
        Field(default=None, max_length=64)
    max_open_requests: json_int() | None = None
    max_requests_per_day: json_int() | None = None


def read(session, settings, row: Tenant) -> TenantRead:
    p = service.policy(session, row.name, settings)
    return TenantRead(name=row.name, all_models=row.all_models, models=service.grants(session, row.name),
                      methods=row.methods, max_open_requests=row.max_open_requests,
                      max_requests_per_day=row.max_requests_per_day,
                      limits=Limits(max_open_requests=p.max_open_requests, max_requests_per_day=p.max_requests_per_day),
                      usage=Usage(**service.usage(session, row.name)), created_at=row.created_at,
                      updated_at=row.updated_at)


def _name(tenant: str) -> str:
    try:
        return service.names.check_name(tenant)
    except ValueError as e:
        raise LetheError(422, "bad_tenant_name", str(e)) from e


UNKNOWN = responses(e404="unknown tenant")


@router.get("", response_model=list[TenantRead], dependencies=[READ],
            summary="Every tenant: granted models, allowed methods, quotas and what counts against them")
def list_tenants(session: SessionDep, settings: SettingsDep):
    return [read(session, settings, t) for t in service.list_all(session)]


@router.get("/{tenant}", response_model=TenantRead, dependencies=[READ], responses=UNKNOWN,
            summary="One tenant: granted models, allowed methods, quotas and what counts against them")
def read_tenant(tenant: TenantName, session: SessionDep, settings: SettingsDep):
    row = service.get(session, tenant)
    if row is None:
        raise LetheError(404, "unknown_tenant", f"tenant {tenant!r} not found")
    return read(session, settings, row)


@router.put("/{tenant}", response_model=TenantRead, responses=responses(e422="a bad name, method or limit"),
            summary="Create a tenant or change its methods, quotas, or access to every model")
def put_tenant(tenant: TenantName, body: TenantBody, session: SessionDep, settings: SettingsDep, principal: Admin):
    sent = {f: getattr(body, f) for f in body.model_fields_set}
    row = service.update(session, _name(tenant), actor=principal.actor, **sent)
    return read(session, settings, row)


@router.put("/{tenant}/models/{model}", response_model=TenantRead,
            responses=responses(e404="unknown model", e422="a bad tenant name"),
            summary="Grant a tenant a model: its keys may then target it (forget, predict, read)")
def grant_model(tenant: TenantName, model: ModelName, session: SessionDep, settings: SettingsDep, principal: Admin):
    return read(session, settings, service.grant(session, _name(tenant), model, actor=principal.actor))


@router.delete("/{tenant}/models/{model}", response_model=TenantRead, responses=UNKNOWN,
               summary="Withdraw a tenant's grant of a model (its accepted requests still run)")
def revoke_model(tenant: TenantName, model: ModelName, session: SessionDep, settings: SettingsDep, principal: Admin):
    return read(session, settings, service.revoke(session, tenant, model, actor=principal.actor))
