"""No-data requests: a tenant's request whose selection turned out empty (the model holds
nothing it names: an unknown subject or instance, another subject's instance, one erased
already; ``service._held_rows``). It is accepted like any other (202, ``queued``, no
job) so that the answer says nothing about the catalogue, and closed here when the run
drawn for it from the model's recent requests starts (``timeline.no_data_run``):
``completed`` with ``reason_code: no_data``, no versions, a ``forget.completed`` audit entry
and webhook like every completion, and a certificate that says nothing was held
(``instances: 0``, ``outcome: no_data``). Its tenant is shown it ``queued`` until the drawn
run's end (``reveal_at``), as a request that erases is shown until its own.

Until it closes a tenant can cancel it like any queued request, and reads of an open request
do not show its selection or job (``router._read``), so submitting and cancelling learns
nothing either."""
from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..db import session_scope, utcnow
from ..periodic import PeriodicThread
from . import models as fm
from . import timeline
from .models import ForgetRequest
from .status import set_status

log = logging.getLogger("lethe.nodata")

NO_DATA = "no_data"
REASON = "the model holds none of the data this request names: nothing to erase"


def is_no_data(req: ForgetRequest) -> bool:
    return req.reason_code == NO_DATA and req.status == fm.COMPLETED


def resolve(session: Session, *, hold_s: float, now: dt.datetime | None = None, limit: int = 500,
            secret: str | None = None, max_hold_s: float = 86400.0) -> list[str]:
    """Close the no-data requests whose drawn run has started (``timeline.no_data_run``);
    returns their ids. ``secret`` (the subject secret) keys the draw; None: no draw, every
    no-data request received ``hold_s`` ago closes (and is shown so at once)."""
    now = now or utcnow()
    q = select(ForgetRequest).where(ForgetRequest.status == fm.QUEUED, ForgetRequest.job_id.is_(None))
    if secret is None:
        q = q.where(ForgetRequest.received_at <= now - dt.timedelta(seconds=hold_s))
    due = session.execute(q.order_by(ForgetRequest.received_at).limit(limit)
                          .with_for_update(skip_locked=True)).scalars().all()
    runs: dict[str, list] = {}
    done = []
    for req in due:
        if req.instance_ids:  # a follower or a request waiting for a job (a retry in flight): not ours
            continue
        if secret is not None:
            if req.model_name not in runs:
                runs[req.model_name] = timeline.recent_runs(session, req.model_name)
            run = timeline.no_data_run(req, runs[req.model_name], secret=secret, hold_s=hold_s, max_hold_s=max_hold_s)
            if run.starts_at > now:
                continue
            if req.reveal_at is not None:  # its tenant sees it queued until then (timeline.masked)
                req.reveal_at = max(req.reveal_at, run.reveal_at)
        req.completed_at, req.reason_code, req.reason = now, NO_DATA, REASON
        set_status(session, req, fm.COMPLETED)
        audit.append(session, actor="system", action="forget.completed", subject_ref=req.subject_ref,
                     payload={"request_id": req.id, "model": req.model_name, "instances": 0, "outcome": NO_DATA,
                              "version_before": None, "version_after": None})
        done.append(req.id)
    return done


class NoDataResolver(PeriodicThread):
    """The gateway thread that closes no-data requests: every second (or every
    ``LETHE_SWEEPER_INTERVAL_S`` when shorter; 0 = off), so that one starts about when its
    drawn run does."""

    def __init__(self, settings):
        interval = min(settings.sweeper_interval_s, 1.0) if settings.sweeper_interval_s > 0 else 0
        super().__init__("no-data-resolver", interval, self.run_once)
        self.settings = settings

    def run_once(self) -> int:
        s = self.settings
        with session_scope(s.database_url) as db:
            n = len(resolve(db, hold_s=s.no_data_hold_s, secret=s.subject_secret, max_hold_s=s.no_data_hold_max_s))
        if n:
            log.info("closed %d no-data request(s)", n)
        return n
