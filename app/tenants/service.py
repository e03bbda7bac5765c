"""What a tenant may do, and the operator's changes to it (every change audited).

A tenant-bound caller (a ``forget:*`` key without ``models:admin``/``audit:read``,
``Principal.sees_tenant``) is held to its tenant's ``Policy``:

- **models**: it may target (forget, predict, registry reads) only models granted to its
  tenant, or every model when the tenant has ``all_models`` (the ``default`` tenant of an
  install, and every tenant that existed before grants did: migration 0011). A model it may
  not target answers exactly like one that is not registered (404 ``unknown_model``), and
  the list of known models in that answer holds only the models it may target.
- **methods**: ``methods`` (None: every method) — others answer 403 ``tenant_method_refused``;
- **quotas**: at most ``max_open_requests`` queued/running requests and
  ``max_requests_per_day`` submissions in any 24 h (None: the ``LETHE_TENANT_MAX_*``
  setting; 0: unlimited) — 429 ``tenant_quota_exceeded`` with ``Retry-After``.

Operators and auditors are not held to any policy. A tenant without a row (possible only
for a name no key has used) may target no model, except ``default``, which then keeps all.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..db import utcnow
from ..errors import LetheError
from ..security import tenants as names
from .models import Tenant, TenantModel

DAY = dt.timedelta(days=1)


@dataclasses.dataclass(frozen=True)
class Policy:
    tenant: str
    all_models: bool
    models: frozenset[str]
    methods: tuple[str, ...] | None
    max_open_requests: int  # 0: unlimited
    max_requests_per_day: int

    def may_target(self, model: str) -> bool:
        return self.all_models or model in self.models

    def may_use(self, method: str) -> bool:
        return self.methods is None or method in self.methods


def policy(session: Session, tenant: str, settings, known: tuple | None = None) -> Policy:
    """The tenant's policy (one primary-key read, Core: every tenant-bound submission runs it;
    the grants only when not ``all_models``). ``known``: ``(row,)``, the tenant's row as this
    transaction already read it with the caller's key (``Principal.tenant_row``): no read."""
    if known is not None:
        row = known[0]
    else:
        session.flush()  # an operator's change in this session (PUT /v1/tenants) is read back
        row = session.connection().execute(_POLICY_ROW, {"name": tenant}).first()
    every = row.all_models if row is not None else tenant == names.DEFAULT
    granted = frozenset() if every else frozenset(session.execute(
        select(TenantModel.model_name).where(TenantModel.tenant == tenant)).scalars())

    def limit(own: int | None, default: int) -> int:
        return int(default if own is None else own)

    return Policy(tenant, every, granted, tuple(row.methods) if row is not None and row.methods is not None else None,
                  limit(row.max_open_requests if row else None, settings.tenant_max_open_requests),
                  limit(row.max_requests_per_day if row else None, settings.tenant_max_requests_per_day))


_T = Tenant.__table__
_POLICY_ROW = select(_T.c.all_models, _T.c.methods, _T.c.max_open_requests,
                     _T.c.max_requests_per_day).where(_T.c.name == bindparam("name"))


def of(session: Session, principal, settings) -> Policy | None:
    """The policy ``principal`` is held to; None for operators and auditors (no limits)."""
    tenant = principal.sees_tenant if principal is not None else None
    if tenant is None:
        return None
    return policy(session, tenant, settings, getattr(principal, "tenant_row", None) if tenant == principal.tenant else None)


def visible_models(session: Session, principal, settings) -> frozenset[str] | None:
    """The models the caller may see and target; None: every model."""
    p = of(session, principal, settings)
    return None if p is None or p.all_models else p.models


def unknown_model(name: str, known: list[str]) -> LetheError:
    """The 404 of a model that is not registered — or, to a tenant, not granted: the same
    words, and ``known`` lists only what the caller may target."""
    return LetheError(404, "unknown_model", f"model {name!r} is not registered; known models: {known}")


# --- the checks a tenant's submission passes -----------------------------------------------------

def check_method(p: Policy | None, method: str) -> None:
    if p is not None and not p.may_use(method):
        raise LetheError(403, "tenant_method_refused",
                         f"tenant {p.tenant!r} may not use method {method!r}; allowed: {list(p.methods or ())} "
                         "(an operator sets them: PUT /v1/tenants/{tenant})")


def check_quota(session: Session, p: Policy | None, now: dt.datetime | None = None) -> None:
    """429 ``tenant_quota_exceeded`` (with Retry-After) when another submission would exceed
    the tenant's open or daily limit. Costs nothing when neither limit is set."""
    if p is None or not (p.max_open_requests or p.max_requests_per_day):
        return
    from ..forget import models as fm

    now = now or utcnow()
    q = select(func.count()).select_from(fm.ForgetRequest).where(fm.ForgetRequest.tenant == p.tenant)
    if p.max_open_requests:
        n = session.execute(q.where(fm.ForgetRequest.status.in_(fm.OPEN))).scalar() or 0
        if n >= p.max_open_requests:
            raise _quota(p, "max_open_requests", f"{n} requests are open (queued or running); at most "
                                                 f"{p.max_open_requests}: wait until some complete", 60)
    if p.max_requests_per_day:
        since = now - DAY
        day = q.where(fm.ForgetRequest.received_at > since)
        n = session.execute(day).scalar() or 0
        if n >= p.max_requests_per_day:
            # the window frees a slot when the oldest submission in it is 24 h old
            oldest = session.execute(select(func.min(fm.ForgetRequest.received_at)).where(
                fm.ForgetRequest.tenant == p.tenant, fm.ForgetRequest.received_at > since)).scalar()
            wait = (oldest + DAY - now).total_seconds() if oldest is not None else 60
            raise _quota(p, "max_requests_per_day", f"{n} requests in the last 24 h; at most "
                                                    f"{p.max_requests_per_day}", wait)


