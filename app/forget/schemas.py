"""Request/response bodies for /v1/forget."""
from __future__ import annotations

import datetime as dt
from typing import Literal

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models import unlearn

from ..limits import json_int

from .models import DENY_REASONS

# both enums come from the method catalogue (models/unlearn/__init__.py, docs/methods.md)
Objective = Literal[unlearn.OBJECTIVES]  # type: ignore[valid-type]
Method = Literal[unlearn.method_names()]  # type: ignore[valid-type]


class ForgetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"model": "mnist5k-cnn", "subject_id": "alice", "objective": "misclassify"},
        {"model": "mnist5k-cnn", "instance_ids": ["mnist5k-00042", "mnist5k-00043"], "objective": "retrain_like"},
        {"subject_id": "alice"},
    ]})

    model: str | None = Field(default=None, min_length=1, max_length=128,
                              description="registered model name; omit it (with subject_id) to forget the subject "
                                          "from every model trained on their data (one erasure, a request per model)")
    subject_id: str | None = Field(default=None, min_length=1, max_length=256,
                                   description="forget every catalogued instance of this subject")
    instance_ids: list[str] | None = Field(default=None, description="forget exactly these training instances")
    objective: Objective = unlearn.DEFAULT_OBJECTIVE
    method: Method | None = Field(default=None, description="default: the model family's own ('instance' = Lethe's "
                                                            "instance-wise unlearning; 'sisa'/'arcane' for exact "
                                                            "models); every method: docs/methods.md")
    target_label: json_int() | None = Field(default=None, description="objective 'relabel' only: the label to teach")
    external_id: str | None = Field(default=None, max_length=256,
                                    description="your own reference (ticket id), stored and echoed as given: it "
                                                "must not contain the subject id (Lethe stores no subject id)")
    callback_url: str | None = Field(default=None, max_length=2048,
                                     description="http(s) URL: every status change is POSTed here, signed "
                                                 "(Lethe-Signature, see docs/service.md)")

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("callback_url must be an absolute http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _no_subject_in_external_id(self):
        # the external id is stored and echoed (reads, webhooks, certificates): a ticket id
        # that spells the subject's id would keep it after the erasure
        if self.subject_id and self.external_id and self.subject_id.casefold() in self.external_id.casefold():
            raise ValueError("external_id contains the subject id; Lethe stores no subject id: use a reference "
                             "of your own that does not spell it")
        return self


class JobProgress(BaseModel):
    id: str
    status: str
    stage: str
    progress: float
    attempts: int


class ForgetRead(BaseModel):
    id: str
    status: str
    model: str
    objective: str
    method: str
    external_id: str | None = None
    instance_ids: list[str] | None = Field(description="the instances the request covers; null to a tenant's key "
                                                       "until the request has run (completed or failed)")
    received_at: dt.datetime
    due_at: dt.datetime
    completed_at: dt.datetime | None = None
    error: str | None = None
    version_before: int | None = None
    version_after: int | None = None
    exact_version: int | None = Field(default=None, description="the exact version holding the erasure: "
                                                                "version_after when retrained, else the later "
                                                                "consolidation (None until then)")
    retrain_order: dict | None = Field(default=None, description="served approximately by a model its own pipeline "
                                                                "retrains: the retrain order its exact version "
                                                                "waits on (id, status, due_at, escalated, "
                                                                "escalated_at, url); operators only")
    metrics: dict | None = None
    job: JobProgress | None = None
    days_left: int | None = Field(default=None, description="whole days to due_at while open (negative: past due)")
    overdue: bool = Field(default=False, description="open past due_at, or closed after it")
    reason_code: str | None = None
    reason: str | None = None
    closed_at: dt.datetime | None = None
    retries: int = 0
    callback_url: str | None = None
    certificate_url: str | None = None


class ForgetPage(BaseModel):
    items: list[ForgetRead]
    total: int
    limit: int
    offset: int
    next_offset: int | None = None


class DenyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"reason_code": "legal_exemption", "reason": "Art. 17(3)(b): records kept under a legal obligation"}]})

    reason_code: Literal[DENY_REASONS] = Field(description="why: " + ", ".join(DENY_REASONS))  # type: ignore[valid-type]
    reason: str = Field(min_length=1, max_length=2000, description="free text, shown to the requester")


class WebhookDeliveryRead(BaseModel):
    id: str
    event: str
    url: str
    payload: str = Field(description="the exact signed JSON body")
    status: str = Field(description="pending | delivered | failed (gave up)")
    attempts: int
    next_attempt_at: dt.datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    log: list[dict]
    created_at: dt.datetime
    delivered_at: dt.datetime | None = None


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str | None = Field(default=None, max_length=2000)


class ErasureMember(BaseModel):
    request_id: str
    model: str
    status: str
    job_id: str | None = None
    version_before: int | None = None
    version_after: int | None = None
    error: str | None = None


class ForgetAccepted(BaseModel):
    id: str = Field(description="the request id; for a request without a model, the erasure id")
    status: str
    due_at: dt.datetime
    job_id: str | None = None
    days_left: int | None = None
    erasure_id: str | None = Field(default=None, description="set when the subject is forgotten from every model")
    requests: list[ErasureMember] | None = Field(default=None, description="one request per model, for an erasure")


class ErasureRead(BaseModel):
    id: str
    status: str = Field(description="completed | queued | running | incomplete (a request failed, was denied or "
                                    "canceled)")
    models: list[str]
    received_at: dt.datetime
    requests: list[ErasureMember]
    datasets: dict = Field(default_factory=dict, description="per dataset: the subject's rows by split (training "
                           "and held-out), and once removed, what left the store at once and how the held-out "
                           "split changed")
    certificate_url: str | None = None
