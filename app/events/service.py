"""Registry events: what a serving system needs to know to stop serving erased data.

Every event is recorded in the transaction that makes the change it announces (the version
published and the alias moved in ``jobs.service.complete``, an operator's alias move in
``governance.set_alias``, a purge in ``governance.purge_superseded``): an event is never
announced unless its change committed, and never lost if the process dies. Each event
gets an id (receivers dedupe at-least-once deliveries on it) and the next ``sequence`` of
its model (1, 2, ...: a receiver that sees a gap missed an event and resyncs from
``GET /v1/events?model=...&after=N`` or the registry itself).

For every live subscription that wants the event and may see the model, a row goes into
``webhook_deliveries`` in the same transaction: the request webhooks' outbox, so delivery
is the same machinery (``app/webhooks/service.py``: HMAC signature over timestamp and body,
outbound URL checks at subscription and at every attempt, retries with backoff, a log of
every attempt).

Body of each delivery (``Lethe-Event`` carries ``event``)::

    {"id": "<event uuid>", "event": "model.alias_moved", "model": "mnist-cnn", "sequence": 7,
     "at": "2026-12-06T18:00:00+00:00", "data": {...}}

Event names follow MLflow's model-registry webhooks where they overlap
(``model_version.created`` -> ``model.version_published``, alias created/moved ->
``model.alias_moved``).
"""
from __future__ import annotations

import json
import types
import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db import utcnow
from ..webhooks.models import PENDING, WebhookDelivery
from .models import RegistryEvent, Subscription

VERSION_PUBLISHED = "model.version_published"
ALIAS_MOVED = "model.alias_moved"
VERSION_PURGED = "model.version_purged"
CONSOLIDATED = "model.consolidated"
TAINTED = "model.tainted"
FORGET_COMPLETED = "forget.completed"
FORGET_FAILED = "forget.failed"
ORDER_ISSUED = "retrain_order.issued"        # app/registry/orders.py: an exact version for the customer's pipeline
ORDER_ESCALATED = "retrain_order.escalated"  # ...not uploaded LETHE_ORDER_ESCALATE_BEFORE_S before its due date
MODEL_EVENTS = (VERSION_PUBLISHED, ALIAS_MOVED, VERSION_PURGED, CONSOLIDATED, TAINTED)
# about requests and orders: operators' subscriptions only
OPERATOR_EVENTS = (FORGET_COMPLETED, FORGET_FAILED, ORDER_ISSUED, ORDER_ESCALATED)
EVENTS = MODEL_EVENTS + OPERATOR_EVENTS


def next_seq(session: Session, model_name: str) -> int:
    """The model's next event number. Callers hold the model's row lock (Postgres) or the
    database's write lock (SQLite), as every registry writer does; the unique (model, seq)
    constraint refuses a duplicate if one did not."""
    return (session.execute(select(func.max(RegistryEvent.seq)).where(
        RegistryEvent.model_name == model_name)).scalar() or 0) + 1


def emit(session: Session, model_name: str, event: str, data: dict) -> RegistryEvent:
    """Record ``event`` of ``model_name`` and queue one delivery per subscription that
    wants it (inside the caller's transaction)."""
    assert event in EVENTS, event
    seq = next_seq(session, model_name) if event in MODEL_EVENTS else None
    e = RegistryEvent(id=str(uuid.uuid4()), model_name=model_name, seq=seq, event=event, created_at=utcnow())
    e.payload = json.dumps({"id": e.id, "event": event, "model": model_name, "sequence": e.seq,
                            "at": e.created_at.isoformat(), "data": data}, sort_keys=True, separators=(",", ":"),
                           default=str)
    session.add(e)
    for sub in receivers(session, model_name, event):
        session.add(WebhookDelivery(id=str(uuid.uuid4()), request_id=None, subscription_id=sub.id, event_id=e.id,
                                    event=event, url=sub.url, payload=e.payload, status=PENDING, attempts=0,
                                    next_attempt_at=utcnow(), log=[], created_at=utcnow()))
    session.flush()
    return e


def receivers(session: Session, model_name: str, event: str) -> list[Subscription]:
    """Live subscriptions to ``event`` of ``model_name``: the model's own and registry-wide
    ones, a tenant's only while the model is granted to it, operator events only to
    operators."""
    from ..tenants import service as tenants

    subs = session.execute(select(Subscription).where(
        Subscription.deleted_at.is_(None),
        (Subscription.model_name == model_name) | Subscription.model_name.is_(None))).scalars()
    out = []
    policies: dict[str, bool] = {}
    for s in subs:
        if event not in (s.events or []):
            continue
        if s.tenant is not None:
            if event in OPERATOR_EVENTS:
                continue
            if s.tenant not in policies:
                policies[s.tenant] = _tenant_sees(session, s.tenant, model_name, tenants)
            if not policies[s.tenant]:
                continue
        out.append(s)
    return out


def _tenant_sees(session: Session, tenant: str, model_name: str, tenants) -> bool:
    # only the grants matter here, not the quotas the settings fill in
    return tenants.policy(session, tenant, _NO_QUOTAS).may_target(model_name)


_NO_QUOTAS = types.SimpleNamespace(tenant_max_open_requests=0, tenant_max_requests_per_day=0)


# --- what the registry's writers call (inside their transaction) ---------------------------------

def version_published(session: Session, v, *, alias: str | None = None) -> RegistryEvent:
    return emit(session, v.model_name, VERSION_PUBLISHED, {
        "version": v.version, "sha256": v.sha256, "parent_version": v.parent_version, "job_id": v.job_id,
        "exact": bool(v.exact), "metrics": v.metrics,
        "weights_url": f"/v1/models/{v.model_name}/versions/{v.version}/weights"})


def alias_moved(session: Session, model_name: str, alias: str, from_version: int | None, to: "object", *,
                job_id: str | None = None, actor: str | None = None, reason: str | None = None) -> RegistryEvent:
    """``to``: the version row the alias points to now."""
    return emit(session, model_name, ALIAS_MOVED, {
        "alias": alias, "from_version": from_version, "to_version": to.version, "sha256": to.sha256,
        "job_id": job_id, "actor": actor, "reason": reason,
        "weights_url": f"/v1/models/{model_name}/versions/{to.version}/weights"})


def version_purged(session: Session, v, *, superseded_by: int | None, serving_version: int | None) -> RegistryEvent:
    return emit(session, v.model_name, VERSION_PURGED, {
        "version": v.version, "sha256": v.sha256, "superseded_by": superseded_by,
        "serving_version": serving_version})


def tainted_elsewhere(session: Session, model_name: str, instance_ids: list[str], job_id: str) -> list[RegistryEvent]:
    """``model.tainted`` for every other model trained on rows ``model_name`` just erased
    (same dataset and instance id, not erased there): they still hold the erased data and
    must forget it too (``catalogue.service.data_taint``)."""
    from ..catalogue.models import TrainingInstance as T
    from ..catalogue.service import data_taint

    dataset = session.execute(select(T.dataset).where(T.model_name == model_name).limit(1)).scalar()
    others = sorted(session.execute(select(T.model_name).distinct().where(
        T.dataset == dataset, T.instance_id.in_(list(instance_ids)), T.model_name != model_name,
        T.erased_at.is_(None))).scalars()) if dataset else []
    return [emit(session, other, TAINTED, {"erased_from": model_name, "job_id": job_id,
                                           "erased_elsewhere": data_taint(session, other)}) for other in others]
