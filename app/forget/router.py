from __future__ import annotations

import functools
import math
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Body, Depends, Header, Query, Response
from starlette.concurrency import run_in_threadpool

from ..deps import DispatcherDep, RequestDbDep, SessionDep, SettingsDep
from ..errors import LetheError, responses
from ..limits import MAX_DB_INT
from ..jobs import service as jobs
from ..jobs.dispatch import send_after_commit
from ..jobs.schemas import JobRead
from . import certificates
from ..catalogue import subjects
from ..registry import orders
from ..db import utcnow
from ..security import (AUDIT_READ, FORGET_READ, FORGET_WRITE, MODELS_ADMIN, Principal, require_scope,
                        require_scope_on_loop)
from ..security import pseudonyms
from ..security.ratelimit import SUBMIT
from ..tenants import service as tenant_policy
from ..webhooks import outbound
from ..webhooks import service as webhooks
from . import groups, service, timeline
from . import models as fm
from .models import ForgetRequest
from .schemas import (CancelBody, DenyBody, ErasureMember, ErasureRead, ForgetAccepted, ForgetCreate, ForgetPage,
                      ForgetRead, JobProgress, WebhookDeliveryRead)

router = APIRouter(prefix="/v1", tags=["forget"])

SUBMIT_ERRORS = responses(
    e404="unknown model or subject",
    e409="instances already erased or already pending; Idempotency-Key reused with another body",
    e422="wrong types, empty selection, unknown instance ids, too many ids, a method the model does not support")
UNKNOWN_REQUEST = responses(e404="unknown request")


def _visible(principal: Principal, reqs) -> bool:
    """Whether the caller may see something that serves ``reqs`` (a job, an erasure):
    operators and auditors always; a tenant when one of them is its own."""
    tenant = principal.sees_tenant
    return tenant is None or any(r.tenant == tenant for r in reqs)


def _tenant(principal: Principal | None) -> bool:
    return principal is not None and principal.sees_tenant is not None


def _hides(principal: Principal | None, req: ForgetRequest) -> bool:
    """Whether the caller must not see the request's selection (instance ids, job) yet: a
    tenant's key, until the request has run (completed or failed) and is shown so
    (``timeline``). Otherwise an accepted request would tell, at once, whether the model
    holds what it names — and cancelling it before it runs would make that a free probe
    (app/forget/nodata.py)."""
    return _tenant(principal) and (req.status not in timeline.RAN or timeline.masked(req))


def _shown(principal: Principal | None, req: ForgetRequest) -> str:
    """The status the caller sees: a tenant sees an open request, or one that ran before
    its ``reveal_at``, as ``queued`` (app/forget/timeline.py)."""
    return timeline.shown_status(req) if _tenant(principal) else req.status


# figures of a whole (pooled) job: what the other requests it served weigh, and where it ran
POOLED_FIGURES = ("k", "forget_size", "train_rows", "seconds", "job_seconds")


def own_figures(metrics: dict | None, k: int | None) -> dict | None:
    """A tenant's view of a job's metrics (no oracle: a tenant sees its own request's figures
    only): the pooled volume and timings go; ``k`` is its own request's instance count."""
    if metrics is None:
        return None
    out = {key: v for key, v in metrics.items() if key not in POOLED_FIGURES}
    if k is not None:
        out["k"] = k
    return out


def _queued_view(req: ForgetRequest) -> ForgetRead:
    """What a tenant reads of a request it is shown ``queued`` (``timeline.masked``): the
    fields its body fixed, nothing the run has produced or is producing."""
    now = utcnow()
    return ForgetRead(id=req.id, status=fm.QUEUED, model=req.model_name, objective=req.objective, method=req.method,
                      external_id=req.external_id, instance_ids=None, received_at=req.received_at, due_at=req.due_at,
                      completed_at=None, error=None, version_before=None, version_after=None, exact_version=None,
                      metrics=None, job=None, days_left=service.days_left(req, now, status=fm.QUEUED),
                      overdue=service.overdue(req, now, status=fm.QUEUED), reason_code=None, reason=None,
                      closed_at=None, retries=0, callback_url=req.callback_url, certificate_url=None)


