"""Webhooks one caller cannot stall: a URL the sender cannot send is refused at submit
(422, the sender's own parser), an attempt that fails for any reason is recorded and backs
off, a row that can never be sent ends ``failed``, and one tenant's 200 poisoned deliveries
(unsendable URLs, a receiver that never answers, a closed port) leave another tenant's
healthy receiver served within 2 s (p99)."""
import datetime as dt
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import session_scope
from app.forget.models import ForgetRequest
from app.main import create_app
from app.webhooks import outbound
from app.webhooks import service as webhooks
from app.webhooks.models import FAILED, PENDING, WebhookDelivery

from .conftest import MODEL, bearer, make_key

PORTAL = ["forget:write", "forget:read"]
POISON_URLS = ["http://127.0.0.1:{p}/1\r\nX: y", "http://127.0.0.1:{p}/a\tb", "http://127.0.0.1:{p}/\x7f",
               "http://127.0.0.1:{p}/a b", "http://127.0.0.1:0/", "ftp://127.0.0.1:{p}/"]


@pytest.fixture
def gw(seeded_on, dispatcher):
    s = seeded_on.model_copy(update={"callback_allow": "127.0.0.0/8", "webhook_backoff_s": 30.0,
                                  "webhook_timeout_s": 2.0, "webhook_poll_s": 0.5})
    keys = {t: bearer(make_key(s, PORTAL, f"{t}-portal", tenant=t)) for t in ("acme", "beta")}
    ops = bearer(make_key(s, ["models:admin", "forget:read", "forget:write"], "ops"))
    with TestClient(create_app(s, dispatcher=dispatcher)) as c:
        for t in ("acme", "beta"):
            c.put(f"/v1/tenants/{t}/models/{MODEL}", headers=ops).raise_for_status()
        yield s, c, keys


class Healthy:
    """A receiver that answers 200 and notes when each delivery arrived (wall clock)."""

    def __init__(self):
        self.got: dict[str, float] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.got[self.headers["Lethe-Delivery"]] = time.time()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("url", [u.format(p=8080) for u in POISON_URLS] + ["http://127.0.0.1:8080/\x00"])
def test_an_unsendable_callback_url_is_refused_at_submit(gw, url):
    s, c, keys = gw
    r = c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice", "callback_url": url}, headers=keys["acme"])
    assert r.status_code == 422, (url, r.text)
    with pytest.raises(outbound.UnsafeCallback):
        outbound.parse(url)  # the parser the sender uses says the same


def _poison(settings, template_id: str, urls: list[str]) -> list[str]:
    """Rows as an older version could have stored them: one request per URL (copies of
    ``template_id``'s request, same tenant), each with a due delivery to that URL."""
    ids = []
    with session_scope(settings.database_url) as db:
        base = db.get(ForgetRequest, template_id)
        cols = {c.key: getattr(base, c.key) for c in ForgetRequest.__mapper__.column_attrs}
        now = dt.datetime.now(dt.timezone.utc)
        for url in urls:
            rid = str(uuid.uuid4())
            db.add(ForgetRequest(**{**cols, "id": rid, "idempotency_key": None, "job_id": None, "callback_url": url}))
            d = str(uuid.uuid4())
            db.add(WebhookDelivery(id=d, request_id=rid, event=webhooks.EVENT, url=url, payload="{}", status=PENDING,
                                   attempts=0, next_attempt_at=now, log=[], created_at=now))
            ids.append(d)
    return ids


