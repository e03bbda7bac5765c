"""What the dashboard shows, read from the database through the domain services (plus two
read-only listings the services do not have yet). Plain dicts, ready for the template and
for the page's live-update JSON. No subject ids exist to show: requests hold only HMAC
references, and the dashboard does not show those either."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..forget.models import COMPLETED, FAILED, QUEUED, REJECTED, RUNNING, ForgetRequest
from ..jobs.models import Job
from ..registry import governance
from ..registry import service as registry

STATUSES = (QUEUED, RUNNING, COMPLETED, FAILED, REJECTED)
OPEN = (QUEUED, RUNNING)
# chart series: (label, key in version metrics, how to get the plotted percentage)
SERIES = (("forget accuracy", "ua", lambda v: 100.0 - v), ("retain accuracy", "ra", lambda v: v),
          ("test accuracy", "ta", lambda v: v), ("MIA-efficacy", "mia_efficacy", lambda v: v))
COLORS = ("#d9480f", "#2b8a3e", "#1c7ed6", "#7048e8")


def _days_left(due: dt.datetime, now: dt.datetime) -> float:
    return round((due - now).total_seconds() / 86400, 1)


def request_row(r: ForgetRequest, now: dt.datetime) -> dict:
    open_ = r.status in OPEN
    return {"id": r.id, "model": r.model_name, "status": r.status, "objective": r.objective, "method": r.method,
            "instances": len(r.instance_ids or []), "received_at": r.received_at, "due_at": r.due_at,
            "days_left": _days_left(r.due_at, now) if open_ else None,
            "overdue": open_ and r.due_at < now,
            "late": r.completed_at is not None and r.completed_at > r.due_at,
            "completed_at": r.completed_at, "version_before": r.version_before, "version_after": r.version_after,
            "job_id": r.job_id, "error": r.error}


def job_row(j: Job, n_requests: int) -> dict:
    return {"id": j.id, "model": j.model_name, "method": j.method, "objective": j.objective, "status": j.status,
            "stage": j.stage, "progress": round(float(j.progress or 0.0), 4), "attempts": j.attempts,
            "max_attempts": j.max_attempts, "created_at": j.created_at, "started_at": j.started_at,
            "finished_at": j.finished_at, "result_version": j.result_version, "requests": n_requests,
            "plan": (f"{j.plan.get('method')}: {j.plan.get('reason')}" if j.plan else None),
            "error": (j.error or "").splitlines()[0][:200] if j.error else None}


def order_rows(session: Session, now: dt.datetime, limit: int = 50) -> list[dict]:
    """Retrain orders to the customers' pipelines (app/registry/orders.py), newest first: status,
    due date, days left, escalation and the refusals of their uploads."""
    from ..registry.models import RetrainOrder
    from ..registry.orders import CLAIMED, OPEN as ORDER_OPEN

    rows = session.execute(select(RetrainOrder).order_by(RetrainOrder.created_at.desc(), RetrainOrder.id)
                           .limit(limit)).scalars()
    out = []
    for o in rows:
        open_ = o.status in (ORDER_OPEN, CLAIMED)
        refusals = o.refusals or []
        out.append({"id": o.id, "model": o.model_name, "status": o.status, "base_version": o.base_version,
                    "reason": o.reason, "created_at": o.created_at, "due_at": o.due_at,
                    "days_left": _days_left(o.due_at, now) if open_ else None, "overdue": open_ and o.due_at < now,
                    "late": o.fulfilled_at is not None and o.fulfilled_at > o.due_at,
                    "escalated_at": o.escalated_at, "fulfilled_at": o.fulfilled_at, "version": o.version,
                    "rows": o.rows, "erased_rows": len(o.forget_ids or []), "refusals": len(refusals),
                    "last_refusal": refusals[-1]["reason"][:200] if refusals else None})
    return out


def escalated_orders(session: Session) -> int:
    """Orders still waiting for a verified upload that were escalated (their due date is near)."""
    from ..registry.models import RetrainOrder
    from ..registry.orders import CLAIMED, OPEN as ORDER_OPEN

    return int(session.execute(select(func.count()).select_from(RetrainOrder).where(
        RetrainOrder.status.in_([ORDER_OPEN, CLAIMED]), RetrainOrder.escalated_at.is_not(None))).scalar() or 0)


def list_requests(session: Session, *, status: str | None, model: str | None, limit: int = 200) -> list[ForgetRequest]:
    q = select(ForgetRequest)
    if status:
        q = q.where(ForgetRequest.status == status)
    if model:
        q = q.where(ForgetRequest.model_name == model)
    return list(session.execute(q.order_by(ForgetRequest.received_at.desc(), ForgetRequest.id).limit(limit)).scalars())


def recent_jobs(session: Session, limit: int = 30) -> list[tuple[Job, int]]:
    n = (select(ForgetRequest.job_id, func.count().label("n")).group_by(ForgetRequest.job_id).subquery())
    rows = session.execute(select(Job, func.coalesce(n.c.n, 0)).outerjoin(n, n.c.job_id == Job.id)
                           .order_by(Job.created_at.desc()).limit(limit)).all()
    return [(j, int(k)) for j, k in rows]


def chart(versions: list[dict], width: int = 560, height: int = 220) -> dict:
    """An SVG line chart (computed here, drawn by the template: no JS charting library)."""
    left, right, top, bottom = 44, 12, 12, 28
    w, h = width - left - right, height - top - bottom
    n = len(versions)

    def x(i: int) -> float:
        return round(left + (w * i / (n - 1) if n > 1 else w / 2), 1)

    def y(pct: float) -> float:
        return round(top + h * (1 - max(0.0, min(100.0, pct)) / 100), 1)

    series = []
    for (label, key, f), color in zip(SERIES, COLORS):
        points, segments, seg = [], [], []
        for i, v in enumerate(versions):
            val = (v["metrics"] or {}).get(key)
            if isinstance(val, (int, float)) and not isinstance(val, bool):
                pct = f(float(val))
                pt = {"x": x(i), "y": y(pct), "value": round(pct, 2), "version": v["version"]}
                points.append(pt)
                seg.append(pt)
            elif seg:
                segments.append(seg)
                seg = []
        if seg:
            segments.append(seg)
        series.append({"label": label, "key": key, "color": color, "points": points,
                       "polylines": [" ".join(f"{p['x']},{p['y']}" for p in s) for s in segments if len(s) > 1]})
    return {"width": width, "height": height, "left": left, "top": top, "plot_w": w, "plot_h": h,
            "bottom_y": top + h, "grid": [{"y": y(p), "label": p} for p in (0, 25, 50, 75, 100)],
            "xticks": [{"x": x(i), "label": f"v{v['version']}"} for i, v in enumerate(versions)],
            "series": series, "has_points": any(s["points"] for s in series)}


def model_views(session: Session) -> list[dict]:
    out = []
    for m in registry.list_models(session):
        rows = registry.versions(session, m.name)
        versions = [{"version": v.version, "parent_version": v.parent_version, "sha256": v.sha256,
                     "job_id": v.job_id, "status": v.status, "created_at": v.created_at, "metrics": v.metrics,
                     "exact": v.exact, "debt_instances": v.debt_instances, "debt_versions": v.debt_versions,
                     "debt_due_at": v.debt_due_at,
                     "superseded_by": governance.superseded_by(session, m.name, v.version, rows)}
                    for v in rows]
        aliases = registry.aliases(session, m.name)
        moves = [{"alias": a.alias, "from_version": a.from_version, "to_version": a.to_version, "actor": a.actor,
                  "job_id": a.job_id, "moved_at": a.moved_at} for a in registry.alias_moves(session, m.name)]
        by_version: dict[int, list[str]] = {}
        for alias, ver in aliases.items():
            by_version.setdefault(ver, []).append(alias)
        for v in versions:
            v["aliases"] = sorted(by_version.get(v["version"], []))
        out.append({"name": m.name, "dataset": m.dataset, "arch": m.arch, "aliases": aliases,
                    "versions": versions, "alias_moves": moves, "chart": chart(versions)})
    return out


def overview(session: Session, *, status: str | None = None, model: str | None = None,
             now: dt.datetime | None = None, database_url: str | None = None) -> dict:
    now = now or dt.datetime.now(dt.timezone.utc)
    counts = dict(session.execute(select(ForgetRequest.status, func.count()).group_by(ForgetRequest.status)).all())
    overdue = session.execute(select(func.count()).select_from(ForgetRequest).where(
        ForgetRequest.status.in_(OPEN), ForgetRequest.due_at < now)).scalar()
    seq, head = audit.head(session)
    return {"now": now, "filters": {"status": status or "", "model": model or ""},
            "statuses": STATUSES, "counts": {s: counts.get(s, 0) for s in STATUSES}, "overdue": overdue,
            "requests": [request_row(r, now) for r in list_requests(session, status=status, model=model)],
            "jobs": [job_row(j, n) for j, n in recent_jobs(session)],
            "orders": order_rows(session, now), "orders_escalated": escalated_orders(session),
            "models": model_views(session),
            "subscriptions": subscription_rows(session), "deliveries": delivery_rows(session),
            # incremental (only events since the last check) and outside this page's transaction
            "audit": {**(audit.verify_incremental(database_url) if database_url else audit.verify(session)),
                      "head_seq": seq, "head_hash": head}}


def live(session: Session, now: dt.datetime | None = None) -> dict:
    """What the page polls: job progress and request statuses."""
    now = now or dt.datetime.now(dt.timezone.utc)
    jobs_ = [job_row(j, n) for j, n in recent_jobs(session)]
    open_reqs = list(session.execute(select(ForgetRequest).where(ForgetRequest.status.in_(OPEN))).scalars())
    return {"jobs": [{k: j[k] for k in ("id", "status", "stage", "progress", "attempts")} for j in jobs_],
            "open_requests": {r.id: r.status for r in open_reqs},
            "head_seq": audit.head(session)[0]}



def subscription_rows(session: Session) -> list[dict]:
    """Live registry-event subscriptions (app/events) with their deliveries by status."""
    from ..events.models import Subscription
    from ..webhooks import outbound
    from ..webhooks.models import WebhookDelivery

    counts: dict[str, dict[str, int]] = {}
    for sid, status, n in session.execute(select(WebhookDelivery.subscription_id, WebhookDelivery.status, func.count())
                                          .where(WebhookDelivery.subscription_id.is_not(None))
                                          .group_by(WebhookDelivery.subscription_id, WebhookDelivery.status)).all():
        counts.setdefault(sid, {})[status] = n
    subs = session.execute(select(Subscription).where(Subscription.deleted_at.is_(None))
                           .order_by(Subscription.created_at)).scalars()
    return [{"id": x.id, "model": x.model_name or "every model", "tenant": x.tenant or "operators",
             "events": ", ".join(x.events), "destination": outbound.destination(x.url), "deliveries": counts.get(x.id, {})}
            for x in subs]


def delivery_rows(session: Session, limit: int = 30) -> list[dict]:
    """The latest webhook deliveries of both kinds: a request's status change or a registry
    event for a subscription (one delivery machinery)."""
    from ..webhooks import outbound
    from ..webhooks.models import WebhookDelivery

    rows = session.execute(select(WebhookDelivery).order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
                           .limit(limit)).scalars()
    return [{"id": d.id, "event": d.event, "for": (f"request {d.request_id[:8]}" if d.request_id
                                                    else f"subscription {(d.subscription_id or '')[:8]}"),
             "destination": outbound.destination(d.url), "status": d.status, "attempts": d.attempts,
             "last": d.last_status_code if d.last_status_code is not None else (d.last_error or "")[:80],
             "created_at": d.created_at} for d in rows]