def _quota(p: Policy, which: str, why: str, wait_s: float) -> LetheError:
    return LetheError(429, "tenant_quota_exceeded", f"tenant {p.tenant!r} quota {which}: {why}",
                      {"Retry-After": str(max(1, math.ceil(wait_s)))})


# --- operator changes --------------------------------------------------------------------------

def ensure(session: Session, tenant: str) -> Tenant:
    """The tenant's row, created (no models, no limits of its own) when missing."""
    tenant = names.check_name(tenant)
    row = session.get(Tenant, tenant)
    if row is None:
        now = utcnow()
        row = Tenant(name=tenant, all_models=tenant == names.DEFAULT, created_at=now, updated_at=now)
        session.add(row)
        session.flush()
    return row


def get(session: Session, tenant: str) -> Tenant | None:
    return session.get(Tenant, tenant)


def list_all(session: Session) -> list[Tenant]:
    return list(session.execute(select(Tenant).order_by(Tenant.name)).scalars())


def grants(session: Session, tenant: str) -> list[str]:
    return list(session.execute(select(TenantModel.model_name).where(TenantModel.tenant == tenant)
                                .order_by(TenantModel.model_name)).scalars())


def grant(session: Session, tenant: str, model: str, *, actor: str) -> Tenant:
    """Let ``tenant`` target ``model`` (idempotent). 404 ``unknown_model`` if not registered."""
    from ..registry import service as registry

    if registry.get_model(session, model) is None:
        raise unknown_model(model, [m.name for m in registry.list_models(session)])
    row = ensure(session, tenant)
    if session.get(TenantModel, (row.name, model)) is None:
        session.add(TenantModel(tenant=row.name, model_name=model, granted_at=utcnow(), granted_by=actor[:128]))
        row.updated_at = utcnow()
        session.flush()
        audit.append(session, actor=actor, action="tenant.model_granted", payload={"tenant": row.name, "model": model})
    return row


def revoke(session: Session, tenant: str, model: str, *, actor: str) -> Tenant:
    """Withdraw a grant (idempotent). Requests already accepted keep running."""
    row = _existing(session, tenant)
    held = session.get(TenantModel, (row.name, model))
    if held is not None:
        session.delete(held)
        row.updated_at = utcnow()
        session.flush()
        audit.append(session, actor=actor, action="tenant.model_revoked", payload={"tenant": row.name, "model": model})
    return row


UNSET = object()


def update(session: Session, tenant: str, *, actor: str, all_models=UNSET, methods=UNSET,
           max_open_requests=UNSET, max_requests_per_day=UNSET) -> Tenant:
    """Create or change a tenant's policy; a field left UNSET keeps its value."""
    from models import unlearn

    row = ensure(session, tenant)
    changes = {}
    if methods is not UNSET and methods is not None:
        known = set(unlearn.method_names())
        bad = [m for m in methods if m not in known]
        if bad:
            raise LetheError(422, "unknown_method", f"unknown methods {bad}; methods are {sorted(known)}")
        methods = sorted(set(methods))
    for field, value in (("all_models", all_models), ("methods", methods), ("max_open_requests", max_open_requests),
                         ("max_requests_per_day", max_requests_per_day)):
        if value is not UNSET and getattr(row, field) != value:
            setattr(row, field, value)
            changes[field] = value
    if changes:
        row.updated_at = utcnow()
        session.flush()
        audit.append(session, actor=actor, action="tenant.updated", payload={"tenant": row.name, **changes})
    return row


def _existing(session: Session, tenant: str) -> Tenant:
    row = session.get(Tenant, tenant)
    if row is None:
        raise LetheError(404, "unknown_tenant", f"tenant {tenant!r} not found")
    return row


def usage(session: Session, tenant: str, now: dt.datetime | None = None) -> dict[str, int]:
    """What counts against the quotas now, and how many keys the tenant has."""
    from ..forget import models as fm
    from ..security.models import ApiKey

    now = now or utcnow()
    q = select(func.count()).select_from(fm.ForgetRequest).where(fm.ForgetRequest.tenant == tenant)
    return {"open_requests": session.execute(q.where(fm.ForgetRequest.status.in_(fm.OPEN))).scalar() or 0,
            "requests_last_24h": session.execute(q.where(fm.ForgetRequest.received_at > now - DAY)).scalar() or 0,
            "active_keys": session.execute(select(func.count()).select_from(ApiKey).where(
                ApiKey.tenant == tenant, ApiKey.revoked_at.is_(None))).scalar() or 0}
