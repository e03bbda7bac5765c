"""Forget-request services: validate a selection, record the request and its audit event
in one transaction (nothing is half-recorded), attach it to a job."""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import math
import re
import uuid
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from models import unlearn

from ..audit import service as audit
from ..catalogue import service as catalogue
from ..catalogue.models import TrainingInstance
from ..db import utcnow
from ..errors import LetheError
from ..jobs import models as jm
from ..jobs import service as jobs
from ..registry import service as registry
from ..registry.models import RegisteredModel
from ..security import pseudonyms, tenants
from ..settings import Settings
from ..tenants import service as tenant_policy
from ..webhooks import service as webhooks
from . import claims, follow, timeline
from . import models as fm
from .models import ForgetRequest
from .status import set_status
from .schemas import ForgetCreate


def _preview(ids, n: int = 10) -> str:
    ids = list(ids)
    return ", ".join(ids[:n]) + (f" (and {len(ids) - n} more)" if len(ids) > n else "")


def fingerprint(body: ForgetCreate) -> str:
    # callback_url joined the body later: left out when absent, so older fingerprints still match
    data = body.model_dump(exclude={"callback_url"} if body.callback_url is None else None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def get(session: Session, request_id: str, tenant: str | None = None) -> ForgetRequest | None:
    """The request; ``tenant`` (a tenant-bound caller): None unless the request is that
    tenant's, so another tenant's id reads exactly like an unknown one."""
    req = session.get(ForgetRequest, request_id)
    return req if req is not None and tenant in (None, req.tenant) else None


def get_with_job(session: Session, request_id: str,
                 tenant: str | None = None) -> tuple[ForgetRequest, jm.Job | None] | None:
    """A request and its job in one query (primary keys): what a polling client reads."""
    if tenant is None:
        row = session.execute(_WITH_JOB, {"id": request_id}).first()
    else:
        row = session.execute(_WITH_JOB_OF_TENANT, {"id": request_id, "tenant": tenant}).first()
    return (row[0], row[1]) if row else None


# built once: polling clients run this more than anything else
_WITH_JOB = (select(ForgetRequest, jm.Job).outerjoin(jm.Job, jm.Job.id == ForgetRequest.job_id)
             .where(ForgetRequest.id == bindparam("id")))
_WITH_JOB_OF_TENANT = _WITH_JOB.where(ForgetRequest.tenant == bindparam("tenant"))


def by_idempotency_key(session: Session, key: str) -> ForgetRequest | None:
    """By the stored (tenant-namespaced, ``tenants.namespaced_key``) key."""
    return session.execute(select(ForgetRequest).where(ForgetRequest.idempotency_key == key)).scalar_one_or_none()


def _replay(session: Session, key: str, fp: str) -> ForgetRequest:
    existing = by_idempotency_key(session, key)
    if existing.fingerprint != fp:  # the key is not repeated: it may name the subject
        raise LetheError(409, "idempotency_key_reused",
                         f"this Idempotency-Key was already used for request {existing.id} with a different body")
    return existing


@dataclass
class _Selection:
    """What a valid body resolves to: the model's method, the subject reference and the
    catalogue rows of the instances to forget."""
    method: str
    subject_ref: str | None
    rows: list  # catalogue rows, in the order asked

    @property
    def ids(self) -> list[str]:
        return [r.instance_id for r in self.rows]


def submit(session: Session, settings: Settings, body: ForgetCreate, *, idempotency_key: str | None,
           actor: str, tenant: str = tenants.DEFAULT,
           policy: tenant_policy.Policy | None = None) -> tuple[ForgetRequest, str | None, bool]:
    """Validate and record a forget request. Returns (request, job_id to dispatch or None,
    replayed). Raises LetheError for every invalid input; the caller's transaction then
    rolls back, so nothing is half-recorded.

    The steps read top to bottom; none takes a model-wide lock or reads other pending
    requests, so its cost does not grow with the backlog (overlap is a unique-key conflict
    on ``forget_claims``, the audit event goes through the outbox). ``tenant``: the caller's;
    the request belongs to it and ``idempotency_key`` lives in its namespace. ``policy``: what
    a tenant-bound caller may do (models, methods, quotas: app/tenants); None for operators."""
    fp = fingerprint(body)
    key = stored_idempotency_key(settings, tenant, idempotency_key)
    replay = _idempotent_replay(session, key, fp)
    if replay is not None:
        return replay, None, True
    sel = _select(session, settings, body, policy)
    req = _new_request(body, sel, idempotency_key=key, fingerprint=fp, tenant=tenant)
    if policy is not None:  # a tenant's key: shown queued until then, with data or not (timeline.py)
        req.reveal_at = timeline.reveal_at(req.received_at, settings.no_data_hold_s)
    # a tenant's request over instances another open request covers follows it (follow.py):
    # no claims, no job yet, no 409 that would say the instances are held. A no-data request
    # makes the same reads (its own id stands for the instances it does not have), so it does
    # not answer sooner (docs/service.md, No oracle)
    follows = policy is not None and bool(follow.holders(session, req.model_name, sel.ids or [req.id])) \
        and bool(sel.rows)
    # before the INSERT, which carries job_id; a tenant's request that selects nothing has no
    # job (a no-data request: nodata.py closes it), but looks the job up like one that has data
    if sel.rows and not follows:
        job_id, created = jobs.attach(session, req, settings.max_attempts)
    else:
        job_id, created = None, False
        if policy is not None and not sel.rows:
            jobs.queued_job(session, req)
    event = audit.outbox_row(actor=actor, action="forget.received", subject_ref=req.subject_ref,
                             payload={"request_id": req.id, "model": req.model_name, "objective": req.objective,
                                      "method": req.method, "instances": len(req.instance_ids), "job_id": job_id,
                                      "due_at": req.due_at.isoformat()})
    try:
        held = _record(session, req, event, claim=not follows)
    except IntegrityError:  # a concurrent retry with the same Idempotency-Key won the race
        session.rollback()
        replay = _idempotent_replay(session, key, fp)
        if replay is None:
            raise
        return replay, None, True
    if policy is None:
        _refuse_overlap(session, req, held)  # an operator: the precise 409
    elif not follows and (held or catalogue.erased_among(session, req.model_name, req.instance_ids)):
        follow.detach(session, req, job_id, created)  # claimed or erased since the check: follow too
        job_id, created = None, False
    webhooks.status_changed(session, req, None)
    return req, (job_id if created else None), False


# an Idempotency-Key: 1 to 200 printable ASCII characters, not only spaces (HTTP strips a
# header value's outer spaces); the OpenAPI schema states the same (IDEMPOTENCY_KEY)
IDEMPOTENCY_KEY = {"pattern": "^[\\x20-\\x7e]*[\\x21-\\x7e][\\x20-\\x7e]*$", "minLength": 1, "maxLength": 200}
IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY["pattern"])
KEY_REF = "hmac:"  # a stored Idempotency-Key: a keyed reference, never the key as sent


