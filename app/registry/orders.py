"""Retrain orders: exact versions trained in the customer's own pipeline.

A model whose recipe names the trainer ``external`` is trained on the customer's cluster,
where Lethe's worker does not run. Its deletions are served approximately as usual, and
the exact version that pays the approximation debt (app/jobs/consolidation.py) comes from
a *retrain order* instead of a consolidation job:

1. ``issue``: Lethe writes a snapshot of the retained training rows (Parquet: instance_id,
   label, features; erased rows never enter it) under the registry, addressable by URI
   (``file://`` path and ``GET /v1/retrain-orders/{id}/snapshot``, with its sha256), and
   records the order: base version, recipe (trainer parameters, starting point), due date
   (the earliest due date of the requests served approximately since the last exact
   version, else ``LETHE_ORDER_DUE_S`` from now) and the rows erased since the last exact
   version (what verification scores).
2. ``claim``: the pipeline (polling ``GET /v1/retrain-orders?status=open``) takes the order
   and receives a one-time upload credential; only its SHA-256 is stored.
3. ``fulfil``: the pipeline uploads safetensors weights with that credential and the
   weights' sha256. Lethe verifies: the digest; the architecture's contract (the weights
   load strictly into the registered architecture); the accuracy gate (held-out accuracy
   no more than ``LETHE_ORDER_MAX_TA_DROP`` points below the base version's); and the rows
   it was trained on, which the upload declares (instance ids): they must be exactly the
   snapshot's, so weights declared as trained on an erased row, or on anything else, are
   refused; and the erased rows themselves, scored on the upload the way a worker scores an
   exact version (``membership``): they left the dataset store when the approximate job
   published, but that job sealed a copy of them (app/registry/probes.py, kept encrypted
   until its requests' due date at the latest), so weights trained on them are refused
   whatever the upload declares, when the model's own training rows are told from unseen
   ones at all. A refused upload consumes the
   credential (the order is open again, the refusal recorded); a verified one is published
   as an exact version by the publishing transaction of jobs (a job row of method
   ``external`` names the order), which consolidates every request served approximately.
4. ``escalate_due``: the sweeper escalates an open order ``LETHE_ORDER_ESCALATE_BEFORE_S``
   before its due date (audit ``retrain_order.escalated``, ``escalated_at``, the event
   ``retrain_order.escalated``, the ``lethe_retrain_orders`` metric by state) so an operator
   acts before the deadline. Issuing an order emits ``retrain_order.issued``: both are
   operator events of the registry's signed webhook deliveries (app/events/service.py).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import io
import os
import secrets
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..catalogue.models import TrainingInstance
from ..db import utcnow
from ..errors import LetheError
from ..events import service as events
from ..settings import Settings
from . import service as registry
from .models import PRODUCTION, RetrainOrder

EXTERNAL = "external"
OPEN, CLAIMED, FULFILLED, CANCELLED = "open", "claimed", "fulfilled", "cancelled"


def is_external(model) -> bool:
    return (model.recipe or {}).get("trainer") == EXTERNAL


def _erased_since_exact(session: Session, model_name: str, prod) -> list[str]:
    """Rows erased by the versions since the last exact one (what the new exact version
    must not have been trained on, and what verification scores)."""
    by_number = {v.version: v for v in registry.versions(session, model_name)}
    jobs, v = set(), prod
    while v is not None and not v.exact:
        if v.job_id:
            jobs.add(v.job_id)
        v = by_number.get(v.parent_version) if v.parent_version is not None else None
    if not jobs:
        return []
    return sorted(session.execute(select(TrainingInstance.instance_id).where(
        TrainingInstance.model_name == model_name, TrainingInstance.erased_by_job.in_(sorted(jobs)))).scalars())


def _write_snapshot(settings: Settings, model, order_id: str, session: Session) -> tuple[str, str, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..catalogue.retained import all_retained_arrays

    x, y, ids = all_retained_arrays(session, model.name, exclude=set(), with_ids=True)
    flat = x.reshape(len(x), -1) if len(x) else x.reshape(0, 0)
    width = flat.shape[1] if len(x) else 0
    table = pa.table({"instance_id": pa.array(ids, pa.string()), "label": pa.array(y, pa.int64()),
                      "features": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), width)})
    table = table.replace_schema_metadata({"input_shape": ",".join(str(s) for s in model.input_shape),
                                           "classes": ",".join(str(c) for c in model.classes)})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    raw = buf.getvalue()
    rel = os.path.join("orders", order_id, "retained.parquet")
    store = registry.weights(settings)  # beside the weights: on the object store when there is one
    tmp = store.tmp_path("orders", ".parquet")
    with open(tmp, "wb") as f:
        f.write(raw)
    store.publish(tmp, rel)
    return rel, hashlib.sha256(raw).hexdigest(), len(ids)


def snapshot_file(settings: Settings, order: RetrainOrder) -> str:
    """The local path of the order's snapshot (downloaded from the object store when this
    node has no copy, its sha256 checked). FileNotFoundError once it was dropped."""
    return registry.weights(settings).fetch(order.snapshot_path, order.snapshot_sha256)


def _drop_snapshot(settings: Settings, order: RetrainOrder) -> None:
    """An order that no upload may answer any more keeps no copy of the training rows: its
    snapshot is removed everywhere (every object version on a versioned bucket)."""
    registry.weights(settings).delete(order.snapshot_path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(registry.weights(settings).path(order.snapshot_path)))


def open_order(session: Session, model_name: str) -> RetrainOrder | None:
    return session.execute(select(RetrainOrder).where(RetrainOrder.model_name == model_name,
                                                      RetrainOrder.status.in_([OPEN, CLAIMED]))
                           .order_by(RetrainOrder.created_at).limit(1)).scalar_one_or_none()


def issue(session: Session, settings: Settings, model_name: str, *, actor: str,
          reason: str, follows: dict | None = None) -> tuple[RetrainOrder, bool]:
    """The model's open order, or a new one. Returns (order, created). ``follows``: the
    lineage of an order issued because the model's starting point forgot
    (app/jobs/restarts.py); its upload completes one request per request it follows."""
    m = registry.get_model(session, model_name, lock=True)
    if m is None:
        raise LetheError(404, "unknown_model", f"model {model_name!r} is not registered")
    if not is_external(m):
        raise LetheError(409, "not_external", f"{model_name} is trained by Lethe (trainer "
                                              f"{(m.recipe or {}).get('trainer', 'lethe')!r}): it is consolidated "
                                              "by a job (POST /v1/models/{name}/consolidate), not by an order")
    prod = registry.resolve_alias(session, model_name, PRODUCTION)
    existing = open_order(session, model_name)
    if existing is not None and (prod is None or existing.base_version == prod.version):
        return existing, False
    if prod is None:
        raise LetheError(409, "no_production_version", f"model {model_name!r} has no '{PRODUCTION}' alias")
    if existing is not None:  # production moved on (another deletion): its snapshot holds rows erased since
        cancel(session, settings, existing, actor=actor, reason=f"production moved from v{existing.base_version} "
                                                                 f"to v{prod.version}: its snapshot is stale")
    oid = str(uuid.uuid4())
    rel, sha, rows = _write_snapshot(settings, m, oid, session)
    now = utcnow()
    due = prod.debt_due_at or now + dt.timedelta(seconds=settings.order_due_s)
    order = RetrainOrder(id=oid, model_name=model_name, status=OPEN, base_version=prod.version, reason=reason,
                         snapshot_path=rel, snapshot_sha256=sha, rows=rows,
                         forget_ids=_erased_since_exact(session, model_name, prod), recipe=m.recipe,
                         token_sha256="", due_at=due, created_at=now, refusals=[], follows=follows)
    session.add(order)
    facts = {"order_id": oid, "model": model_name, "base_version": prod.version, "rows": rows,
             "snapshot_sha256": sha, "due_at": due.isoformat(), "reason": reason, "erased_rows": len(order.forget_ids)}
    audit.append(session, actor=actor, action="retrain_order.issued", payload=facts)
    session.flush()
    events.emit(session, model_name, events.ORDER_ISSUED,  # signed delivery to the operators' subscriptions
                {**facts, "url": f"/v1/retrain-orders/{oid}"})
    return order, True


def serving(session: Session, req) -> dict | None:
    """The order a request served approximately waits on for its exact version (its model's
    open order): what ``GET /v1/forget/{id}`` shows, escalation included. None when the
    request is exact, not completed, or no order is open."""
    if req.status != "completed" or req.exact_version is not None or req.version_after is None:
        return None
    o = open_order(session, req.model_name)
    if o is None:
        return None
    return {"id": o.id, "status": o.status, "due_at": o.due_at.isoformat(), "escalated": o.escalated_at is not None,
            "escalated_at": o.escalated_at.isoformat() if o.escalated_at else None,
            "url": f"/v1/retrain-orders/{o.id}"}


def claim(session: Session, order_id: str, *, actor: str) -> tuple[RetrainOrder, str]:
    """Hand the order to a pipeline: a new one-time upload credential (returned once)."""
    order = session.get(RetrainOrder, order_id)
    if order is None:
        raise LetheError(404, "unknown_order", f"retrain order {order_id!r} does not exist")
    if order.status != OPEN:
        raise LetheError(409, "order_not_open", f"retrain order {order_id} is {order.status}")
    token = secrets.token_urlsafe(32)
    order.token_sha256, order.status = hashlib.sha256(token.encode()).hexdigest(), CLAIMED
    audit.append(session, actor=actor, action="retrain_order.claimed", payload={"order_id": order.id,
                                                                                "model": order.model_name})
    session.flush()
    return order, token


def _refuse(session: Session, order: RetrainOrder, actor: str, why: str, metrics: dict | None = None) -> None:
    order.status, order.token_sha256 = OPEN, ""  # the credential is spent; the order can be claimed again
    order.refusals = [*(order.refusals or []), {"at": utcnow().isoformat(), "reason": why, "metrics": metrics}]
    audit.append(session, actor=actor, action="retrain_order.refused",
                 payload={"order_id": order.id, "model": order.model_name, "reason": why, "metrics": metrics})
    session.flush()


def _snapshot_ids(settings: Settings, order: RetrainOrder) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(snapshot_file(settings, order),
                         columns=["instance_id"]).column("instance_id").to_pylist()


class Refused(ValueError):
    """Verification refused the upload; ``metrics``: what it measured."""

    def __init__(self, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.metrics = metrics


def verify(session: Session, settings: Settings, order: RetrainOrder, weights: bytes,
           trained_ids: list[str]) -> tuple[object, dict]:
    """(model, metrics) for weights that pass every check; ValueError says which failed."""
    import torch
    from safetensors.torch import load as st_load

    from models.architectures import build_model
    from models.train import accuracy

    from ..datasets import service as datasets

    m = registry.get_model(session, order.model_name)
    try:
        state = st_load(weights)
    except Exception as e:  # noqa: BLE001 - not a safetensors file
        raise ValueError(f"the weights are not a safetensors state dict ({e.__class__.__name__}: {e})") from None
    model = build_model(m.arch, m.input_shape, len(m.classes), m.arch_params)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"the weights do not fit architecture {m.arch!r} {m.arch_params or {}}: "
                         f"{str(e).splitlines()[0]}") from None
    if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise ValueError("the weights hold non-finite values")
    model.eval()
    hx, hy = (torch.from_numpy(a) for a in datasets.holdout_arrays(settings, m.dataset, settings.job_holdout_rows))
    base = registry.get_version(session, order.model_name, order.base_version)
    base_ta = (base.metrics or {}).get("ta")
    ta = accuracy(model, hx, hy)
    metrics: dict = {"ta": ta, "base_ta": base_ta, "method": EXTERNAL, "exact": True, "order_id": order.id}
    if base_ta is not None and ta < base_ta - settings.order_max_ta_drop:
        raise ValueError(f"held-out accuracy {ta:.2f} % is more than LETHE_ORDER_MAX_TA_DROP="
                         f"{settings.order_max_ta_drop:g} points below v{order.base_version}'s {base_ta:.2f} %")
    erased = set(order.forget_ids or [])
    trained_on = set(trained_ids)
    if trained_on & erased:
        bad = sorted(trained_on & erased)
        raise ValueError(f"trained on {len(bad)} erased row(s) ({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}): "
                         "an exact version must not have seen them")
    snapshot_ids = set(_snapshot_ids(settings, order))
    if trained_on != snapshot_ids:
        extra, missing = sorted(trained_on - snapshot_ids), sorted(snapshot_ids - trained_on)
        raise ValueError(f"the training rows declared are not the order's snapshot: {len(extra)} not in it "
                         f"{extra[:5]}, {len(missing)} of it missing {missing[:5]}")
    metrics.update(train_rows=len(trained_on), erased_rows=len(erased))
    metrics["forget_membership"] = check = membership(session, settings, order, model, (hx, hy))
    if check["verdict"] == TRAINED_ON:
        raise Refused(f"the erased rows look trained on: {check['rows']} sealed erased row(s) score AUC "
                         f"{check['auc']:.3f} against the held-out rows (p = {check['p_value']:.2g} < "
                         f"LETHE_ORDER_MEMBERSHIP_ALPHA={settings.order_membership_alpha:g}), as near the rows "
                         f"it was trained on (AUC {check['members_auc']:.3f}) as to unseen ones; an exact version "
                         "must not have seen them", check)
    return model, metrics


TRAINED_ON, NOT_DETECTED, INCONCLUSIVE, NOT_SCORED = "trained_on", "not_detected", "inconclusive", "not_scored"
MEMBER_ROWS = 2000  # retained rows read from the snapshot as the members' reference


def _snapshot_sample(settings: Settings, order: RetrainOrder, input_shape, limit: int):
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    t = pq.read_table(snapshot_file(settings, order), columns=["label", "features"])
    if t.num_rows > limit:
        idx = np.random.default_rng(0).choice(t.num_rows, limit, replace=False)
        t = t.take(np.sort(idx))
    x = np.array(t.column("features").combine_chunks().flatten(), np.float32).reshape(t.num_rows, *input_shape)
    return torch.from_numpy(x), torch.from_numpy(t.column("label").to_numpy().astype(np.int64))


def membership(session: Session, settings: Settings, order: RetrainOrder, model, heldout) -> dict:
    """Score the upload on the order's erased rows, from their sealed copies
    (app/registry/probes.py), the way an exact version is scored (``models.metrics``): the
    loss-threshold attack's AUC of the erased rows against the held-out rows (0.5: they look
    unseen, as they must for a retrain without them), the one-sided rank test's p-value of
    that AUC, and the same AUC for rows the upload was trained on (a sample of the snapshot)
    as the scale: how far this model tells its training rows from unseen ones at all.

    Verdict ``trained_on`` (refused) when the erased rows sit significantly above the
    held-out rows (p < LETHE_ORDER_MEMBERSHIP_ALPHA), at least halfway to the training rows,
    and the model's training rows themselves are significantly told from unseen ones;
    ``inconclusive`` when the model does not tell its own training rows from unseen ones (no
    membership test can then); ``not_detected`` otherwise; ``not_scored`` when no erased row
    is sealed (sealing off, or the probes were shredded at their due date). Under the null
    (the erased rows exchangeable with held-out rows, never trained on) an honest upload is
    refused with probability at most alpha."""
    import torch

    from models.metrics import evaluate, loss_auc, rank_test_p

    from . import probes

    m = registry.get_model(session, order.model_name)
    erased = list(order.forget_ids or [])
    sealed = probes.live(session, order.model_name, erased)
    fx, fy, ids = probes.open_rows(settings, sealed, erased) if sealed else (None, None, [])
    out: dict = {"erased_rows": len(erased), "rows": len(ids), "probes": [p.id for p in sealed],
                 "alpha": settings.order_membership_alpha}
    if not ids or not len(heldout[1]):
        return {**out, "verdict": NOT_SCORED, "reason": "no erased row is sealed (LETHE_ORDER_SEAL_FORGET_ROWS off, "
                                                        "or shredded at its requests' due date)" if not ids else
                "the held-out split is empty"}
    forget = (torch.from_numpy(fx).reshape(len(ids), *m.input_shape), torch.from_numpy(fy))
    members = _snapshot_sample(settings, order, m.input_shape, MEMBER_ROWS)
    scored = evaluate(model, forget=forget, retain=members, test=heldout)  # an exact version's figures
    a, ma = float(scored["loss_auc"]), float(loss_auc(model, members, heldout))
    p, mp = rank_test_p(a, len(ids), len(heldout[1])), rank_test_p(ma, len(members[1]), len(heldout[1]))
    alpha = settings.order_membership_alpha
    if not mp < alpha:
        verdict = INCONCLUSIVE
    elif p < alpha and a >= (0.5 + ma) / 2:
        verdict = TRAINED_ON
    else:
        verdict = NOT_DETECTED
    figures = {"auc": a, "p_value": p, "members_auc": ma, "members_p_value": mp, "ua": float(scored["ua"]),
               "mia_efficacy": float(scored["mia_efficacy"])}
    return {**out, "verdict": verdict, **{k: (v if v == v else None) for k, v in figures.items()}}


def fulfil(session: Session, settings: Settings, order_id: str, token: str, weights: bytes, sha256: str,
           trained_ids: list[str], *, actor: str) -> RetrainOrder:
    """Verify the upload and publish it as an exact version (the jobs' publishing
    transaction), or record the refusal and raise a 422 saying why."""
    from ..jobs import service as jobs
    from ..jobs.models import CONSOLIDATE, RUNNING, Job

    order = session.get(RetrainOrder, order_id)
    if order is None:
        raise LetheError(404, "unknown_order", f"retrain order {order_id!r} does not exist")
    if order.status != CLAIMED or not order.token_sha256 or not hmac.compare_digest(
            order.token_sha256, hashlib.sha256(token.encode()).hexdigest()):
        raise LetheError(403, "bad_order_token", "the upload credential is not this order's current one "
                                                 "(each claim gives one credential, spent by one upload)")
    got = hashlib.sha256(weights).hexdigest()
    if got != sha256:
        _refuse(session, order, actor, f"digest mismatch: the body's sha256 is {got}, the upload declared {sha256}")
        raise LetheError(422, "order_refused", order.refusals[-1]["reason"])
    try:
        _, metrics = verify(session, settings, order, weights, trained_ids)
    except ValueError as e:
        _refuse(session, order, actor, str(e), getattr(e, "metrics", None))
        raise LetheError(422, "order_refused", str(e))
    prod = registry.resolve_alias(session, order.model_name, PRODUCTION)
    if prod is None or prod.version != order.base_version:
        cancel(session, settings, order, actor=actor, reason=f"production moved to v{prod.version if prod else None}")
        raise LetheError(409, "order_superseded", f"production moved from v{order.base_version} since the order "
                                                  "was issued: its snapshot is stale; a new order will be issued")
    m = registry.get_model(session, order.model_name)
    tmp = registry.weights_tmp_path(registry.weights(settings), order.model_name)
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(weights)
    rel = registry.publish_weights(registry.weights(settings), m.name, tmp, got)
    claim_token = str(uuid.uuid4())
    now = utcnow()
    job = Job(id=str(uuid.uuid4()), model_name=m.name, objective=CONSOLIDATE, method=EXTERNAL, status=RUNNING,
              progress=0.9, stage="verifying the order's upload", attempts=1, max_attempts=1, worker=actor[:256],
              claim_token=claim_token, created_at=order.created_at, started_at=now, heartbeat_at=now,
              base_version=order.base_version,
              plan={"method": EXTERNAL, "exact": True, "reason": f"retrain order {order.id}: {order.reason}",
                    "order_id": order.id, **({"lineage": order.follows} if order.follows else {})})
    session.add(job)
    session.flush()
    if order.follows:  # the requests of the starting model it follows get theirs here, completed with it
        jobs.follow_requests(session, m.name, order.follows.get("follows_requests") or [], job, method=EXTERNAL,
                             tag="lineage")
    jobs.complete(session, job_id=job.id, token=claim_token, worker=f"order:{order.id}", instance_ids=[],
                  sha256=got, storage_path=rel, metrics=metrics,
                  stats={"order_id": order.id, "snapshot_sha256": order.snapshot_sha256, "rows": order.rows})
    order.status, order.fulfilled_at, order.version, order.job_id, order.token_sha256 = \
        FULFILLED, now, job.result_version, job.id, ""
    _drop_snapshot(settings, order)
    from . import probes

    for p in probes.live(session, order.model_name, list(order.forget_ids or [])):  # their purpose is served
        p.scored_by = [*(p.scored_by or []), order.id]
        probes.shred(session, settings, p, reason=f"retrain order {order.id} fulfilled: v{job.result_version} "
                                                  "was verified on them", actor=actor)
    audit.append(session, actor=actor, action="retrain_order.fulfilled",
                 payload={"order_id": order.id, "model": order.model_name, "version": job.result_version,
                          "sha256": got, "job_id": job.id, "snapshot_sha256": order.snapshot_sha256,
                          "metrics": metrics})
    session.flush()
    return order


def cancel(session: Session, settings: Settings, order: RetrainOrder, *, actor: str, reason: str) -> None:
    """Close an order no upload may answer any more (audit ``retrain_order.cancelled``); its
    snapshot goes with it."""
    order.status, order.token_sha256 = CANCELLED, ""
    _drop_snapshot(settings, order)
    audit.append(session, actor=actor, action="retrain_order.cancelled",
                 payload={"order_id": order.id, "model": order.model_name, "reason": reason})
    session.flush()


def escalate_due(session: Session, settings: Settings, now: dt.datetime | None = None) -> list[str]:
    """Escalate every unfulfilled order whose due date is within LETHE_ORDER_ESCALATE_BEFORE_S."""
    now = now or utcnow()
    lead = dt.timedelta(seconds=settings.order_escalate_before_s)
    out = []
    for order in session.execute(select(RetrainOrder).where(RetrainOrder.status.in_([OPEN, CLAIMED]),
                                                            RetrainOrder.escalated_at.is_(None))).scalars():
        if now + lead >= order.due_at:
            order.escalated_at = now
            facts = {"order_id": order.id, "model": order.model_name, "due_at": order.due_at.isoformat(),
                     "status": order.status,
                     "reason": f"no verified upload {settings.order_escalate_before_s:g} s before the due date"}
            audit.append(session, actor="sweeper", action="retrain_order.escalated", payload=facts)
            events.emit(session, order.model_name, events.ORDER_ESCALATED, facts)
            out.append(order.id)
    session.flush()
    return out


def to_json(order: RetrainOrder, settings: Settings) -> dict:
    store = registry.weights(settings)
    local = store.remote is None and order.status in (OPEN, CLAIMED)
    return {"id": order.id, "model": order.model_name, "status": order.status, "base_version": order.base_version,
            "reason": order.reason, "due_at": order.due_at, "created_at": order.created_at,
            "escalated": order.escalated_at is not None, "escalated_at": order.escalated_at,
            "fulfilled_at": order.fulfilled_at, "version": order.version, "job_id": order.job_id,
            "snapshot": {"uri": "file://" + os.path.abspath(store.path(order.snapshot_path)) if local else None,
                         "url": f"/v1/retrain-orders/{order.id}/snapshot",
                         "sha256": order.snapshot_sha256, "rows": order.rows, "format": "parquet"},
            "recipe": order.recipe, "erased_rows": len(order.forget_ids or []), "refusals": order.refusals or [],
            "follows": order.follows}

