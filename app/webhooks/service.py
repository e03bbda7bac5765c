"""Signed webhooks for request status changes, and for a completed request's consolidation.

Every status change of a request with a ``callback_url`` adds a ``webhook_deliveries`` row
in the same transaction as the change (an outbox: a change is never announced unless it
committed, and never lost if the process dies). ``deliver_due`` POSTs due rows; a 2xx
answer marks the row delivered, anything else is retried with exponential backoff
(``webhook_backoff_s`` * 2^(attempt-1)) up to ``webhook_max_attempts``; every attempt is
logged on the row, whatever went wrong (an attempt never raises), and a row whose URL can
never be sent ends ``failed`` at once. Changes of one request are delivered in order (a change waits while an
earlier one is still being retried). Delivery is at-least-once: receivers dedupe on
``Lethe-Delivery``.

A request served approximately that an exact version later consolidates (its status stays
``completed``) gets one ``forget.consolidated`` event the same way, in the consolidating
transaction (``consolidated``).

Headers of each POST (body: the JSON payload, exactly as stored):
    Lethe-Event: forget.status_changed (or forget.consolidated)
    Lethe-Delivery: <delivery id>
    Lethe-Timestamp: <unix seconds>
    Lethe-Signature: v1=<hex HMAC-SHA256(LETHE_WEBHOOK_SECRET, "<timestamp>.<body>")>
A receiver recomputes the HMAC over the raw body and compares in constant time, and
refuses timestamps more than 5 minutes old (``verify_signature`` is that recipe).

Outbound safety (``outbound``): the URL is checked (public addresses only, no credentials,
``LETHE_CALLBACK_ALLOW`` for exceptions) when the request is recorded and again before every
attempt; the POST goes to the address that passed the check and never follows a redirect.
Deliveries run concurrently with a per-destination and a per-tenant limit, and each round
reads due rows tenant by tenant (``Deliverer``): one tenant's failing or slow receivers
never delay another tenant's deliveries.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import httpx

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import aliased
from sqlalchemy.orm import Session

from ..db import session_scope, utcnow
from ..forget.models import OPEN, QUEUED, RAN, ForgetRequest
from ..periodic import PeriodicThread
from . import outbound
from ..events.models import Subscription
from .models import DELIVERED, FAILED, PENDING, WebhookDelivery

log = logging.getLogger("lethe.webhooks")
EVENT = "forget.status_changed"
CONSOLIDATED = "forget.consolidated"
TOLERANCE_S = 300


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify_signature(secret: str, body: bytes, timestamp: str, signature: str, *, now: float | None = None,
                     tolerance_s: int = TOLERANCE_S) -> bool:
    """The receiver's side (documented in docs/service.md): True when the signature matches
    the raw body and the timestamp is fresh."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature or "")


def request_payload(req, previous: str | None, at: dt.datetime | None = None) -> dict:
    return {"event": EVENT, "request_id": req.id, "external_id": req.external_id, "model": req.model_name,
            "status": req.status, "previous_status": previous, "at": (at or utcnow()).isoformat(),
            "due_at": req.due_at.isoformat() if req.due_at else None, "reason_code": req.reason_code,
            "reason": req.reason, "error": (req.error or None) and req.error[:500],
            "version_before": req.version_before, "version_after": req.version_after}


def status_changed(session: Session, req, previous: str | None) -> WebhookDelivery | None:
    """Call after changing ``req.status`` (inside the same transaction).

    A tenant's request (``reveal_at`` set) announces what its tenant is shown
    (app/forget/timeline.py): no change between ``queued`` and ``running``, and its final
    state sent no earlier than ``reveal_at`` (the row waits until then), with
    ``previous_status`` ``queued``."""
    if not req.callback_url or req.status == previous:
        return None
    at = utcnow()
    if req.reveal_at is not None and previous is not None:
        if req.status in OPEN and (previous in OPEN or (previous in RAN and at < req.reveal_at)):
            return None  # the tenant was shown queued and still is
        if previous in OPEN:
            previous = QUEUED
        if req.status in RAN:
            at = max(at, req.reveal_at)
    return _record(session, req, EVENT, request_payload(req, previous, at), at)


