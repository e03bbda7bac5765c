"""``/v1/subscriptions``: who receives registry events; ``/v1/events``: the events themselves,
for a receiver that missed some (a gap in a model's sequence) to resync."""
from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from ..audit import service as audit
from ..db import utcnow
from ..deps import SessionDep, SettingsDep
from ..errors import LetheError, responses
from ..forget.schemas import WebhookDeliveryRead
from ..limits import MAX_DB_INT
from ..registry import service as registry
from ..security import AUDIT_READ, MODELS_ADMIN, MODELS_READ, Principal, require_scope
from ..tenants import service as tenant_policy
from ..webhooks import outbound
from ..webhooks.models import FAILED, PENDING, WebhookDelivery
from . import service
from .models import RegistryEvent, Subscription

router = APIRouter(prefix="/v1", tags=["events"])
# operators subscribe to anything; a serving system's models:read key to its tenant's models
MANAGE = require_scope(MODELS_ADMIN, MODELS_READ)
READ = require_scope(MODELS_ADMIN, MODELS_READ, AUDIT_READ)
UNKNOWN = responses(e404="unknown subscription")


class SubscriptionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"url": "https://serving.example.com/lethe-events", "model": "mnist-cnn"},
        {"url": "https://ops.example.com/hooks", "events": ["model.version_purged", "forget.failed"]}]})

    url: str = Field(max_length=2048, description="where events are POSTed (public addresses only, unless "
                                                  "LETHE_CALLBACK_ALLOW opens others)")
    model: str | None = Field(default=None, max_length=128, description="one model's events; omitted: every model "
                                                                        "the key may see")
    events: list[str] | None = Field(default=None, max_length=len(service.EVENTS),
                                     description=f"of {', '.join(service.EVENTS)}; omitted: every model.* event "
                                                 "(forget.* need models:admin)")


class SubscriptionRead(BaseModel):
    id: str
    url: str
    model: str | None
    events: list[str]
    tenant: str | None = Field(description="the tenant whose grants limit it; None: an operator's (every model)")
    created_by: str
    created_at: dt.datetime
    deleted_at: dt.datetime | None = None
    deliveries: dict[str, int] = Field(default_factory=dict, description="deliveries by status")


class EventRead(BaseModel):
    id: str
    event: str
    model: str
    sequence: int | None = Field(description="the model's event number; None for forget.* events")
    at: dt.datetime
    data: dict


def _read(session, s: Subscription) -> SubscriptionRead:
    from sqlalchemy import func

    counts = dict(session.execute(select(WebhookDelivery.status, func.count()).where(
        WebhookDelivery.subscription_id == s.id).group_by(WebhookDelivery.status)).all())
    return SubscriptionRead(id=s.id, url=s.url, model=s.model_name, events=list(s.events), tenant=s.tenant,
                            created_by=s.created_by, created_at=s.created_at, deleted_at=s.deleted_at,
                            deliveries=counts)


def _own(session, principal: Principal, sub_id: str) -> Subscription:
    s = session.get(Subscription, sub_id)
    tenant = principal.sees_tenant
    if s is None or (tenant is not None and s.tenant != tenant):
        raise LetheError(404, "unknown_subscription", f"subscription {sub_id!r} not found")
    return s


@router.post("/subscriptions", response_model=SubscriptionRead, status_code=201,
             responses=responses(e403="forget.* events need models:admin",
                                 e404="unknown model (or not granted to the key's tenant)",
                                 e422="unknown event, or a URL that is refused (non-public address, credentials)"),
             summary="Subscribe a URL to registry events (a model's or every model's): signed, retried, logged")
def subscribe(body: SubscriptionBody, session: SessionDep, settings: SettingsDep,
              principal: Annotated[Principal, Depends(MANAGE)]):
    """Deliveries are signed like request webhooks (`Lethe-Signature`, docs/serving.md) and
    carry the event's `id` (dedupe) and the model's `sequence` (gap detection)."""
    tenant = principal.sees_tenant
    events = list(dict.fromkeys(body.events)) if body.events else list(service.MODEL_EVENTS)
    unknown = [e for e in events if e not in service.EVENTS]
    if unknown or not events:
        raise LetheError(422, "unknown_event", f"unknown event(s) {unknown}; events are {', '.join(service.EVENTS)}")
    if tenant is not None and any(e in service.OPERATOR_EVENTS for e in events):
        raise LetheError(403, "operator_event", f"{', '.join(service.OPERATOR_EVENTS)} are about requests: they "
                                                f"need an operator's key (models:admin)")
    if body.model is not None:
        seen = tenant_policy.visible_models(session, principal, settings)
        if registry.get_model(session, body.model) is None or (seen is not None and body.model not in seen):
            raise LetheError(404, "unknown_model", f"model {body.model!r} is not registered")
    try:
        outbound.check(body.url, settings.callback_allow)
    except outbound.UnsafeCallback as e:
        raise LetheError(422, "subscription_url_refused", str(e).replace("callback_url", "url"))
    s = Subscription(id=str(uuid.uuid4()), tenant=tenant, model_name=body.model, url=body.url, events=events,
                     created_by=principal.actor, created_at=utcnow())
    session.add(s)
    audit.append(session, actor=principal.actor, action="subscription.created",
                 payload={"id": s.id, "model": body.model, "events": events, "tenant": tenant,
                          "url": outbound.destination(body.url)})
    session.flush()
    return _read(session, s)