def stored_idempotency_key(settings: Settings, tenant: str, key: str | None) -> str | None:
    """How the Idempotency-Key is stored: checked, in ``tenant``'s namespace, as a keyed
    reference (HMAC-SHA256 under the subject secret, like a subject id): finding the earlier
    request needs only equality, and a key often names the person (``erase-patient-0007``)."""
    if key is None:
        return None
    if len(key) > IDEMPOTENCY_KEY["maxLength"] or not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise LetheError(422, "bad_idempotency_key",
                          "Idempotency-Key must be 1 to 200 printable ASCII characters (not only spaces)")
    return KEY_REF + pseudonyms.subject_ref(settings.subject_secret, tenants.namespaced_key(tenant, key))


def _idempotent_replay(session: Session, key: str | None, fp: str) -> ForgetRequest | None:
    """The earlier request recorded under the stored ``key`` (409 if its body differs), or None."""
    if key is None:
        return None
    return _replay(session, key, fp) if by_idempotency_key(session, key) is not None else None


def _select(session: Session, settings: Settings, body: ForgetCreate,
            policy: tenant_policy.Policy | None = None) -> _Selection:
    """Every check that needs no write: model (granted to the tenant), method, objective,
    ids, subject, erasures; the tenant's quotas."""
    model, found = _model_and_rows(session, settings, body)
    if model is None or (policy is not None and not policy.may_target(model.name)):
        known = [m.name for m in registry.list_models(session) if policy is None or policy.may_target(m.name)]
        raise tenant_policy.unknown_model(body.model, known)
    _check_shape(settings, body, model)
    method = _check_method(body, model, policy)
    tenant_policy.check_quota(session, policy)
    ref = pseudonyms.subject_ref(settings.subject_secret, body.subject_id) if body.subject_id is not None else None
    if policy is not None:  # a tenant's key: no answer may tell what the catalogue holds
        return _Selection(method, ref, _held_rows(session, body, ref, found))
    rows = _catalogue_rows(session, body, ref, found)
    erased = [r.instance_id for r in rows if r.erased_at is not None]
    if erased:
        raise LetheError(409, "already_erased", f"already erased from model {body.model!r}: {_preview(erased)}")
    if body.objective == "relabel" and body.target_label is not None:
        same = [r.instance_id for r in rows if r.label == body.target_label]
        if same:
            raise LetheError(422, "bad_target_label",
                             f"target_label {body.target_label} is already the true label of: {_preview(same)}")
    return _Selection(method, ref, rows)