def consolidated(session: Session, req) -> WebhookDelivery | None:
    """Call after giving a completed request its ``exact_version`` (inside the same
    transaction): the status-change body, with ``event`` = forget.consolidated, the status
    unchanged and the exact version that now serves without the request's data."""
    if not req.callback_url:
        return None
    at = max(utcnow(), req.reveal_at) if req.reveal_at is not None else utcnow()  # after the completion's
    body = {**request_payload(req, req.status, at), "event": CONSOLIDATED, "exact_version": req.exact_version}
    return _record(session, req, CONSOLIDATED, body, at)


def _record(session: Session, req, event: str, body: dict, at: dt.datetime | None = None) -> WebhookDelivery:
    """The outbox row; ``at``: not sent (nor shown to a tenant) before then."""
    at = at or utcnow()
    d = WebhookDelivery(id=str(uuid.uuid4()), request_id=req.id, event=event, url=req.callback_url,
                        payload=json.dumps(body, sort_keys=True, separators=(",", ":")),
                        status=PENDING, attempts=0, next_attempt_at=at, log=[], created_at=at)
    session.add(d)
    session.flush()
    return d


def deliveries_of(session: Session, request_id: str) -> list[WebhookDelivery]:
    return list(session.execute(select(WebhookDelivery).where(WebhookDelivery.request_id == request_id)
                                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)).scalars())


def _clean(text: str, limit: int = 500) -> str:
    """An error message safe to store and log: control characters (NUL, CR, LF...) escaped."""
    return "".join(c if c not in outbound.CONTROL else repr(c)[1:-1] for c in text)[:limit]


def _post(settings, d: WebhookDelivery, client) -> tuple[int | None, str | None, bool]:
    """One attempt: the URL is checked again (DNS may have changed since it was recorded)
    and the connection goes to the address that passed the check; no redirect is followed.
    Never raises: returns (status code, error, permanent), ``permanent`` when the stored URL
    can never be sent (it does not parse: no retry can succeed)."""
    try:
        outbound.parse(d.url)
    except outbound.UnsafeCallback as e:
        return None, _clean(f"refused: {e}"), True
    try:
        host, port, ip = outbound.check(d.url, settings.callback_allow)
    except outbound.UnsafeCallback as e:
        return None, _clean(f"refused: {e}"), False
    try:
        ts = int(time.time())
        body = d.payload.encode("utf-8")
        url = outbound.parse(d.url)
        default_port = 443 if url.scheme == "https" else 80
        name = f"[{host}]" if ":" in host else host  # an IPv6 literal
        headers = {"Host": name if port == default_port else f"{name}:{port}",
                   "Content-Type": "application/json", "User-Agent": "lethe-webhooks/1", "Lethe-Event": d.event,
                   "Lethe-Delivery": d.id, "Lethe-Timestamp": str(ts),
                   "Lethe-Signature": sign(settings.webhook_secret, ts, body)}
        r = client.post(url.copy_with(host=str(ip)), content=body, headers=headers, follow_redirects=False,
                        timeout=settings.webhook_timeout_s,
                        extensions={"sni_hostname": host} if url.scheme == "https" else None)
        return r.status_code, None, False
    except Exception as e:  # noqa: BLE001 - anything that goes wrong is a failed attempt
        return None, _clean(f"{e.__class__.__name__}: {e}"), False