@router.get("/subscriptions", response_model=list[SubscriptionRead],
            summary="Live subscriptions (a tenant's key: its tenant's) with their delivery counts")
def list_subscriptions(session: SessionDep, principal: Annotated[Principal, Depends(READ)],
                       deleted: Annotated[bool, Query(description="include deleted ones")] = False):
    q = select(Subscription).order_by(Subscription.created_at)
    if principal.sees_tenant is not None:
        q = q.where(Subscription.tenant == principal.sees_tenant)
    if not deleted:
        q = q.where(Subscription.deleted_at.is_(None))
    return [_read(session, s) for s in session.execute(q).scalars()]


@router.get("/subscriptions/{sub_id}", response_model=SubscriptionRead, responses=UNKNOWN,
            summary="One subscription")
def read_subscription(sub_id: str, session: SessionDep, principal: Annotated[Principal, Depends(READ)]):
    return _read(session, _own(session, principal, sub_id))


@router.get("/subscriptions/{sub_id}/deliveries", response_model=list[WebhookDeliveryRead], responses=UNKNOWN,
            summary="A subscription's deliveries, newest first, with every attempt")
def subscription_deliveries(sub_id: str, session: SessionDep, principal: Annotated[Principal, Depends(READ)],
                            limit: Annotated[int, Query(ge=1, le=500)] = 100):
    s = _own(session, principal, sub_id)
    rows = session.execute(select(WebhookDelivery).where(WebhookDelivery.subscription_id == s.id)
                           .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).limit(limit)).scalars()
    return [WebhookDeliveryRead(id=d.id, event=d.event, url=d.url, payload=d.payload, status=d.status,
                                attempts=d.attempts, next_attempt_at=d.next_attempt_at,
                                last_status_code=d.last_status_code, last_error=d.last_error, log=d.log or [],
                                created_at=d.created_at, delivered_at=d.delivered_at) for d in rows]


@router.delete("/subscriptions/{sub_id}", response_model=SubscriptionRead, responses=UNKNOWN,
               summary="Stop a subscription: no new deliveries; pending ones are dropped")
def unsubscribe(sub_id: str, session: SessionDep, principal: Annotated[Principal, Depends(MANAGE)]):
    s = _own(session, principal, sub_id)
    if s.deleted_at is None:
        s.deleted_at = utcnow()
        for d in session.execute(select(WebhookDelivery).where(WebhookDelivery.subscription_id == s.id,
                                                               WebhookDelivery.status == PENDING)).scalars():
            d.status, d.next_attempt_at, d.last_error = FAILED, None, "subscription deleted"
        audit.append(session, actor=principal.actor, action="subscription.deleted", payload={"id": s.id})
        session.flush()
    return _read(session, s)


@router.get("/events", response_model=list[EventRead], responses=responses(e404="unknown model"),
            summary="Registry events, oldest first: a model's after a sequence number (resync after a gap)")
def list_events(session: SessionDep, settings: SettingsDep, principal: Annotated[Principal, Depends(READ)],
                model: Annotated[str | None, Query(max_length=128, description="one model's events")] = None,
                after: Annotated[int, Query(ge=0, le=MAX_DB_INT, description="only events with a larger sequence (with model)")] = 0,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100):
    seen = tenant_policy.visible_models(session, principal, settings)
    if model is not None and (registry.get_model(session, model) is None or (seen is not None and model not in seen)):
        raise LetheError(404, "unknown_model", f"model {model!r} is not registered")
    q = select(RegistryEvent)
    if model is not None:
        q = q.where(RegistryEvent.model_name == model, RegistryEvent.seq > after).order_by(RegistryEvent.seq) \
            if after else q.where(RegistryEvent.model_name == model).order_by(RegistryEvent.created_at)
    else:
        if seen is not None:
            q = q.where(RegistryEvent.model_name.in_(sorted(seen)))
        q = q.order_by(RegistryEvent.created_at, RegistryEvent.model_name, RegistryEvent.seq)
    out = []
    operator = principal.sees_tenant is None
    for e in session.execute(q.limit(limit)).scalars():
        if e.event in service.OPERATOR_EVENTS and not operator:
            continue
        body = json.loads(e.payload)
        out.append(EventRead(id=e.id, event=e.event, model=e.model_name, sequence=e.seq, at=e.created_at,
                             data=body["data"]))
    return out
