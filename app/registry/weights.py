"""Weights out: a serving system downloads a version's safetensors file, and reads its card.

``GET /v1/models/{name}/versions/{v}/weights`` and ``.../aliases/{alias}/weights`` stream
the file the registry published, from disk, in 1 MiB chunks (never read whole into memory).
The file is opened before the answer starts, so a purge that unlinks it meanwhile does not
cut a download short (the open descriptor keeps the inode until the last byte is sent).

- ``ETag: "<sha256>"`` and ``Digest: sha-256=<base64>`` (RFC 3230) / ``Repr-Digest:
  sha-256=:<base64>:`` (RFC 9530) carry the digest the registry recorded when it published
  the version (the file is named by it); a client verifies what it received against it.
- ``Range: bytes=a-b`` (one range; RFC 9110 section 14) answers 206 with ``Content-Range``,
  so an interrupted download resumes; ``If-Range`` with another ETag serves the whole file;
  an unsatisfiable range answers 416. ``If-None-Match`` with the ETag answers 304.
- a purged version answers 410 ``version_purged`` (its weights held erased data and no
  longer exist); an unknown model, version or alias answers 404, and so does a model not
  granted to the caller's tenant.

``GET /v1/models/{name}/versions/{v}`` is the version's card: architecture and parameters,
recipe, parent, the job that made it, exact or approximate (and the exact version that
superseded it), metrics, the dataset and how many of its rows the weights were trained on,
and the deletion certificates that name the version.
"""
from __future__ import annotations

import base64
import datetime as dt
import math
import os
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import and_, func, or_, select

from ..catalogue.models import TrainingInstance
from ..deps import SessionDep, SettingsDep
from ..errors import LetheError, responses
from ..forget import models as fm
from ..forget.models import ForgetRequest
from ..jobs.consolidation import Debt
from ..jobs.models import Job
from ..limits import MAX_DB_INT
from ..db import read_scope, utcnow
from ..forget import timeline
from ..security import AUDIT_READ, FORGET_READ, MODELS_ADMIN, MODELS_READ, Principal, require_scope
from ..security.guard import require_scope_streaming
from ..tenants import service as tenant_policy
from . import governance
from . import service
from . import starting
from .models import PURGED, ModelVersion, RowRisk

router = APIRouter(prefix="/v1/models", tags=["models"])
# weights: serving systems (models:read) and operators; portals and auditors have no use for them
# read in short sessions of their own: a download holds no connection while its bytes go out
WEIGHTS = require_scope_streaming(MODELS_READ, MODELS_ADMIN)
CARD = require_scope(FORGET_READ, AUDIT_READ, MODELS_ADMIN, MODELS_READ)
CHUNK = 1 << 20
VersionNo = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="version number")]
WEIGHTS_ERRORS = responses(e404="unknown model, version or alias (or a model not granted to the key's tenant)",
                           e409="a sharded model: its weights are a bundle of member files, not one file",
                           e410="the version was purged: its weights held erased data and no longer exist",
                           e416="the Range asked for lies outside the file")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _model(session, settings, principal: Principal, name: str):
    m = service.get_model(session, name)
    seen = tenant_policy.visible_models(session, principal, settings)
    if m is None or (seen is not None and name not in seen):
        raise LetheError(404, "unknown_model", f"model {name!r} is not registered")
    return m


def _version(session, name: str, version: int) -> ModelVersion:
    v = service.get_version(session, name, version)
    if v is None:
        known = [x.version for x in service.versions(session, name)]
        raise LetheError(404, "unknown_version", f"{name} has no version {version}; versions: {known}")
    return v


def _aliased(session, name: str, alias: str) -> ModelVersion:
    v = service.resolve_alias(session, name, alias)
    if v is None:
        raise LetheError(404, "unknown_alias", f"{name} has no alias {alias!r}; aliases: "
                                               f"{sorted(service.aliases(session, name))}")
    return v