class Deliverer:
    """Sends due deliveries concurrently: a thread pool of ``webhook_concurrency`` threads,
    at most ``webhook_per_destination`` connections to one scheme://host:port and at most
    ``webhook_per_tenant`` to one tenant's receivers, so a receiver that answers slowly (or
    never), or a tenant with many failing deliveries, ties up only its own share and delays
    only its own deliveries. Each round reads at most ``limit`` due rows per tenant, oldest
    first, skipping rows already being sent, so no tenant's backlog hides another's rows.
    Rows being sent are remembered, so a round never sends a row twice."""

    def __init__(self, settings, client=None):
        self.settings = settings
        self._own_client = client is None
        self.client = client or httpx.Client(follow_redirects=False)
        self._pool = ThreadPoolExecutor(max(1, settings.webhook_concurrency), thread_name_prefix="lethe-webhook")
        self._lock = threading.Lock()
        self._inflight: set[str] = set()
        self._active: dict[str, int] = {}  # destination -> running drainers
        self._tenants: dict[str, int] = {}  # tenant -> running drainers
        self._queues: dict[tuple[str, str], deque] = {}  # (tenant, destination) -> rows waiting to be sent
        self._running: dict[tuple[str, str], int] = {}  # (tenant, destination) -> its running drainers
        self._parked: dict[str, float] = {}  # rows whose outcome could not be stored: not before (monotonic)
        self._closed = False

    def _due(self, limit: int) -> list[tuple[str, str, str]]:
        """Due rows, (id, url, tenant): the ``limit`` oldest of each tenant."""
        now = utcnow()
        earlier = aliased(WebhookDelivery)
        blocked = exists().where(earlier.request_id == WebhookDelivery.request_id, earlier.status == PENDING,
                                 earlier.created_at < WebhookDelivery.created_at)
        with self._lock:
            clock = time.monotonic()
            self._parked = {i: t for i, t in self._parked.items() if t > clock}
            skip = [*self._inflight, *self._parked]
        # a request's tenant, or a registry subscription's (app/events; an operator's: "")
        tenant = func.coalesce(ForgetRequest.tenant, Subscription.tenant, "")
        rank = func.row_number().over(partition_by=tenant,
                                      order_by=(WebhookDelivery.created_at, WebhookDelivery.id)).label("rank")
        # in order per request: a change waits while an earlier one of the same request is pending
        q = (select(WebhookDelivery.id, WebhookDelivery.url, tenant.label("tenant"), rank)
             .outerjoin(ForgetRequest, ForgetRequest.id == WebhookDelivery.request_id)
             .outerjoin(Subscription, Subscription.id == WebhookDelivery.subscription_id)
             .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now, ~blocked))
        if skip:
            q = q.where(WebhookDelivery.id.not_in(skip))
        ranked = q.subquery()
        with session_scope(self.settings.database_url) as db:
            rows = db.execute(select(ranked.c.id, ranked.c.url, ranked.c.tenant).where(ranked.c.rank <= limit)
                              .order_by(ranked.c.rank)).all()
        with self._lock:
            return [(i, u, t) for i, u, t in rows if i not in self._inflight]

    def round(self, *, wait: bool, limit: int = 200) -> int:
        """Queue every due row by (tenant, destination) and start drainers where the
        destination and the tenant have a free slot; a queue whose drainers are busy is served
        by them as soon as they are free (not a round later). ``wait``: return only when the
        drainers started are all done (tests, one-shot runs). Returns how many rows were
        queued."""
        due = self._due(limit)
        futures, queued = [], 0
        per_dest = max(1, self.settings.webhook_per_destination)
        per_tenant = max(1, self.settings.webhook_per_tenant)
        with self._lock:
            for delivery_id, url, tenant in due:
                if delivery_id in self._inflight:
                    continue
                self._inflight.add(delivery_id)
                self._queues.setdefault((tenant, outbound.destination(url)), deque()).append(delivery_id)
                queued += 1
            for (tenant, dest), queue in list(self._queues.items()):
                running = self._running.get((tenant, dest), 0)
                slots = min(per_dest - self._active.get(dest, 0), per_tenant - self._tenants.get(tenant, 0),
                            len(queue) - running)
                if slots <= 0:
                    continue  # busy destination or tenant: its drainers (or a later round) serve it
                self._active[dest] = self._active.get(dest, 0) + slots
                self._tenants[tenant] = self._tenants.get(tenant, 0) + slots
                self._running[(tenant, dest)] = running + slots
                futures += [self._pool.submit(self._drain, tenant, dest) for _ in range(slots)]
        if wait:
            for f in futures:
                f.result()
        return queued

    def _drain(self, tenant: str, dest: str) -> None:
        key = (tenant, dest)
        while True:
            with self._lock:
                queue = self._queues.get(key)
                if self._closed or not queue:
                    # stop: what is left is served by a drainer a later round starts
                    self._active[dest] -= 1
                    self._tenants[tenant] -= 1
                    self._running[key] -= 1
                    if queue is not None and not queue and not self._running[key]:
                        del self._queues[key]
                    return
                delivery_id = queue.popleft()
            try:
                self._attempt(delivery_id)
            except Exception as e:  # noqa: BLE001 - one row's failure must not stop the others
                # the outcome could not be stored (_attempt tried twice): not again for a while,
                # and one line, not a traceback a second
                with self._lock:
                    self._parked[delivery_id] = time.monotonic() + max(self.settings.webhook_backoff_s, 1.0)
                log.error("webhook %s: could not record the attempt (%s)", delivery_id, e.__class__.__name__)
            finally:
                with self._lock:
                    self._inflight.discard(delivery_id)

    def _attempt(self, delivery_id: str) -> None:
        settings = self.settings
        now = utcnow()
        # claim the row: its next attempt moves past this one's timeout, in one conditional
        # UPDATE, so another round or another gateway that read it as due skips it (and if
        # this process dies mid-attempt, the row is due again once the claim runs out)
        lease = now + dt.timedelta(seconds=2 * settings.webhook_timeout_s + 30)
        with session_scope(settings.database_url) as db:
            won = db.execute(update(WebhookDelivery)
                             .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING,
                                    WebhookDelivery.next_attempt_at <= now)
                             .values(next_attempt_at=lease)
                             .execution_options(synchronize_session=False)).rowcount
            if not won:
                return  # done, or attempted since the round read it
            d = db.get(WebhookDelivery, delivery_id)
            snapshot = WebhookDelivery(id=d.id, event=d.event, url=d.url, payload=d.payload)
        code, error, permanent = _post(settings, snapshot, self.client)  # outside any transaction; never raises
        try:
            self._record(delivery_id, code, error, permanent)
        except Exception:  # noqa: BLE001 - e.g. the error text the database refuses: store a plain one
            log.warning("webhook %s: storing the attempt failed; storing it without its error text", delivery_id)
            self._record(delivery_id, code, "attempt failed (error text not storable)", permanent)

    def _record(self, delivery_id: str, code: int | None, error: str | None, permanent: bool) -> None:
        """Store one attempt: delivered on a 2xx; else ``failed`` when no retry can succeed or
        the attempts are spent, otherwise retried after ``webhook_backoff_s`` * 2^(n-1)."""
        settings = self.settings
        with session_scope(settings.database_url) as db:
            d = db.get(WebhookDelivery, delivery_id)
            if d is None or d.status != PENDING:
                return
            at = utcnow()
            d.attempts += 1
            d.last_status_code, d.last_error = code, error
            d.log = [*(d.log or []), {"attempt": d.attempts, "at": at.isoformat(), "status_code": code,
                                      "error": error}]
            if code is not None and 200 <= code < 300:
                d.status, d.delivered_at, d.next_attempt_at = DELIVERED, at, None
            elif permanent or d.attempts >= settings.webhook_max_attempts:
                d.status, d.next_attempt_at = FAILED, None
                log.warning("webhook %s: gave up after %d attempts", d.id, d.attempts)
            else:
                delay = settings.webhook_backoff_s * math.pow(2, d.attempts - 1)
                d.next_attempt_at = at + dt.timedelta(seconds=delay)

    def close(self) -> None:
        self._closed = True  # running drainers stop after their current attempt
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._own_client:
            self.client.close()


def deliver_due(settings, *, limit: int = 50, client=None) -> int:
    """POST every due delivery once (concurrently, see ``Deliverer``) and wait for them.
    Returns how many attempts were made."""
    d = Deliverer(settings, client)
    try:
        return d.round(wait=True, limit=limit)
    finally:
        d.close()


class WebhookPump(PeriodicThread):
    """A daemon thread in the gateway that runs ``deliver_due`` every ``webhook_poll_s``.
    It reads the outbox table, so it also delivers changes made by Celery workers."""

    def __init__(self, settings):
        self.deliverer: Deliverer | None = None
        super().__init__("lethe-webhooks", settings.webhook_poll_s, self._round)
        self.settings = settings

    def _round(self) -> None:
        if self.deliverer is None:
            self.deliverer = Deliverer(self.settings)
        self.deliverer.round(wait=False)  # a slow receiver must not hold up the next round

    def stop(self) -> None:
        super().stop()
        if self.deliverer is not None:
            self.deliverer.close()
