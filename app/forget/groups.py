"""Erasure groups: ``POST /v1/forget`` with a ``subject_id`` and no ``model`` forgets the
subject from every model trained on the subject's data (the lineage: the catalogue records,
per model, which dataset instances it was trained on and whose they are).

One request per model that still holds some of the subject's instances, created in ONE
transaction through ``forget.service.submit`` (so every per-model check applies, and a
refusal for any model records nothing for all of them), each on its own job; one signed
certificate (``GET /v1/erasures/{id}/certificate``) lists every model and the version
before and after once every request has completed."""
from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import certificates
from ..audit import service as audit
from ..audit.signing import sign_document
from ..catalogue import service as catalogue
from ..db import utcnow
from ..errors import LetheError
from ..security import tenants
from ..settings import Settings
from . import models as fm
from . import service
from .models import ErasureGroup, ForgetRequest
from .schemas import ForgetCreate

CERTIFICATE_TYPE = "lethe.erasure_certificate"


def get(session: Session, group_id: str) -> ErasureGroup | None:
    return session.get(ErasureGroup, group_id)


def requests_of(session: Session, group_id: str) -> list[ForgetRequest]:
    return list(session.execute(select(ForgetRequest).where(ForgetRequest.group_id == group_id)
                                .order_by(ForgetRequest.model_name)).scalars())


def holders(session: Session, ref: str) -> dict[str, list]:
    """{model name: the subject's catalogued instances in it not yet erased}, every model that
    still holds some of the subject's data."""
    out: dict[str, list] = {}
    for r in catalogue.by_subject(session, ref):
        if r.erased_at is None:
            out.setdefault(r.model_name, []).append(r)
    return out


def _targets(session: Session, body: ForgetCreate, ref: str) -> dict[str, list[str] | None]:
    """An operator's erasure: {model: the instance ids to name, None for all the subject's}
    per model holding the subject's data; 404/409 when none does."""
    held = holders(session, ref)
    if not held:
        if catalogue.by_subject(session, ref):
            raise LetheError(409, "already_erased",
                             f"subject {body.subject_id!r} is already erased from every model that held their data")
        raise LetheError(404, "unknown_subject", f"subject {body.subject_id!r} has no instances in any model's catalogue")
    # a model that already forgot part of the subject: the rest by id (submit refuses erased ids)
    return {model: [r.instance_id for r in rows] if len(catalogue.by_subject(session, ref, model)) != len(rows)
            else None for model, rows in held.items()}


def _tenant_targets(session: Session, policy) -> dict[str, None]:
    """A tenant's erasure: every ready model it may target, whether or not it holds the
    subject's data (a model that holds none gets a no-data request): what is accepted says
    nothing about where the subject is (docs/service.md, *No oracle*)."""
    from ..registry import service as registry

    models = {m.name: None for m in registry.list_models(session)
              if policy.may_target(m.name) and (m.status or "ready") == "ready"}
    if not models:
        raise LetheError(404, "unknown_model", "there is no model to forget from: no model is granted to tenant "
                                               f"{policy.tenant!r}; known models: []")
    return models


def submit_all(session: Session, settings: Settings, body: ForgetCreate, *, idempotency_key: str | None,
               actor: str, tenant: str = tenants.DEFAULT,
               policy=None) -> tuple[ErasureGroup, list[ForgetRequest], list[str], bool]:
    """Record one request per model holding the subject's data (``policy``, a tenant's: per
    model it may target, see ``_tenant_targets``). Returns (group, requests, job ids to
    dispatch, replayed). Raises LetheError before anything is written."""
    if body.subject_id is None:
        raise LetheError(422, "model_required",
                          "instance ids belong to one model: name the model, or give subject_id (without model) to "
                          "forget the subject from every model trained on their data")
    if body.instance_ids is not None:
        raise LetheError(422, "model_required", "instance_ids need a model; without a model give subject_id only")
    fp = service.fingerprint(body)
    stored_key = service.stored_idempotency_key(tenant, idempotency_key)  # in the caller's tenant's namespace
    if stored_key is not None:
        old = session.execute(select(ErasureGroup).where(ErasureGroup.idempotency_key == stored_key)
                              ).scalar_one_or_none()
        if old is not None:
            if old.fingerprint != fp:
                raise LetheError(409, "idempotency_key_reused", f"Idempotency-Key {idempotency_key!r} was already "
                                                                 f"used for erasure {old.id} with a different body")
            return old, requests_of(session, old.id), [], True
    ref = catalogue.subject_ref(settings.subject_secret, body.subject_id)
    held = _targets(session, body, ref) if policy is None else _tenant_targets(session, policy)
    group = ErasureGroup(id=str(uuid.uuid4()), subject_ref=ref, idempotency_key=stored_key, fingerprint=fp,
                         models=sorted(held), created_by=actor[:128], received_at=utcnow())
    session.add(group)
    session.flush()
    requests, to_dispatch = [], []
    for model in sorted(held):
        sub = body.model_copy(update={"model": model, "external_id": body.external_id, "instance_ids": held[model]})
        try:
            req, job_id, _ = service.submit(session, settings, sub, idempotency_key=None, actor=actor,
                                            tenant=tenant, policy=policy)
        except LetheError as e:
            raise LetheError(e.status, e.code, f"model {model!r}: {e.detail}") from e
        req.group_id = group.id
        requests.append(req)
        if job_id:
            to_dispatch.append(job_id)
    session.flush()
    audit.append(session, actor=actor, action="forget.fanned_out", subject_ref=ref,
                 payload={"group_id": group.id, "models": group.models, "requests": [r.id for r in requests]})
    return group, requests, to_dispatch, False


def status(reqs: list[ForgetRequest]) -> str:
    """completed (every request), queued / running (some still open), or incomplete (some
    failed, denied or canceled and none open)."""
    states = {r.status for r in reqs}
    if states == {fm.COMPLETED}:
        return fm.COMPLETED
    if fm.RUNNING in states:
        return fm.RUNNING
    if fm.QUEUED in states:
        return fm.QUEUED
    return "incomplete"


def certificate(session: Session, settings: Settings, group_id: str) -> dict:
    """One signed certificate for the whole erasure: every model, its version before and
    after, how forgetting was verified, and each request's audit entry."""
    group = get(session, group_id)
    if group is None:
        raise LetheError(404, "unknown_erasure", f"erasure {group_id!r} not found")
    reqs = requests_of(session, group_id)
    open_ = [f"{r.model_name} ({r.status})" for r in reqs if r.status != fm.COMPLETED]
    if open_:
        raise LetheError(409, "not_completed", f"erasure {group_id} is not complete; still: {', '.join(open_)}")
    models = []
    for r in reqs:
        c = certificates.build(session, r)
        models.append({k: c[k] for k in ("model", "request_id", "instances", "instances_sha256", "method",
                                         "version_before", "version_after", "exact_version", "verification",
                                         "completed_at", "audit_entry", "consolidation_entry")})
    completed = max(r.completed_at for r in reqs)
    due = min(r.due_at for r in reqs)
    doc = {"type": CERTIFICATE_TYPE, "format_version": 1, "issuer": "lethe", "erasure_id": group.id,
           "subject_ref": group.subject_ref, "received_at": group.received_at.isoformat(),
           "completed_at": completed.isoformat(), "due_at": due.isoformat(), "completed_within_due": completed <= due,
           "models": models}
    return sign_document(settings, doc)
