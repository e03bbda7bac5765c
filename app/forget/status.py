"""A deletion request's status changes in one place.

``set_status`` is called by every service that moves a request (submit/cancel/deny/retry in
``forget.service``, claim/complete/fail in ``jobs.service``, the sweeper's re-queue); inside the
caller's transaction it changes the status, releases the request's pending-instance claims
when it closes (``forget.claims``), and adds the request's webhook to the outbox
(``webhooks.service.status_changed``), so a change is announced exactly when it commits.
"""
from __future__ import annotations

from sqlalchemy.orm import Session

from ..webhooks.service import status_changed
from . import claims
from .models import OPEN, ForgetRequest


def set_status(session: Session, req: ForgetRequest, status: str) -> None:
    """Change a request's status, release its claims if it closed, queue its webhook."""
    previous = req.status
    req.status = status
    if previous in OPEN and status not in OPEN:
        claims.release(session, req.id)
    status_changed(session, req, previous)
