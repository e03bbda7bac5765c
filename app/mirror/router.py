"""``POST /v1/models/import``: register a model from the MLflow Model Registry."""
from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from ..deps import SessionDep, SettingsDep
from ..errors import LetheError, responses
from ..registry.router import UploadRead
from ..registry.upload import register_upload
from ..security import MODELS_ADMIN, Principal, require_scope
from ..security.ratelimit import EXPENSIVE

router = APIRouter(prefix="/v1/models", tags=["models"])


class ImportBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"name": "churn-mlp", "source": "models:/churn-mlp@production", "arch": "mlp", "dataset": "churn",
         "manifest": {"instances": [{"instance_id": "churn-00001", "subject_id": "u-1"}]}}]})

    name: str = Field(max_length=128, description="the new Lethe model's name")
    source: str = Field(max_length=512, description="models:/NAME/VERSION or models:/NAME@alias on "
                                                    "LETHE_MLFLOW_TRACKING_URI")
    arch: str = Field(max_length=64, description="architecture name (GET /v1/architectures)")
    dataset: str = Field(max_length=64, description="the registered dataset the manifest's instance ids come from")
    manifest: dict = Field(description='{"instances": [{"instance_id", "subject_id"?}, ...]}: what it was trained on')
    arch_params: dict | None = Field(default=None, description="the architecture's constructor parameters")
    recipe: dict | None = Field(default=None, description="how it was trained; retraining uses it")


@router.post("/import", response_model=UploadRead, status_code=201,
             responses=responses(e409="name taken, or no MLflow configured (LETHE_MLFLOW_TRACKING_URI)",
                                 e415="pickled checkpoint refused",
                                 e422="not one safetensors file at the source, weights do not fit, bad manifest, "
                                      "unknown arch or dataset"),
             summary="Register a model from the MLflow Model Registry (models:/NAME/3 or @alias) with its dataset "
                     "and recipe, as an upload is registered")
def import_from_mlflow(body: ImportBody, session: SessionDep, settings: SettingsDep,
                       principal: Annotated[Principal, Depends(require_scope(MODELS_ADMIN, limit=EXPENSIVE))]):
    """The MLflow model's one safetensors file is checked against the architecture,
    evaluated, re-saved with Lethe's metadata and registered as version 1 under
    `production`; the manifest's instances are catalogued. Lethe's own mirrored versions
    import as they are (their file is Lethe's)."""
    if not settings.mlflow_tracking_uri:
        raise LetheError(409, "mlflow_not_configured", "no MLflow server is configured: set "
                                                       "LETHE_MLFLOW_TRACKING_URI")
    from .service import Mirror

    try:
        weights, filename = Mirror(settings).fetch_weights(body.source)
    except ValueError as e:
        raise LetheError(422, "bad_mlflow_source", str(e))
    out = register_upload(session, settings, name=body.name, arch=body.arch, dataset=body.dataset, weights=weights,
                          filename=filename, manifest_raw=json.dumps(body.manifest), actor=principal.actor,
                          arch_params=body.arch_params, recipe=body.recipe)
    return UploadRead(**out)
