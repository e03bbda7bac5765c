from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Response

from ..deps import DispatcherDep, SessionDep, SettingsDep
from ..jobs import service as jobs
from ..jobs.schemas import JobRead
from ..security import FORGET_READ, FORGET_WRITE, Principal, require_scope
from . import service
from .models import ForgetRequest
from .schemas import ForgetAccepted, ForgetCreate, ForgetRead, JobProgress

router = APIRouter(prefix="/v1", tags=["forget"])

ERRORS = {
    404: {"description": "unknown model, subject or request", "content": {"application/json": {"example": {
        "code": "unknown_model", "detail": "model 'nope' is not registered; known models: ['mnist5k-cnn']"}}}},
    409: {"description": "instances already erased or already pending; Idempotency-Key reused with another body"},
    413: {"description": "body larger than LETHE_MAX_BODY_BYTES"},
    422: {"description": "wrong types, empty selection, unknown instance ids, too many ids"},
}


def _read(session, req: ForgetRequest) -> ForgetRead:
    job = jobs.get(session, req.job_id) if req.job_id else None
    return ForgetRead(id=req.id, status=req.status, model=req.model_name, objective=req.objective,
                      method=req.method, external_id=req.external_id, instance_ids=req.instance_ids,
                      received_at=req.received_at, due_at=req.due_at, completed_at=req.completed_at,
                      error=req.error, version_before=req.version_before, version_after=req.version_after,
                      metrics=req.metrics,
                      job=JobProgress(id=job.id, status=job.status, stage=job.stage, progress=job.progress,
                                      attempts=job.attempts) if job else None)


@router.post("/forget", status_code=202, response_model=ForgetAccepted, responses=ERRORS,
             summary="Ask the model to forget a subject's or a list of training instances")
def create_forget(body: ForgetCreate, session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep,
                  response: Response, principal: Annotated[Principal, Depends(require_scope(FORGET_WRITE))],
                  idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None):
    req, job_to_dispatch, replayed = service.submit(session, settings, body, idempotency_key=idempotency_key,
                                                    actor=principal.actor)
    session.commit()  # the worker must see the request before it is dispatched
    if job_to_dispatch:
        dispatcher.dispatch(job_to_dispatch)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/forget/{req.id}"
    return ForgetAccepted(id=req.id, status=req.status, due_at=req.due_at, job_id=req.job_id)


@router.get("/forget/{request_id}", response_model=ForgetRead, responses={404: ERRORS[404]},
            dependencies=[Depends(require_scope(FORGET_READ))])
def read_forget(request_id: str, session: SessionDep):
    req = service.get(session, request_id)
    if req is None:
        raise HTTPException(404, f"forget request {request_id!r} not found")
    return _read(session, req)


@router.get("/jobs/{job_id}", response_model=JobRead, tags=["jobs"], dependencies=[Depends(require_scope(FORGET_READ))])
def read_job(job_id: str, session: SessionDep):
    job = jobs.get(session, job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id!r} not found")
    return JobRead(id=job.id, model=job.model_name, objective=job.objective, method=job.method,
                   status=job.status, stage=job.stage, progress=job.progress, attempts=job.attempts,
                   max_attempts=job.max_attempts, worker=job.worker, created_at=job.created_at,
                   started_at=job.started_at, finished_at=job.finished_at, base_version=job.base_version,
                   result_version=job.result_version, metrics=job.metrics, stats=job.stats, error=job.error,
                   request_ids=[r.id for r in jobs.requests_of(session, job.id)])