def digest_headers(sha256_hex: str) -> dict[str, str]:
    b64 = base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")
    return {"ETag": f'"{sha256_hex}"', "Digest": f"sha-256={b64}", "Repr-Digest": f"sha-256=:{b64}:"}


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> (first, last) inclusive, clamped to the
    file; None: not a single byte range (the whole file is served, RFC 9110 14.2). Raises
    416 when the range starts past the end."""
    m = _RANGE.match(header.strip().replace(" ", ""))
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # the last n bytes
        n = int(m.group(2))
        if n == 0:
            raise _unsatisfiable(header, size)
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if m.group(2) and last < first:
        return None  # invalid: ignored, like any Range the server does not understand
    if first >= size:
        raise _unsatisfiable(header, size)
    return first, min(last, size - 1)


def _unsatisfiable(header: str, size: int) -> LetheError:
    return LetheError(416, "range_not_satisfiable", f"Range {header!r} lies outside the file ({size} bytes)",
                      {"Content-Range": f"bytes */{size}"})


def _chunks(f, first: int, length: int):
    try:
        f.seek(first)
        left = length
        while left > 0:
            buf = f.read(min(CHUNK, left))
            if not buf:
                return
            left -= len(buf)
            yield buf
    finally:
        f.close()


def stream_weights(request: Request, settings, v: ModelVersion, extra: dict | None = None) -> Response:
    """The answer for one version's weights file (see the module docstring)."""
    if v.status == PURGED:
        raise LetheError(410, "version_purged",
                         f"{v.model_name} v{v.version} was purged at "
                         f"{v.purged_at.isoformat() if v.purged_at else '?'}: its weights held erased data and no "
                         f"longer exist")
    if service.is_bundle(v.storage_path):
        raise LetheError(409, "sharded_weights", f"{v.model_name} v{v.version} is a sharded model: its weights are "
                                                 f"a bundle of member checkpoints, not one file")
    try:
        f = open(service.weights(settings).fetch(v.storage_path, v.sha256), "rb")
    except (FileNotFoundError, ValueError):
        raise LetheError(500, "registry_error", f"weights of {v.model_name} v{v.version} are missing from the registry")
    size = os.fstat(f.fileno()).st_size
    headers = {**digest_headers(v.sha256), "Accept-Ranges": "bytes", "Lethe-Model": v.model_name,
               "Lethe-Version": str(v.version),
               "Content-Disposition": f'attachment; filename="{v.model_name}-v{v.version}.safetensors"',
               **(extra or {})}
    etag = headers["ETag"]
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        f.close()
        return Response(status_code=304, headers=headers)
    first, last, status = 0, size - 1, 200
    rng = request.headers.get("range")
    if rng and request.headers.get("if-range", etag) == etag:
        try:
            got = parse_range(rng, size)
        except LetheError:
            f.close()
            raise
        if got is not None:
            (first, last), status = got, 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    length = max(0, last - first + 1)
    headers["Content-Length"] = str(length)
    return StreamingResponse(_chunks(f, first, length), status_code=status, headers=headers,
                             media_type="application/octet-stream")


@router.get("/{name}/versions/{version}/weights", response_class=StreamingResponse,
            responses={**WEIGHTS_ERRORS, 200: {"content": {"application/octet-stream": {}},
                                                "description": "the safetensors file"},
                       206: {"description": "the byte range asked for"}},
            summary="Download a version's weights (safetensors; ETag/Digest carry its sha256; Range resumes)")
def version_weights(name: str, version: VersionNo, request: Request, settings: SettingsDep,
                    principal: Annotated[Principal, Depends(WEIGHTS)]):
    with read_scope(settings.database_url) as session:
        _model(session, settings, principal, name)
        v = _version(session, name, version)
    return stream_weights(request, settings, v, {"Cache-Control": "private, max-age=31536000, immutable"})


@router.get("/{name}/aliases/{alias}/weights", response_class=StreamingResponse,
            responses={**WEIGHTS_ERRORS, 200: {"content": {"application/octet-stream": {}},
                                                "description": "the safetensors file"},
                       206: {"description": "the byte range asked for"}},
            summary="Download the weights an alias (e.g. production) points to now; Lethe-Version says which")
def alias_weights(name: str, alias: str, request: Request, settings: SettingsDep,
                  principal: Annotated[Principal, Depends(WEIGHTS)]):
    """The alias moves when a deletion publishes a new version: the answer is never cached
    (`Cache-Control: no-cache`), `Content-Location` names the version's own URL, and a
    resumed download should ask that URL (or send `If-Range` with the ETag)."""
    with read_scope(settings.database_url) as session:
        _model(session, settings, principal, name)
        v = _aliased(session, name, alias)
    return stream_weights(request, settings, v, {
        "Cache-Control": "no-cache", "Content-Location": f"/v1/models/{name}/versions/{v.version}/weights"})