def _model_and_rows(session: Session, settings: Settings, body: ForgetCreate) -> tuple:
    """(the model's facts or None, the catalogue rows of ``body.instance_ids`` by id or None):
    for a list of ids no longer than allowed, one query (the model LEFT JOIN the rows it
    names: one round trip fewer on the path every submission takes), else the model's alone
    (the rows are read later, by subject, or never: the list is refused)."""
    ids = body.instance_ids
    if not ids or len(ids) > settings.max_instances_per_request:
        return registry.model_facts(session, body.model), None
    rows = session.connection().execute(_MODEL_AND_ROWS, {"model": body.model, "ids": ids}).all()
    if not rows:
        return None, None
    return rows[0], {r.instance_id: r for r in rows if r.instance_id is not None}


_M, _C = RegisteredModel.__table__, TrainingInstance.__table__
# the columns of registry.model_facts and catalogue.facts_by_ids
_MODEL_AND_ROWS = (select(_M.c.name, _M.c.family, _M.c.classes, _C.c.instance_id, _C.c.subject_ref, _C.c.label,
                          _C.c.erased_at)
                   .select_from(_M.outerjoin(_C, and_(_C.c.model_name == _M.c.name,
                                                      _C.c.instance_id.in_(bindparam("ids", expanding=True)))))
                   .where(_M.c.name == bindparam("model")))


def _check_method(body: ForgetCreate, model, policy: tenant_policy.Policy | None = None) -> str:
    """The method asked for, or the family's default (for a tenant limited to some methods:
    the first of the family's that it may use)."""
    fits = unlearn.methods_for(model.family)
    method = body.method or next((m for m in fits if policy is None or policy.may_use(m)), fits[0])
    if method not in fits:
        raise LetheError(422, "method_not_supported",
                         f"model {body.model!r} is a {model.family!r} model; it supports methods {list(fits)}, "
                         f"not {method!r}")
    if body.objective not in unlearn.method_info(method).objectives:
        raise LetheError(422, "objective_not_supported",
                         f"method {method!r} supports objectives {list(unlearn.method_info(method).objectives)}, "
                         f"not {body.objective!r} (see docs/methods.md)")
    tenant_policy.check_method(policy, method)
    return method


