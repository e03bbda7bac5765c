"""No-data requests: a tenant's request whose selection turned out empty (the model holds
nothing it names: an unknown subject or instance, another subject's instance, one erased
already; ``service._held_rows``). It is accepted like any other (202, ``queued``, no
job) so that the answer says nothing about the catalogue, and closed here once it is
``LETHE_NO_DATA_HOLD_S`` old: ``completed`` with ``reason_code: no_data``, no versions, a
``forget.completed`` audit entry and webhook like every completion, and a certificate that
says nothing was held (``instances: 0``, ``outcome: no_data``).

Until then a tenant can cancel it like any queued request, and reads of an open request
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
from .models import ForgetRequest
from .status import set_status

log = logging.getLogger("lethe.nodata")

NO_DATA = "no_data"
REASON = "the model holds none of the data this request names: nothing to erase"


def is_no_data(req: ForgetRequest) -> bool:
    return req.reason_code == NO_DATA and req.status == fm.COMPLETED


def resolve(session: Session, *, hold_s: float, now: dt.datetime | None = None, limit: int = 500) -> list[str]:
    """Close the no-data requests received at least ``hold_s`` ago; returns their ids."""
    now = now or utcnow()
    due = session.execute(select(ForgetRequest).where(
        ForgetRequest.status == fm.QUEUED, ForgetRequest.job_id.is_(None),
        ForgetRequest.received_at <= now - dt.timedelta(seconds=hold_s))
        .order_by(ForgetRequest.received_at).limit(limit).with_for_update(skip_locked=True)).scalars().all()
    done = []
    for req in due:
        if req.instance_ids:  # a request waiting for a job (a retry in flight): not ours
            continue
        req.completed_at, req.reason_code, req.reason = now, NO_DATA, REASON
        set_status(session, req, fm.COMPLETED)
        audit.append(session, actor="system", action="forget.completed", subject_ref=req.subject_ref,
                     payload={"request_id": req.id, "model": req.model_name, "instances": 0, "outcome": NO_DATA,
                              "version_before": None, "version_after": None})
        done.append(req.id)
    return done


class NoDataResolver(PeriodicThread):
    """The gateway thread that closes no-data requests (every ``LETHE_SWEEPER_INTERVAL_S``)."""

    def __init__(self, settings):
        super().__init__("no-data-resolver", settings.sweeper_interval_s, self.run_once)
        self.settings = settings

    def run_once(self) -> int:
        with session_scope(self.settings.database_url) as db:
            n = len(resolve(db, hold_s=self.settings.no_data_hold_s))
        if n:
            log.info("closed %d no-data request(s)", n)
        return n