class CertificateRef(BaseModel):
    request_id: str
    role: str = Field(description="created (the request's deletion published this version), consolidated (the "
                                  "exact version that replaced an approximate deletion) or base (the version the "
                                  "deletion started from)")
    url: str


class ModelCard(BaseModel):
    model: str
    version: int
    sha256: str
    size_bytes: int | None = Field(description="the weights file's size; None when purged or a bundle")
    status: str = Field(description="READY | PURGED")
    created_at: dt.datetime
    purged_at: dt.datetime | None = None
    aliases: list[str] = Field(description="aliases that point to this version now")
    architecture: dict = Field(description="arch, params (constructor parameters), input_shape, classes, family")
    recipe: dict | None = Field(description="the training recipe retraining uses")
    starting_point: dict | None = Field(default=None, description="the pretrained weights every training of the "
                                                                  "model starts from: model, version, sha256, the "
                                                                  "dataset it was trained on, status, tainted")
    parent_version: int | None
    job: dict | None = Field(description="the job that published it: id, objective, method, finished_at")
    exact: bool
    superseded_by: int | None = Field(description="the exact version that consolidated this approximate one")
    debt: dict
    tainted: bool
    metrics: dict | None
    dataset: dict = Field(description="name and rows: how many of its catalogued rows the weights were trained on "
                                      "(every row of the model's catalogue not erased in this version's lineage)")
    membership_risk: dict | None = Field(default=None, description=(
        "the membership-risk summary the planner uses for this version: that of the newest exact version in its "
        "lineage whose risk job ran (worker/risk.py; an approximate version, or an exact one that changed too "
        "little, keeps it): measured_on_version, computed_at, reference_models, cost (seconds, cpu_seconds, "
        "training_runs: the job's cost as a multiple of one training run), rows measured, the risk quantiles, "
        "threshold (LETHE_RISK_THRESHOLD) and rows_above_threshold (a deletion holding such a row is retrained), "
        "and recompute (the policy: measured again on the next exact version once LETHE_RISK_RECOMPUTE_FRACTION "
        "of the measured rows is gone; rows_gone in this version's lineage). None: never measured "
        "(LETHE_RISK_REFERENCE_MODELS=0, a sharded or externally trained model, or the job has not run yet)"))
    certificates: list[CertificateRef] = Field(description="deletion certificates naming this version (a "
                                                           "models:read key sees only their number)")
    certificates_count: int
    weights_url: str | None


@router.get("/{name}/versions/{version}", response_model=ModelCard,
            responses=responses(e404="unknown model or version"),
            summary="A version's card: architecture, recipe, lineage, job, exactness, metrics, dataset rows, "
                    "certificates")
def model_card(name: str, version: VersionNo, session: SessionDep, settings: SettingsDep,
               principal: Annotated[Principal, Depends(CARD)]):
    m = _model(session, settings, principal, name)
    v = _version(session, name, version)
    rows = service.versions(session, name)
    size = None
    if v.status != PURGED and not service.is_bundle(v.storage_path):
        try:
            size = service.weights(settings).size(v.storage_path)
        except OSError:
            size = None
    job = session.get(Job, v.job_id) if v.job_id else None
    lineage = governance.lineage_jobs(session, name, version)
    trained = select(func.count()).select_from(TrainingInstance).where(TrainingInstance.model_name == name)
    if lineage:  # what the version's own lineage erased is not in its weights; later erasures still are
        trained = trained.where(or_(TrainingInstance.erased_by_job.is_(None),
                                    TrainingInstance.erased_by_job.not_in(sorted(lineage))))
    trained = session.execute(trained).scalar()
    certs = _certificates(session, name, version)
    shown = certs if (MODELS_ADMIN in principal.scopes or AUDIT_READ in principal.scopes
                      or FORGET_READ in principal.scopes) else []
    if shown and principal.sees_tenant is not None:  # a portal: its own tenant's requests only,
        # once it is shown them completed (app/forget/timeline.py)
        mine = set(session.execute(select(ForgetRequest.id).where(
            ForgetRequest.id.in_([c.request_id for c in shown]),
            ForgetRequest.tenant == principal.sees_tenant, ~timeline.masked_clause(utcnow()))).scalars())
        shown = [c for c in shown if c.request_id in mine]
    return ModelCard(
        model=name, version=v.version, sha256=v.sha256, size_bytes=size, status=v.status, created_at=v.created_at,
        purged_at=v.purged_at, aliases=sorted(a for a, n in service.aliases(session, name).items() if n == version),
        architecture={"arch": m.arch, "params": m.arch_params or {}, "input_shape": m.input_shape,
                      "classes": m.classes, "family": m.family},
        recipe=service.recipe_of(m).to_json() if m.family == "instance" else m.recipe,
        starting_point=starting.describe(session, m.recipe), parent_version=v.parent_version,
        job={"id": job.id, "objective": job.objective, "method": job.method,
             "finished_at": job.finished_at} if job is not None else None,
        exact=v.exact, superseded_by=governance.superseded_by(session, name, version, rows),
        debt=Debt.of(v).to_json(), tainted=governance.taint(session, name, version)["tainted"], metrics=v.metrics,
        dataset={"name": m.dataset, "rows": int(trained or 0)},
        membership_risk=_risk_card(session, settings, name, version, rows, lineage), certificates=shown, certificates_count=len(certs),
        weights_url=f"/v1/models/{name}/versions/{version}/weights" if v.status != PURGED else None)