def test_poisoned_deliveries_of_one_tenant_do_not_delay_another(gw):
    s, c, keys = gw
    healthy = Healthy()
    hang = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    hang.bind(("127.0.0.1", 0))
    hang.listen(1000)
    closed = socket.socket()  # a port nobody listens on: connection refused
    closed.bind(("127.0.0.1", 0))
    hang_port, closed_port = hang.getsockname()[1], closed.getsockname()[1]
    closed.close()
    pump = None
    try:
        first = c.post("/v1/forget", json={"model": MODEL, "subject_id": "zed",
                                           "callback_url": f"http://127.0.0.1:{hang_port}/h"}, headers=keys["acme"])
        assert first.status_code == 202, first.text
        unsendable = [POISON_URLS[i % len(POISON_URLS)].format(p=closed_port) for i in range(80)]
        hanging = [f"http://127.0.0.1:{hang_port}/h{i}" for i in range(60)]
        refused = [f"http://127.0.0.1:{closed_port}/h{i}" for i in range(59)]
        poison = _poison(s, first.json()["id"], unsendable + hanging + refused)  # 199 + the first: 200

        pump = webhooks.WebhookPump(s)
        pump.start()
        rids = []
        for i in range(20):  # the other tenant's requests arrive while the poison is being worked through
            r = c.post("/v1/forget", json={"model": MODEL, "subject_id": f"user-{i}", "callback_url": healthy.url},
                       headers=keys["beta"])
            assert r.status_code == 202, r.text
            rids.append(r.json()["id"])
            time.sleep(0.15)
        deadline = time.time() + 10
        while len(healthy.got) < 20 and time.time() < deadline:
            time.sleep(0.05)
        fast = poison[:len(unsendable)] + poison[len(unsendable) + len(hanging):]
        while time.time() < deadline + 10:  # the poison that fails fast has had its attempt
            with session_scope(s.database_url) as db:
                if not db.execute(select(WebhookDelivery.id).where(WebhookDelivery.id.in_(fast),
                                                                   WebhookDelivery.attempts == 0)).first():
                    break
            time.sleep(0.1)
        pump.stop()
        pump = None

        with session_scope(s.database_url) as db:
            mine = db.execute(select(WebhookDelivery).where(WebhookDelivery.request_id.in_(rids))).scalars().all()
            lat = sorted(healthy.got[d.id] - d.created_at.timestamp() for d in mine if d.id in healthy.got)
            assert len(lat) == 20, f"{len(lat)} of 20 healthy deliveries arrived"
            p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
            assert p99 < 2.0, f"healthy receiver p99 {p99:.2f} s (all: {[round(x, 2) for x in lat]})"
            rows = {d.id: d for d in db.execute(select(WebhookDelivery).where(WebhookDelivery.id.in_(poison)))
                    .scalars()}
        bad = [rows[i] for i in poison[:len(unsendable)]]
        # an unsendable row: one attempt, recorded with its reason, and failed for good
        assert all(d.status == FAILED and d.attempts == 1 and d.log[0]["error"].startswith("refused") for d in bad), \
            [(d.url, d.status, d.attempts, d.log) for d in bad if d.status != FAILED or d.attempts != 1][:3]
        # a refused connection: a recorded failed attempt, backing off (30 s), not retried every round
        gone = [rows[i] for i in poison[len(unsendable) + len(hanging):]]
        assert all(d.status == PENDING and d.attempts == 1 and d.last_error for d in gone), \
            [(d.url, d.status, d.log) for d in gone if not (d.status == PENDING and d.attempts == 1)][:3]
        assert all(d.next_attempt_at.timestamp() > time.time() + 5 for d in gone)
        assert all(d.attempts <= 1 for d in rows.values()), [(d.url, d.log) for d in rows.values() if d.attempts > 1][:3]
    finally:
        if pump is not None:
            pump.stop()
        healthy.close()
        hang.close()


def test_an_attempt_that_cannot_be_stored_with_its_error_is_still_recorded(gw, monkeypatch):
    """Whatever the sender raises, and even an error text the database refuses, ends as a
    recorded failed attempt that backs off (never a row retried every round)."""
    s, c, keys = gw
    r = c.post("/v1/forget", json={"model": MODEL, "subject_id": "zed", "callback_url": "http://127.0.0.1:9/h"},
               headers=keys["acme"])
    rid = r.json()["id"]

    class Exploding:
        def post(self, *a, **kw):
            raise RuntimeError("boom\x00\r\n")

    assert webhooks.deliver_due(s, client=Exploding()) == 1
    with session_scope(s.database_url) as db:
        d = webhooks.deliveries_of(db, rid)[0]
        assert d.status == PENDING and d.attempts == 1 and d.next_attempt_at is not None
        assert d.last_error == "RuntimeError: boom\\x00\\r\\n"  # stored escaped
    assert webhooks.deliver_due(s, client=Exploding()) == 0  # backing off: not due again yet