def _check_shape(settings: Settings, body: ForgetCreate, model) -> None:
    """The selection and the target label, as given (before looking at the catalogue)."""
    if body.subject_id is None and body.instance_ids is None:
        raise LetheError(422, "empty_selection", "give subject_id or instance_ids (or both)")
    if body.instance_ids is not None:
        if len(body.instance_ids) == 0:
            raise LetheError(422, "empty_selection", "instance_ids is an empty list")
        if len(body.instance_ids) > settings.max_instances_per_request:
            raise LetheError(422, "too_many_instances",
                             f"instance_ids has {len(body.instance_ids)} ids; at most "
                             f"{settings.max_instances_per_request} per request")
        dups = sorted({i for i in body.instance_ids if body.instance_ids.count(i) > 1})
        if dups:
            raise LetheError(422, "duplicate_instance_ids", f"instance_ids repeats: {_preview(dups)}")
    if body.objective == "relabel":
        if body.target_label is not None and body.target_label >= len(model.classes):
            raise LetheError(422, "bad_target_label",
                             f"target_label {body.target_label} out of range; model has {len(model.classes)} classes")
    elif body.target_label is not None:
        raise LetheError(422, "bad_target_label", "target_label is only meaningful with objective 'relabel'")


def _catalogue_rows(session: Session, body: ForgetCreate, ref: str | None, found: dict | None = None) -> list:
    """The catalogue rows selected by ids (all known, all of the subject when one is given)
    or by subject. ``found``: the rows of the ids, already read (``_model_and_rows``)."""
    if body.instance_ids is None:
        rows = catalogue.by_subject(session, ref, body.model)
        if not rows:
            raise LetheError(404, "unknown_subject",  # the id is not repeated: error bodies reach logs and tickets
                             f"this subject has no instances in the catalogue of model {body.model!r}")
        return rows
    if found is None:
        found = catalogue.facts_by_ids(session, body.model, body.instance_ids)
    unknown = [i for i in body.instance_ids if i not in found]
    if unknown:
        raise LetheError(422, "unknown_instances", f"not in the catalogue of model {body.model!r}: {_preview(unknown)}")
    if ref is not None:
        foreign = [i for i in body.instance_ids if found[i].subject_ref != ref]
        if foreign:
            raise LetheError(422, "instances_not_of_subject",
                             f"these instances do not belong to this subject: {_preview(foreign)}")
    return [found[i] for i in body.instance_ids]


def _held_rows(session: Session, body: ForgetCreate, ref: str | None, found: dict | None = None) -> list:
    """A tenant's selection, with no oracle (docs/service.md, *No oracle*): of the named
    instances, or the subject's, those the model still holds (catalogued, not erased) and
    that belong to the named subject. The rest is left out without a word — an unknown
    subject or instance, another subject's instance, one erased already — and the request is
    accepted all the same; with nothing left it is a no-data request (``nodata.py``)."""
    if body.instance_ids is None:
        return [r for r in catalogue.by_subject(session, ref, body.model) if r.erased_at is None]
    if found is None:
        found = catalogue.facts_by_ids(session, body.model, body.instance_ids)
    return [found[i] for i in body.instance_ids
            if i in found and found[i].erased_at is None and (ref is None or found[i].subject_ref == ref)]