def _risk_card(session, settings, name: str, version: int, rows, lineage: set[str]) -> dict | None:
    """The risk summary of the newest measured exact version in `version`'s lineage (worker/risk.py
    records it on the version's metrics; an exact version it skipped points to the measured one),
    with the rows at or above today's threshold and the rows its lineage erased since."""
    by_number = {r.version: r for r in rows}
    v, seen = by_number.get(version), set()
    while v is not None and v.version not in seen:
        seen.add(v.version)
        summary = (v.metrics or {}).get("membership_risk") or {}
        if "reference_models" in summary:
            break
        nxt = summary.get("measured_on_version", v.parent_version)
        v = by_number.get(nxt) if nxt is not None else None
    else:
        return None
    measured = (RowRisk.model_name == name, RowRisk.version == v.version)
    above = session.execute(select(func.count()).select_from(RowRisk).where(
        *measured, RowRisk.risk >= settings.risk_threshold)).scalar()
    gone = 0
    if lineage:
        gone = session.execute(select(func.count()).select_from(RowRisk).join(TrainingInstance, and_(
            TrainingInstance.model_name == RowRisk.model_name, TrainingInstance.instance_id == RowRisk.instance_id))
            .where(*measured, TrainingInstance.erased_by_job.in_(sorted(lineage)))).scalar()
    n, fraction = int(summary.get("rows", 0)), settings.risk_recompute_fraction
    return {"measured_on_version": v.version, "computed_at": summary.get("computed_at"),
            "reference_models": summary.get("reference_models"),
            "cost": {"seconds": summary.get("seconds"), "cpu_seconds": summary.get("cpu_seconds"),
                     "training_runs": summary.get("training_runs")},
            "rows": n, **{q: summary.get(q) for q in ("risk_median", "risk_p90", "risk_p99", "risk_max")},
            "threshold": settings.risk_threshold, "rows_above_threshold": int(above or 0),
            "recompute": {"fraction": fraction, "rows_gone": int(gone or 0),
                          "rows_gone_to_recompute": math.ceil(fraction * n) if fraction else 0,
                          "policy": (f"measured again on the next exact version once {fraction:g} of the {n} rows "
                                     "measured is gone (LETHE_RISK_RECOMPUTE_FRACTION)" if fraction else
                                     "measured again on every exact version (LETHE_RISK_RECOMPUTE_FRACTION=0)")}}


def _certificates(session, name: str, version: int) -> list[CertificateRef]:
    reqs = session.execute(select(ForgetRequest.id, ForgetRequest.version_before, ForgetRequest.version_after,
                                  ForgetRequest.exact_version).where(
        ForgetRequest.model_name == name, ForgetRequest.status == fm.COMPLETED,
        or_(ForgetRequest.version_after == version, ForgetRequest.exact_version == version,
            ForgetRequest.version_before == version)).order_by(ForgetRequest.completed_at, ForgetRequest.id)).all()
    out = []
    for rid, before, after, exact in reqs:
        role = ("created" if after == version and before != version else
                "consolidated" if exact == version else "base")
        out.append(CertificateRef(request_id=rid, role=role, url=f"/v1/forget/{rid}/certificate"))
    return out