def _read(session, req: ForgetRequest, job=False, principal: Principal | None = None) -> ForgetRead:
    """``job``: the request's job when the caller already has it (False: look it up)."""
    if _tenant(principal) and timeline.masked(req):
        return _queued_view(req)
    hide = _hides(principal, req)
    if hide:
        job = None
    elif job is False:
        job = jobs.get(session, req.job_id) if req.job_id else None
    return ForgetRead(id=req.id, status=req.status, model=req.model_name, objective=req.objective,
                      method=req.method, external_id=req.external_id,
                      instance_ids=None if hide else req.instance_ids,
                      received_at=req.received_at, due_at=req.due_at, completed_at=req.completed_at,
                      error=req.error, version_before=req.version_before, version_after=req.version_after,
                      exact_version=req.exact_version,
                      retrain_order=None if principal is not None and principal.sees_tenant is not None
                      else orders.serving(session, req),
                      metrics=own_figures(req.metrics, len(req.instance_ids or []))
                      if principal is not None and principal.sees_tenant is not None else req.metrics,
                      job=JobProgress(id=job.id, status=job.status, stage=job.stage, progress=job.progress,
                                      attempts=job.attempts) if job else None,
                      days_left=service.days_left(req), overdue=service.overdue(req), reason_code=req.reason_code,
                      reason=req.reason, closed_at=req.closed_at, retries=req.retries or 0,
                      callback_url=req.callback_url,
                      certificate_url=f"/v1/forget/{req.id}/certificate" if req.status == fm.COMPLETED else None)


@router.post("/forget", status_code=202, response_model=ForgetAccepted, responses=SUBMIT_ERRORS,
             summary="Ask the model to forget a subject's or a list of training instances")