def _new_request(body: ForgetCreate, sel: _Selection, *, idempotency_key: str | None, fingerprint: str,
                 tenant: str) -> ForgetRequest:
    """The request row, not yet in the session (``attach`` gives it its job first)."""
    now = utcnow()
    req = ForgetRequest(id=str(uuid.uuid4()), external_id=body.external_id, idempotency_key=idempotency_key,
                        fingerprint=fingerprint, subject_ref=sel.subject_ref, instance_ids=sel.ids,
                        model_name=body.model, objective=body.objective, method=sel.method,
                        target_label=body.target_label, status=fm.QUEUED, received_at=now,
                        due_at=now + dt.timedelta(days=fm.DUE_DAYS), callback_url=body.callback_url, retries=0,
                        tenant=tenant, job_id=None, completed_at=None, error=None, version_before=None,
                        version_after=None, metrics=None, reason_code=None, reason=None, closed_at=None,
                        closed_by=None, group_id=None, exact_version=None, reveal_at=None)
    return req


def _record(session: Session, req: ForgetRequest, event: dict, *, claim: bool = True) -> dict[str, tuple[str, str]]:
    """INSERT the new request, claim its instances, record its audit event (``event``, an
    outbox row); returns what ``claims.take`` returns (the instances another open request
    holds). On Postgres the three are one statement (data-modifying CTEs: one round trip
    instead of three, issue 16); elsewhere three, in the same order."""
    # the columns the constructor set (_new_request sets them all); any other gets its default
    # in the INSERT and is loaded from the row if read
    values = {c.key: req.__dict__[c.key] for c in _REQUESTS.columns if c.key in req.__dict__}
    conn, ids = session.connection(), sorted(set(req.instance_ids)) if claim else []
    if conn.dialect.name != "postgresql":
        conn.execute(_REQUESTS.insert(), values)
        _persistent(session, req, values)
        held = claims.take(session, req.model_name, req.id, ids)
        conn.execute(audit.OUTBOX.insert(), event)
        return held
    params = {**{"r_" + k: v for k, v in values.items()}, **{"o_" + k: v for k, v in event.items()},
              "c_model": req.model_name, "c_request": req.id, "c_ids": ids}
    got = set(conn.execute(_insert_all(tuple(values)), params).scalars())
    _persistent(session, req, values)
    return claims.held_by_others(session, req.model_name, ids, got)


def _persistent(session: Session, req: ForgetRequest, values: dict) -> None:
    """Put the request just INSERTed (as Core) in the session as persistent with every column
    loaded (later changes to it, e.g. an erasure group's id, are UPDATEs at the next flush):
    what ``session.add`` + ``flush`` would do, at a third of the unit-of-work's CPU."""
    make_transient_to_detached(req)
    session.add(req)
    for key, value in values.items():
        set_committed_value(req, key, value)


_REQUESTS = ForgetRequest.__table__


@functools.cache
def _insert_all(columns: tuple[str, ...]):
    """Postgres: ``WITH r AS (INSERT request), o AS (INSERT outbox row) INSERT claims ...
    RETURNING instance_id``, built once per column set. The claims' foreign key to the request
    is checked at the end of the statement, when the request row exists."""
    cols = {c.key: c for c in _REQUESTS.columns}
    request = _REQUESTS.insert().values({k: bindparam("r_" + k, type_=cols[k].type) for k in columns}).cte("r")
    out = audit.OUTBOX
    event = out.insert().values({k: bindparam("o_" + k, type_=out.c[k].type)
                                 for k in ("ts", "actor", "action", "subject_ref", "payload")}).cte("o")
    return claims.insert_sorted_ids().add_cte(request).add_cte(event)


def _claim_instances(session: Session, req: ForgetRequest) -> None:
    """Claim the request's instances (a retry): ``_refuse_overlap``."""
    _refuse_overlap(session, req, claims.take(session, req.model_name, req.id, req.instance_ids))


