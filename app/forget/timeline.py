"""A request's timeline as the tenant that submitted it sees it (docs/service.md, *No oracle*).

A request with data goes ``running`` when a worker claims it (a fraction of a second on an
idle model) and ``completed`` when the job publishes; a no-data request has nothing to run.
Shown as they are, the two timelines would tell a tenant at once whether the model holds
what it named. So, to a tenant's key:

- an open request (``queued`` or ``running``) is shown ``queued``: no ``running``, no job,
  no progress, on every path (a read, the list and its ``status`` filter, erasure members,
  the cancel answer, the webhooks sent to its callback);
- a request that ran (``completed`` or ``failed``) is shown so no earlier than its
  ``reveal_at``: ``received_at`` + ``LETHE_NO_DATA_HOLD_S`` (set at submission, the same for
  every request); before that it is shown ``queued`` too, and its webhook waits until then;
- a no-data request follows a run drawn from the model's latest completed requests with data
  (``no_data_run``: the run at a quantile keyed by the request id under the subject secret,
  fixed for every pass and unpredictable to the tenant): it is closed (``nodata.py``) once
  that run's wait (received to its job's start) has passed — from then on it can no longer
  be canceled, like a request whose job started — and shown final at max(hold, that run's
  duration). A request that erases is shown final at max(hold, its duration), one with
  nothing to erase at max(hold, a duration drawn from the same recent distribution), and
  both flip at read time, not when a background pass comes round.

Operators and auditors see every request as it is; the audit log keeps the true times.
Canceled and denied requests are shown at once (the tenant's own act, or an operator's)."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from ..db import utcnow
from ..jobs.models import Job
from . import models as fm
from .models import ForgetRequest

RAN = fm.RAN  # final states a job (or the no-data resolver) reaches
HISTORY = 50  # completed requests with data a no-data request's duration is drawn from


def masked(req: ForgetRequest, now: dt.datetime | None = None) -> bool:
    """Whether the tenant that submitted ``req`` sees it ``queued`` now, whatever it is."""
    if req.reveal_at is None:
        return False
    if req.status in fm.OPEN:
        return True
    return req.status in RAN and (now or utcnow()) < req.reveal_at


def shown_status(req: ForgetRequest, now: dt.datetime | None = None) -> str:
    return fm.QUEUED if masked(req, now) else req.status


def masked_clause(now: dt.datetime):
    """SQL: the requests ``masked`` at ``now``."""
    r = ForgetRequest
    return and_(r.reveal_at.is_not(None), or_(r.status.in_(fm.OPEN), and_(r.status.in_(RAN), r.reveal_at > now)))


def status_clause(status: str, now: dt.datetime):
    """SQL: a tenant's ``?status=`` filter, on the status it is shown."""
    r, hidden = ForgetRequest, masked_clause(now)
    if status == fm.QUEUED:
        return or_(r.status == fm.QUEUED, hidden)
    return and_(r.status == status, ~hidden) if status in (fm.RUNNING, *RAN) else r.status == status


def reveal_at(received_at: dt.datetime, hold_s: float) -> dt.datetime:
    """A tenant's request: set at submission, the same whether it selected data or not."""
    return received_at + dt.timedelta(seconds=hold_s)


# --- when a no-data request closes ------------------------------------------------------------

def quantile(secret: str, request_id: str) -> float:
    """A number in [0, 1) fixed for the request and unpredictable without the secret."""
    digest = hmac.new(secret.encode("utf-8"), b"no-data-hold\n" + request_id.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def recent_runs(session: Session, model_name: str, limit: int = HISTORY) -> list[tuple[float, float]]:
    """(wait, duration) in seconds — received to its job's start, received to completed —
    of the model's latest completed requests that erased something (no-data requests left
    out), sorted by duration."""
    r = ForgetRequest
    rows = session.execute(select(r.received_at, Job.started_at, r.completed_at)
                           .join(Job, Job.id == r.job_id)
                           .where(r.model_name == model_name, r.status == fm.COMPLETED, r.completed_at.is_not(None))
                           .order_by(r.completed_at.desc()).limit(limit)).all()
    runs = [(max(0.0, ((started or done) - rec).total_seconds()), max(0.0, (done - rec).total_seconds()))
            for rec, started, done in rows]
    return sorted(runs, key=lambda run: (run[1], run[0]))


@dataclass(frozen=True)
class NoDataRun:
    """A no-data request's drawn timeline: ``starts_at`` it is closed (and can no longer be
    canceled, like a request whose job started), ``reveal_at`` its tenant is shown it."""
    starts_at: dt.datetime
    reveal_at: dt.datetime


def no_data_run(req: ForgetRequest, runs: list[tuple[float, float]], *, secret: str, hold_s: float,
                max_hold_s: float) -> NoDataRun:
    """The run at the request's keyed quantile among ``runs`` (``recent_runs``): it starts
    after that run's wait and is shown final at max(hold, that run's duration), at most
    ``max_hold_s``. With no history it starts when the hold ends: it stays cancelable as long
    as a request with data could be (a refused cancel then says only what an erasure says)."""
    wait, took = runs[min(len(runs) - 1, int(quantile(secret, req.id) * len(runs)))] if runs else (hold_s, 0.0)
    cap = max(hold_s, max_hold_s)
    return NoDataRun(req.received_at + dt.timedelta(seconds=min(wait, cap)),
                     req.received_at + dt.timedelta(seconds=min(max(hold_s, took), cap)))
