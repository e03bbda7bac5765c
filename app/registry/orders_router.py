"""HTTP for retrain orders (app/registry/orders.py): issue, list, claim, snapshot, upload."""
from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

from fastapi import APIRouter, Depends, File, Header, Query, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from ..deps import SessionDep, SettingsDep
from ..errors import LetheError, responses
from ..limits import check_depth
from ..security import MODELS_ADMIN, MODELS_READ, Principal, require_scope
from . import orders
from .models import RetrainOrder

router = APIRouter(prefix="/v1/retrain-orders", tags=["models"])
issue_router = APIRouter(prefix="/v1/models", tags=["models"])
ADMIN = Annotated[Principal, Depends(require_scope(MODELS_ADMIN))]
READER = Annotated[Principal, Depends(require_scope(MODELS_ADMIN, MODELS_READ))]
MAX_WEIGHTS = 2 << 30
MAX_MANIFEST = 64 << 20


class OrderRead(BaseModel):
    id: str
    model: str
    status: str = Field(description="open | claimed | fulfilled | cancelled")
    base_version: int
    reason: str
    due_at: dt.datetime
    created_at: dt.datetime
    escalated: bool = Field(description="no verified upload LETHE_ORDER_ESCALATE_BEFORE_S before the due date")
    escalated_at: dt.datetime | None
    fulfilled_at: dt.datetime | None
    version: int | None = Field(description="the exact version published from the upload")
    job_id: str | None
    snapshot: dict = Field(description="the retained rows: uri (file://), url (download), sha256, rows, format")
    recipe: dict | None = Field(description="trainer parameters and starting point to train with")
    erased_rows: int = Field(description="rows erased since the last exact version: verification scores them")
    refusals: list[dict] = Field(description="refused uploads: when and why")
    follows: dict | None = Field(default=None, description="issued because the model's starting point forgot: the "
                                                          "move and the starting model's requests it follows (its "
                                                          "upload completes one request of this model per one)")


class ClaimRead(OrderRead):
    upload_token: str = Field(description="one-time credential for PUT /v1/retrain-orders/{id}/weights "
                                          "(X-Order-Token); shown once")


@issue_router.post("/{name}/retrain-orders", response_model=OrderRead, status_code=202,
                   responses=responses(e404="unknown model", e409="not an external model, or no production version"),
                   summary="Order an exact version from the model's own pipeline (trainer 'external')")
def issue(name: str, session: SessionDep, settings: SettingsDep, principal: ADMIN):
    """The open order answers when there is one; the sweeper issues one by itself when the
    approximation debt is due (as it starts a consolidation job for Lethe-trained models)."""
    order, _ = orders.issue(session, settings, name, actor=principal.actor, reason=f"asked by {principal.actor}")
    session.commit()
    return orders.to_json(order, settings)


@router.get("", response_model=list[OrderRead], summary="Retrain orders, oldest first (filter by status, model)")
def list_orders(session: SessionDep, settings: SettingsDep, principal: READER,
                status: Annotated[str | None, Query(pattern="^(open|claimed|fulfilled|cancelled)$")] = None,
                model: Annotated[str | None, Query(max_length=128)] = None):
    q = select(RetrainOrder).order_by(RetrainOrder.created_at)
    if status:
        q = q.where(RetrainOrder.status == status)
    if model:
        q = q.where(RetrainOrder.model_name == model)
    return [orders.to_json(o, settings) for o in session.execute(q).scalars()]


def _order(session, order_id: str) -> RetrainOrder:
    o = session.get(RetrainOrder, order_id)
    if o is None:
        raise LetheError(404, "unknown_order", f"retrain order {order_id!r} does not exist")
    return o


@router.get("/{order_id}", response_model=OrderRead, responses=responses(e404="unknown order"),
            summary="One retrain order")
def get_order(order_id: str, session: SessionDep, settings: SettingsDep, principal: READER):
    return orders.to_json(_order(session, order_id), settings)


@router.get("/{order_id}/snapshot", responses=responses(e404="unknown order", e410="the order is closed"),
            summary="The order's retained rows (Parquet: instance_id, label, features)")
def snapshot(order_id: str, session: SessionDep, settings: SettingsDep, principal: ADMIN):
    o = _order(session, order_id)
    try:
        path = orders.snapshot_file(settings, o)
    except FileNotFoundError:
        raise LetheError(410, "snapshot_gone", f"retrain order {order_id} is {o.status}: its snapshot was removed "
                                               "with it (no copy of the training rows outlives the order)")
    return FileResponse(path, media_type="application/vnd.apache.parquet",
                        headers={"Digest": f"sha-256={o.snapshot_sha256}", "ETag": f'"{o.snapshot_sha256}"'})


@router.post("/{order_id}/claim", response_model=ClaimRead, responses=responses(e404="unknown order",
                                                                                 e409="not open"),
             summary="Take an open order: returns a one-time upload credential")
def claim(order_id: str, session: SessionDep, settings: SettingsDep, principal: ADMIN):
    order, token = orders.claim(session, order_id, actor=principal.actor)
    session.commit()
    return {**orders.to_json(order, settings), "upload_token": token}


@router.put("/{order_id}/weights", response_model=OrderRead,
            responses=responses(e403="not the order's current credential", e404="unknown order",
                                e409="production moved since the order was issued",
                                e422="refused by verification (digest, architecture, accuracy, rows trained on, "
                                     "erased rows scored as trained on)"),
            summary="Upload the order's weights (safetensors); verified, then published as an exact version")
def upload(order_id: str, session: SessionDep, settings: SettingsDep, principal: ADMIN,
           weights: Annotated[UploadFile, File(description="the new weights: a safetensors state dict")],
           manifest: Annotated[UploadFile, File(description='JSON {"instance_ids": [...]}: every row trained on')],
           x_order_token: Annotated[str, Header(min_length=1, max_length=256,
                                                description="the credential POST .../claim returned")],
           x_content_sha256: Annotated[str, Header(pattern="^[0-9a-f]{64}$",
                                                   description="sha256 of the weights file")]):
    """Verification: the digest, the architecture's contract (strict load), the accuracy gate
    (LETHE_ORDER_MAX_TA_DROP), the rows declared trained on (exactly the snapshot's: no
    erased row) and the erased rows themselves, scored on the weights from their sealed copy
    (refused when they look trained on, LETHE_ORDER_MEMBERSHIP_ALPHA); a refusal spends the credential and is recorded on the order (claim it
    again to retry)."""
    body = weights.file.read(MAX_WEIGHTS + 1)
    if not body or len(body) > MAX_WEIGHTS:
        raise LetheError(422, "bad_weights", "the weights file must hold 1 byte to 2 GiB")
    raw = manifest.file.read(MAX_MANIFEST + 1)
    check_depth(raw, "manifest")
    try:
        ids = json.loads(raw)["instance_ids"]
        assert isinstance(ids, list) and all(isinstance(i, str) for i in ids) and len(raw) <= MAX_MANIFEST
    except (ValueError, KeyError, TypeError, AssertionError):
        raise LetheError(422, "bad_manifest", 'manifest must be JSON {"instance_ids": ["...", ...]} (at most '
                                              f"{MAX_MANIFEST} bytes)") from None
    try:
        order = orders.fulfil(session, settings, order_id, x_order_token, body, x_content_sha256, ids,
                              actor=principal.actor)
    except LetheError as e:
        if e.status in (409, 422):
            session.commit()  # the refusal and its audit entry stay on record
        raise
    session.commit()
    return orders.to_json(order, settings)