def _refuse_overlap(session: Session, req: ForgetRequest, held: dict[str, tuple[str, str]]) -> None:
    """409 when another open request covers one of the instances (``held``: what the claim
    found taken), or when a job erased one of them since ``_select`` read the catalogue (that
    job's request held the claim until it committed, so re-reading after the claim, in a
    statement of its own, cannot miss it)."""
    if held:
        by_request: dict[tuple[str, str], list[str]] = {}
        for iid, holder in sorted(held.items()):
            by_request.setdefault(holder, []).append(iid)
        (rid, status), ids = next(iter(by_request.items()))
        holder = get(session, rid)
        if holder is not None and holder.tenant == req.tenant:
            raise LetheError(409, "already_pending", f"request {rid} (status {status}) already covers: {_preview(ids)}")
        # another tenant's request: no id, no status (nothing to read about another portal)
        raise LetheError(409, "already_pending", f"already pending in another request: {_preview(ids)}")
    erased = catalogue.erased_among(session, req.model_name, req.instance_ids)
    if erased:
        raise LetheError(409, "already_erased", f"already erased from model {req.model_name!r}: {_preview(erased)}")


# --- lifecycle: list, cancel, deny, retry ----------------------------------------------------

def days_left(req: ForgetRequest, now: dt.datetime | None = None, *, status: str | None = None) -> int | None:
    """Whole days until the due date (negative once past it) while the request is open;
    None once it is closed. ``status``: the one the caller is shown (``timeline``)."""
    if (status or req.status) not in fm.OPEN:
        return None
    return math.ceil((req.due_at - (now or utcnow())).total_seconds() / 86400)


def overdue(req: ForgetRequest, now: dt.datetime | None = None, *, status: str | None = None) -> bool:
    """Open past its due date, or closed (completed/failed/denied/canceled) after it."""
    now = now or utcnow()
    if (status or req.status) in fm.OPEN:
        return now > req.due_at
    closed = req.completed_at or req.closed_at
    return closed is not None and closed > req.due_at


def list_requests(session: Session, *, status: str | None = None, model: str | None = None,
                  overdue_only: bool = False, limit: int = 50, offset: int = 0,
                  tenant: str | None = None) -> tuple[list[ForgetRequest], int]:
    """Newest first. ``overdue_only``: open requests past their due date. ``tenant``: only
    that tenant's (None: every tenant), and ``status`` is the status it is shown
    (``timeline.status_clause``: no ``running`` to a tenant)."""
    q = select(ForgetRequest)
    if tenant is not None:
        q = q.where(ForgetRequest.tenant == tenant)
    if status:
        q = q.where(ForgetRequest.status == status if tenant is None else timeline.status_clause(status, utcnow()))
    if model:
        q = q.where(ForgetRequest.model_name == model)
    if overdue_only:
        q = q.where(ForgetRequest.status.in_(fm.OPEN), ForgetRequest.due_at < utcnow())
    total = session.execute(select(func.count()).select_from(q.subquery())).scalar() or 0
    rows = session.execute(q.order_by(ForgetRequest.received_at.desc(), ForgetRequest.id.desc())
                           .limit(limit).offset(offset)).scalars().all()
    return list(rows), int(total)


def _locked(session: Session, request_id: str, tenant: str | None = None) -> ForgetRequest:
    """The request, with its model locked (serialises with submissions and job claims)."""
    req = get(session, request_id, tenant)
    if req is None:
        raise LetheError(404, "unknown_request", f"forget request {request_id!r} not found")
    registry.get_model(session, req.model_name, lock=True)
    session.refresh(req)
    return req


def _close(session: Session, req: ForgetRequest, status: str, actor: str, *, reason_code: str | None,
           reason: str | None, settle_job: bool = True) -> None:
    """``settle_job``: cancel the request's job now if no open request is left on it; else the
    job is left to its claim (``jobs.claim`` cancels a job with no open request) or the sweeper.
    A tenant's cancel leaves it (docs/service.md, No oracle): a request without a job then
    does the same work — the job read by primary key finds none — and the answer does not
    say, by taking longer, that the request had data."""
    job = jobs.get(session, req.job_id or req.id) if req.job_id or not settle_job else None
    if req.status == fm.QUEUED and job is not None and job.status == jm.RUNNING:
        raise LetheError(409, "request_running", f"request {req.id} is being processed by job {job.id}")
    req.reason_code, req.reason, req.closed_at, req.closed_by = reason_code, reason, utcnow(), actor[:128]
    set_status(session, req, status)
    session.flush()
    if job is not None and settle_job:
        jobs.cancel_if_empty(session, job, actor)


