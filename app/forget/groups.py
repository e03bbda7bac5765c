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

from . import certificates
from ..audit import service as audit
from ..audit.signing import sign_document
from ..catalogue import service as catalogue
from ..catalogue import subjects
from ..db import utcnow
from ..errors import LetheError
from ..security import pseudonyms, tenants
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


def _targets(session: Session, body: ForgetCreate, ref: str, in_stores: bool) -> dict[str, list[str] | None]:
    """An operator's erasure: {model: the instance ids to name, None for all the subject's}
    per model holding the subject's data; 404/409 when no model does and no dataset holds
    a row of the subject (``in_stores``: some dataset does; then no model is needed)."""
    held = holders(session, ref)
    if not held:
        if in_stores:
            return {}
        if catalogue.by_subject(session, ref):
            raise LetheError(409, "already_erased",
                             "this subject is already erased from every model that held their data")
        raise LetheError(404, "unknown_subject", "this subject has no instances in any model's catalogue and no row "
                                                 "in any dataset")
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
    stored_key = service.stored_idempotency_key(settings, tenant, idempotency_key)  # in the caller's tenant's namespace
    if stored_key is not None:
        old = session.execute(select(ErasureGroup).where(ErasureGroup.idempotency_key == stored_key)
                              ).scalar_one_or_none()
        if old is not None:
            if old.fingerprint != fp:
                raise LetheError(409, "idempotency_key_reused", "this Idempotency-Key was already "
                                                                 f"used for erasure {old.id} with a different body")
            return old, requests_of(session, old.id), [], True
    ref = pseudonyms.subject_ref(settings.subject_secret, body.subject_id)
    if policy is None:  # every dataset: held-out rows and rows no model trained on included
        rows = subjects.plan(session, settings, ref)
        held = _targets(session, body, ref, bool(rows))
    else:  # a tenant: the datasets of the models it may target
        held = _tenant_targets(session, policy)
        rows = subjects.plan(session, settings, ref, _datasets_of(session, held))
    group = ErasureGroup(id=str(uuid.uuid4()), subject_ref=ref, idempotency_key=stored_key, fingerprint=fp,
                         models=sorted(held), created_by=actor[:128], received_at=utcnow(), datasets=rows)
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
                 payload={"group_id": group.id, "models": group.models, "requests": [r.id for r in requests],
                          "datasets": {name: e["rows"] for name, e in rows.items()}})
    return group, requests, to_dispatch, False


def _datasets_of(session: Session, models) -> set[str]:
    from ..registry.models import RegisteredModel

    return set(session.execute(select(RegisteredModel.dataset).where(RegisteredModel.name.in_(list(models))))
               .scalars()) - {None}


def due_at(group: ErasureGroup, reqs: list[ForgetRequest]):
    import datetime as dt

    return min([r.due_at for r in reqs] or [group.received_at + dt.timedelta(days=fm.DUE_DAYS)])


def status(reqs: list[ForgetRequest], group: ErasureGroup | None = None, shown=None) -> str:
    """completed (every request, and the rows no model held removed from the stores),
    queued / running (some still open), or incomplete (some failed, denied or canceled and
    none open). ``shown``: a request's status as the caller sees it (a tenant:
    ``timeline.shown_status``)."""
    states = {(shown or _own_status)(r) for r in reqs}
    rows_done = group is None or group.rows_erased_at is not None
    if not reqs:
        return fm.COMPLETED if rows_done else fm.QUEUED
    if states == {fm.COMPLETED}:
        return fm.COMPLETED if rows_done else fm.RUNNING
    if fm.RUNNING in states:
        return fm.RUNNING
    if fm.QUEUED in states:
        return fm.QUEUED
    return "incomplete"


def _own_status(r: ForgetRequest) -> str:
    return r.status


def certificate(session: Session, settings: Settings, group_id: str, shown=None) -> dict:
    """One signed certificate for the whole erasure: every model, its version before and
    after, how forgetting was verified, and each request's audit entry. ``shown``: as in
    ``status``."""
    group = get(session, group_id)
    if group is None:
        raise LetheError(404, "unknown_erasure", f"erasure {group_id!r} not found")
    reqs = requests_of(session, group_id)
    states = {r.id: (shown or _own_status)(r) for r in reqs}
    open_ = [f"{r.model_name} ({states[r.id]})" for r in reqs if states[r.id] != fm.COMPLETED]
    if group.rows_erased_at is None:
        open_.append("the rows no model held (not yet removed from the dataset stores)")
    if open_:
        raise LetheError(409, "not_completed", f"erasure {group_id} is not complete; still: {', '.join(open_)}")
    models = []
    for r in reqs:
        c = certificates.build(session, r)
        models.append({k: c[k] for k in ("model", "request_id", "instances", "instances_sha256", "method",
                                         "version_before", "version_after", "exact_version", "verification",
                                         "completed_at", "audit_entry", "consolidation_entry")})
    completed = max([r.completed_at for r in reqs] + [group.rows_erased_at])
    due = due_at(group, reqs)
    doc = {"type": CERTIFICATE_TYPE, "format_version": 1, "issuer": "lethe", "erasure_id": group.id,
           "subject_ref": group.subject_ref, "received_at": group.received_at.isoformat(),
           "completed_at": completed.isoformat(), "due_at": due.isoformat(), "completed_within_due": completed <= due,
           "models": models, "datasets": _dataset_lines(settings, group)}
    return sign_document(settings, doc)


def _dataset_lines(settings: Settings, group: ErasureGroup) -> list[dict]:
    """Per dataset: the subject's rows erased by split (training rows through the models'
    lineage, the rest straight from the store), the held-out split's size before and after,
    the models whose evaluation set shrank, and what the store still holds of the subject
    (nothing, once every model's job has published)."""
    record = group.datasets or {}
    left = subjects.still_stored(settings, group.subject_ref, sorted(record))
    return [{"dataset": name, "rows_erased": e.get("rows", {}), "removed_from_store_at_once": e.get(
             "erased_from_store", {}), "held_out_rows": e.get("held_out_rows"),
             "evaluation_changed_for": e.get("evaluation_changed_for", []), "rows_still_stored": left.get(name, {})}
            for name, e in sorted(record.items())]
