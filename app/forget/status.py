"""A deletion request's status changes in one place.

``set_status`` is called by every service that moves a request (submit/cancel/deny/retry in
``forget.service``, claim/complete/fail in ``jobs.service``, the sweeper's re-queue); inside the
caller's transaction it changes the status and adds the request's webhook to the outbox
(``webhooks.service.status_changed``), so a change is announced exactly when it commits.
"""
from __future__ import annotations

from sqlalchemy.orm import Session

from ..webhooks.service import status_changed
from .models import ForgetRequest


def set_status(session: Session, req: ForgetRequest, status: str) -> None:
    """Change a request's status and queue its webhook (same transaction)."""
    previous = req.status
    req.status = status
    status_changed(session, req, previous)