def cancel(session: Session, request_id: str, *, actor: str, reason: str | None = None,
           tenant: str | None = None) -> ForgetRequest:
    """queued -> canceled. Only before it runs: a running or closed request answers 409.
    ``tenant``: only that tenant's request (another's answers 404 like an unknown id)."""
    req = _locked(session, request_id, tenant)
    # to a tenant, a request it sees queued (timeline.py) that has started or run: no status named
    started = LetheError(409, "not_cancelable", f"request {req.id} has started; it can no longer be canceled")
    if req.status != fm.QUEUED:
        if tenant is not None and timeline.masked(req):
            raise started
        raise LetheError(409, "not_cancelable",
                         f"request {req.id} is {req.status}; only a queued request can be canceled")
    try:
        _close(session, req, fm.CANCELED, actor, reason_code=None, reason=reason, settle_job=tenant is None)
    except LetheError as e:
        if tenant is not None and e.code == "request_running":  # its job has started
            raise started from None
        raise
    audit.append(session, actor=actor, action="forget.canceled", subject_ref=req.subject_ref,
                 payload={"request_id": req.id, "model": req.model_name, "job_id": req.job_id, "reason": reason})
    return req


def deny(session: Session, request_id: str, *, actor: str, reason_code: str, reason: str) -> ForgetRequest:
    """queued | failed -> denied, with a reason code (fm.DENY_REASONS) and a free-text reason."""
    if reason_code not in fm.DENY_REASONS:
        raise LetheError(422, "bad_reason_code", f"reason_code must be one of {', '.join(fm.DENY_REASONS)}")
    req = _locked(session, request_id)
    if req.status not in (fm.QUEUED, fm.FAILED):
        raise LetheError(409, "not_deniable",
                         f"request {req.id} is {req.status}; only a queued or failed request can be denied")
    _close(session, req, fm.DENIED, actor, reason_code=reason_code, reason=reason)
    audit.append(session, actor=actor, action="forget.denied", subject_ref=req.subject_ref,
                 payload={"request_id": req.id, "model": req.model_name, "reason_code": reason_code,
                          "reason": reason})
    return req


def retry(session: Session, settings: Settings, request_id: str, *, actor: str) -> tuple[ForgetRequest, str | None]:
    """failed -> queued, on a job (a new one, or the model's queued one). Returns (request,
    job id to dispatch or None)."""
    req = _locked(session, request_id)
    if req.status != fm.FAILED:
        raise LetheError(409, "not_retryable", f"request {req.id} is {req.status}; only a failed request can be retried")
    rows = catalogue.by_ids(session, req.model_name, list(req.instance_ids))
    erased = [i for i in req.instance_ids if i in rows and rows[i].erased_at is not None]
    if erased:
        raise LetheError(409, "already_erased", f"already erased from model {req.model_name!r} (by a later "
                                                f"request): {_preview(erased)}; nothing to retry")
    _claim_instances(session, req)
    previous_job, previous_error = req.job_id, req.error
    req.error, req.completed_at, req.metrics = None, None, None
    req.version_before = req.version_after = None
    req.retries = (req.retries or 0) + 1
    set_status(session, req, fm.QUEUED)
    job_id, created = jobs.attach(session, req, settings.max_attempts)
    session.flush()
    audit.append(session, actor=actor, action="forget.retried", subject_ref=req.subject_ref,
                 payload={"request_id": req.id, "model": req.model_name, "retry": req.retries,
                          "previous_job_id": previous_job, "previous_error": (previous_error or "")[:500],
                          "job_id": job_id})
    return req, (job_id if created else None)