async def create_forget(body: ForgetCreate, db: RequestDbDep, settings: SettingsDep, dispatcher: DispatcherDep,
                        response: Response, background: BackgroundTasks,
                        principal: Annotated[Principal, Depends(require_scope_on_loop(FORGET_WRITE, limit=SUBMIT))],
                        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", json_schema_extra=service.IDEMPOTENCY_KEY)] = None):
    if body.callback_url is not None:  # resolves the host: in the thread pool
        await run_in_threadpool(_check_callback, body.callback_url, settings)
    # the work and its commit in one call (on Postgres on the event loop: app/deps.py RequestDb);
    # the dispatch once the answer is sent, in the thread pool (a broker's send is network I/O,
    # and a request with data to erase must not answer later than one without: docs/service.md,
    # No oracle; a dispatch lost with the process is sent again by the sweeper)
    answer, to_dispatch = await db.run(_submit, settings, body, response, principal, idempotency_key)
    if to_dispatch:
        background.add_task(_dispatch, dispatcher, to_dispatch)
    if answer.erasure_id is not None:  # the subject's rows no model holds: out of the stores now
        done = await run_in_threadpool(subjects.erase_unheld, settings, answer.erasure_id, principal.actor)
        if done and not answer.requests:
            answer.status = fm.COMPLETED
    return answer


def _check_callback(url: str, settings) -> None:
    """SSRF: public addresses only (app/webhooks/outbound.py)."""
    try:
        outbound.check(url, settings.callback_allow)
    except outbound.UnsafeCallback as e:
        raise LetheError(422, "callback_url_refused", str(e))


def _submit(session, settings, body: ForgetCreate, response: Response, principal: Principal,
            idempotency_key: str | None) -> tuple[ForgetAccepted, list[str]]:
    """POST /v1/forget's transaction, committed: (answer, jobs to dispatch)."""
    policy = tenant_policy.of(session, principal, settings)  # models, methods, quotas (app/tenants)
    if body.model is None:  # the subject, from every model trained on their data
        return _erase_everywhere(body, session, settings, response, principal, idempotency_key, policy)
    req, job_to_dispatch, replayed = service.submit(session, settings, body, idempotency_key=idempotency_key,
                                                    actor=principal.actor, tenant=principal.tenant, policy=policy)
    session.commit()  # the worker must see the request before it is dispatched
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/forget/{req.id}"
    shown = _shown(principal, req)
    return ForgetAccepted(id=req.id, status=shown, due_at=req.due_at,
                          job_id=None if _hides(principal, req) else req.job_id,
                          days_left=service.days_left(req, status=shown)), [job_to_dispatch] if job_to_dispatch else []


def _dispatch(dispatcher, job_ids: list[str]) -> None:
    for job_id in job_ids:
        send_after_commit(dispatcher, job_id)


def _member(r: ForgetRequest, principal: Principal | None = None) -> ErasureMember:
    if _tenant(principal) and timeline.masked(r):
        return ErasureMember(request_id=r.id, model=r.model_name, status=fm.QUEUED, job_id=None,
                             version_before=None, version_after=None, error=None)
    return ErasureMember(request_id=r.id, model=r.model_name, status=r.status,
                         job_id=None if _hides(principal, r) else r.job_id,
                         version_before=r.version_before, version_after=r.version_after, error=r.error)


def _erase_everywhere(body, session, settings, response, principal, idempotency_key,
                      policy) -> tuple[ForgetAccepted, list[str]]:
    group, reqs, to_dispatch, replayed = groups.submit_all(session, settings, body, idempotency_key=idempotency_key,
                                                           actor=principal.actor, tenant=principal.tenant,
                                                           policy=policy)
    session.commit()  # the workers must see the requests before they are dispatched
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/erasures/{group.id}"
    due = groups.due_at(group, reqs)
    shown = functools.partial(_shown, principal)
    return ForgetAccepted(id=group.id, erasure_id=group.id, status=groups.status(reqs, group, shown), due_at=due,
                          days_left=min([service.days_left(r, status=shown(r)) or 0 for r in reqs]
                                        or [math.ceil((due - utcnow()).total_seconds() / 86400)]),
                          requests=[_member(r, principal) for r in reqs]), list(to_dispatch)


@router.get("/erasures/{erasure_id}", response_model=ErasureRead, responses=responses(e404="unknown erasure"),
            summary="A subject's erasure from every model: one request per model and its versions")
def read_erasure(erasure_id: str, session: SessionDep,
                 principal: Annotated[Principal, Depends(require_scope(FORGET_READ))]):
    group = groups.get(session, erasure_id)
    reqs = groups.requests_of(session, erasure_id) if group is not None else []
    if group is None or not _visible(principal, reqs):
        raise LetheError(404, "unknown_erasure", f"erasure {erasure_id!r} not found")
    state = groups.status(reqs, group, functools.partial(_shown, principal))
    return ErasureRead(id=group.id, status=state, models=group.models, received_at=group.received_at,
                       datasets=group.datasets or {},
                       requests=[_member(r, principal) for r in reqs],
                       certificate_url=f"/v1/erasures/{group.id}/certificate" if state == fm.COMPLETED else None)


@router.get("/erasures/{erasure_id}/certificate",
            responses=responses(e404="unknown erasure", e409="not every request completed"),
            summary="One signed certificate naming every model and version the subject was forgotten from")
def erasure_certificate(erasure_id: str, session: SessionDep, settings: SettingsDep,
                        principal: Annotated[Principal, Depends(require_scope(FORGET_READ, AUDIT_READ))]):
    """Same envelope as a request's certificate (`{certificate, canonical, signature}`); the
    certificate's `models` lists, per model, the request, the versions before and after
    (number + sha256), the verification metrics and the audit entry."""
    if not _visible(principal, groups.requests_of(session, erasure_id)):
        raise LetheError(404, "unknown_erasure", f"erasure {erasure_id!r} not found")
    return groups.certificate(session, settings, erasure_id, functools.partial(_shown, principal))


@router.get("/forget", response_model=ForgetPage,
            summary="List requests, newest first; filter by status, model, overdue (a portal: its tenant's only)")
def list_forget(session: SessionDep, principal: Annotated[Principal, Depends(require_scope(FORGET_READ))],
                status: Annotated[str | None, Query(description=", ".join(fm.STATUSES),
                                                     json_schema_extra={"enum": list(fm.STATUSES)})] = None,
                model: Annotated[str | None, Query(max_length=128)] = None,
                overdue: Annotated[bool, Query(description="only open requests past their due date")] = False,
                limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0):
    if status is not None and status not in fm.STATUSES:
        raise LetheError(422, "invalid_request", f"status must be one of {', '.join(fm.STATUSES)}")
    rows, total = service.list_requests(session, status=status, model=model, overdue_only=overdue, limit=limit,
                                        offset=offset, tenant=principal.sees_tenant)
    return ForgetPage(items=[_read(session, r, principal=principal) for r in rows], total=total, limit=limit,
                      offset=offset,
                      next_offset=offset + len(rows) if offset + len(rows) < total else None)


LIFECYCLE_ERRORS = responses(e404="unknown request", e409="the request is not in a state that allows this")


def _refuse_subject_id(session, settings, request_id: str, reason: str, principal: Principal) -> None:
    """A free-text reason that contains the request's subject id is refused (422), never stored:
    Lethe keeps no subject id (app/security/pseudonyms.py), and a reason travels to the audit
    trail, the request and its webhooks. An unknown request is left to the call's own 404."""
    req = service.get(session, request_id, principal.sees_tenant)
    if req is not None and req.subject_ref and pseudonyms.names_subject(settings.subject_secret, reason,
                                                                        req.subject_ref):
        raise LetheError(422, "reason_names_subject", "the reason contains this request's subject id; Lethe "
                                                      "stores no subject id: describe the case without it")


@router.post("/forget/{request_id}/cancel", response_model=ForgetRead, responses=LIFECYCLE_ERRORS,
             summary="Cancel a request that has not started (queued -> canceled)")
def cancel_forget(request_id: str, session: SessionDep, settings: SettingsDep,
                  principal: Annotated[Principal, Depends(require_scope(FORGET_WRITE, limit=SUBMIT))],
                  body: Annotated[CancelBody | None, Body()] = None):
    if body and body.reason:
        _refuse_subject_id(session, settings, request_id, body.reason, principal)
    req = service.cancel(session, request_id, actor=principal.actor, reason=body.reason if body else None,
                         tenant=principal.sees_tenant)
    return _read(session, req, principal=principal)


@router.post("/forget/{request_id}/deny", response_model=ForgetRead, responses=LIFECYCLE_ERRORS,
             summary="Operator: deny a queued or failed request with a reason code (-> denied)")
def deny_forget(request_id: str, body: DenyBody, session: SessionDep, settings: SettingsDep,
                principal: Annotated[Principal, Depends(require_scope(MODELS_ADMIN))]):
    _refuse_subject_id(session, settings, request_id, body.reason, principal)
    req = service.deny(session, request_id, actor=principal.actor, reason_code=body.reason_code, reason=body.reason)
    return _read(session, req)


@router.post("/forget/{request_id}/retry", response_model=ForgetRead, responses=LIFECYCLE_ERRORS,
             summary="Operator: run a failed request again (failed -> queued)")
def retry_forget(request_id: str, session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep,
                 principal: Annotated[Principal, Depends(require_scope(MODELS_ADMIN))]):
    req, job_to_dispatch = service.retry(session, settings, request_id, actor=principal.actor)
    session.commit()  # the worker must see the request before it is dispatched
    send_after_commit(dispatcher, job_to_dispatch)
    return _read(session, req)


@router.get("/forget/{request_id}/certificate",
            responses=responses(e404="unknown request", e409="not completed"),
            summary="Deletion certificate of a completed request, signed with the service's Ed25519 key")
def forget_certificate(request_id: str, session: SessionDep, settings: SettingsDep,
                       principal: Annotated[Principal, Depends(require_scope(FORGET_READ, AUDIT_READ))]):
    """`{certificate, canonical, signature: {alg, key_id, value}}`: `canonical` is the exact
    text signed (sorted keys, no spaces, ASCII); verify it with the public key from
    `GET /v1/keys/audit` (recipe in docs/service.md)."""
    req = service.get(session, request_id, principal.sees_tenant)
    if req is None:
        raise LetheError(404, "unknown_request", f"forget request {request_id!r} not found")
    if _tenant(principal) and timeline.masked(req):  # the words of any queued request's answer
        raise LetheError(409, "not_completed",
                         f"request {req.id} is {fm.QUEUED}; certificates exist for completed requests only")
    return certificates.issue(session, settings, req)


@router.get("/forget/{request_id}/webhooks", response_model=list[WebhookDeliveryRead], responses=UNKNOWN_REQUEST,
            summary="Webhook deliveries of a request (one per status change) and their attempts")
def forget_webhooks(request_id: str, session: SessionDep,
                    principal: Annotated[Principal, Depends(require_scope(FORGET_READ))]):
    if service.get(session, request_id, principal.sees_tenant) is None:
        raise LetheError(404, "unknown_request", f"forget request {request_id!r} not found")
    # a tenant: not the deliveries that wait for the request's reveal_at (webhooks.status_changed)
    now = utcnow() if _tenant(principal) else None
    return [WebhookDeliveryRead(id=d.id, event=d.event, url=d.url, payload=d.payload, status=d.status,
                                attempts=d.attempts, next_attempt_at=d.next_attempt_at,
                                last_status_code=d.last_status_code, last_error=d.last_error, log=d.log or [],
                                created_at=d.created_at, delivered_at=d.delivered_at)
            for d in webhooks.deliveries_of(session, request_id) if now is None or d.created_at <= now]


@router.get("/forget/{request_id}", response_model=ForgetRead, responses=UNKNOWN_REQUEST,
            summary="A request: status, days left, job progress, versions before and after, metrics")
async def read_forget(request_id: str, db: RequestDbDep,
                      principal: Annotated[Principal, Depends(require_scope_on_loop(FORGET_READ))]):
    return await db.run(_read_one, request_id, principal)  # clients poll this: no thread hop on Postgres


def _read_one(session, request_id: str, principal: Principal) -> ForgetRead:
    found = service.get_with_job(session, request_id, principal.sees_tenant)  # one query
    if found is None:
        raise LetheError(404, "unknown_request", f"forget request {request_id!r} not found")
    return _read(session, *found, principal=principal)


@router.get("/jobs/{job_id}", response_model=JobRead, tags=["jobs"], responses=responses(e404="unknown job"),
            summary="A job: status, stage, progress, attempts, worker, timings, metrics, its requests")
async def read_job(job_id: str, db: RequestDbDep,
                   principal: Annotated[Principal, Depends(require_scope_on_loop(FORGET_READ))]):
    """A portal sees a job only while it serves one of its tenant's requests, and only
    those requests' ids."""
    return await db.run(_read_job, job_id, principal)  # clients poll this: no thread hop on Postgres


def _read_job(session, job_id: str, principal: Principal) -> JobRead:
    found = jobs.get_with_request_ids(session, job_id, principal.sees_tenant)  # one query
    if found is None:
        raise LetheError(404, "unknown_job", f"job {job_id!r} not found")
    read = JobRead.of(*found)
    if principal.sees_tenant is not None:  # a portal: its own requests' figures, not the pool's
        read = read.model_copy(update={"worker": None, "plan": None, "stats": None,
                                       "metrics": own_figures(read.metrics, None)})
    return read
