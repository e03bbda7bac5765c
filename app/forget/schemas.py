"""Request/response bodies for /v1/forget."""
from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Objective = Literal["misclassify", "relabel", "retrain_like"]
Method = Literal["instance", "lethe", "paper_full", "paper_ga", "paper_ga_adv", "puma", "sisa", "arcane"]

# which methods fit which model family (app.registry: "instance" models are single checkpoints,
# "sisa"/"arcane" models are sharded bundles trained for exact unlearning); the first is the default
FAMILY_METHODS: dict[str, tuple[str, ...]] = {
    "instance": ("instance", "lethe", "paper_full", "paper_ga", "paper_ga_adv", "puma"),
    "sisa": ("sisa",),
    "arcane": ("arcane",),
}
# methods whose result is a retrained (or influence-patched) model: no misclassify/relabel target
RETRAIN_METHODS = ("sisa", "arcane", "puma")


class ForgetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "mnist5k-cnn", "subject_id": "alice", "objective": "misclassify"},
        {"model": "mnist5k-cnn", "instance_ids": ["mnist5k-00042", "mnist5k-00043"], "objective": "retrain_like"},
    ]})

    model: str = Field(min_length=1, max_length=128, description="registered model name")
    subject_id: str | None = Field(default=None, min_length=1, max_length=256,
                                   description="forget every catalogued instance of this subject")
    instance_ids: list[str] | None = Field(default=None, description="forget exactly these training instances")
    objective: Objective = "misclassify"
    method: Method | None = Field(default=None, description="default: the model's own ('instance' = Lethe's "
                                                            "instance-wise unlearning; 'sisa'/'arcane' for exact models)")
    target_label: int | None = Field(default=None, ge=0, description="objective 'relabel' only: the label to teach")
    external_id: str | None = Field(default=None, max_length=256, description="your own reference (ticket id)")


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
    instance_ids: list[str]
    received_at: dt.datetime
    due_at: dt.datetime
    completed_at: dt.datetime | None = None
    error: str | None = None
    version_before: int | None = None
    version_after: int | None = None
    metrics: dict | None = None
    job: JobProgress | None = None


class ForgetAccepted(BaseModel):
    id: str
    status: str
    due_at: dt.datetime
    job_id: str | None = None
