"""Issue 15, findings 2 and 3: callback URLs cannot reach internal addresses (checked when
recorded and again at delivery, redirects not followed), and a receiver that never answers
delays only its own webhooks."""
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.db import session_scope
from app.webhooks import outbound
from app.webhooks import service as webhooks
from app.webhooks.models import WebhookDelivery

from .conftest import MODEL, counts

LOCAL = "127.0.0.0/8"

INTERNAL = ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/hook", "http://[::1]:6379/",
            "http://localhost:5432/", "http://127.1/hook", "http://0.0.0.0:8000/", "http://[fe80::1]/",
            "http://100.64.0.1/", "http://224.0.0.1/", "http://192.168.1.1/", "http://[::ffff:127.0.0.1]/",
            "http://user:pw@8.8.8.8/hook", "https://token@8.8.8.8/hook",
            # IPv6 forms that embed a loopback IPv4 address (NAT64, 6to4, IPv4-compatible, Teredo), port 0
            "http://[64:ff9b::7f00:1]/", "http://[64:ff9b:1::7f00:1]/", "http://[2002:7f00:1::]/",
            "http://[::127.0.0.1]/", "http://[2001:0:7f00:1::1]/", "http://8.8.8.8:0/hook"]


def test_internal_callback_urls_are_refused_at_registration(client, seeded):
    before = counts(seeded)
    for url in INTERNAL:
        r = client.post("/v1/forget", json={"model": MODEL, "subject_id": "alice", "callback_url": url})
        assert r.status_code == 422 and r.json()["code"] == "callback_url_refused", (url, r.text)
    assert counts(seeded) == before  # nothing recorded
    ok = client.post("/v1/forget", json={"model": MODEL, "subject_id": "alice", "callback_url": "http://8.8.8.8/h"})
    assert ok.status_code == 202, ok.text  # a public address is fine


def test_allowlist_opens_networks_and_names():
    assert outbound.check("http://127.0.0.1:9/x", LOCAL)[2].is_loopback
    assert outbound.check("http://localhost:9/x", "localhost")[0] == "localhost"
    with pytest.raises(outbound.UnsafeCallback):
        outbound.check("http://10.1.2.3/x", LOCAL)  # another private network stays closed
    with pytest.raises(outbound.UnsafeCallback, match="credentials"):
        outbound.check("http://a:b@127.0.0.1/x", LOCAL)  # credentials are never allowed


class Receiver:
    def __init__(self, status=200, location=None):
        self.got = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((time.monotonic(), dict(self.headers)))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _submit(client, subject, url):
    r = client.post("/v1/forget", json={"model": MODEL, "subject_id": subject, "callback_url": url})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _delivery(settings, rid) -> WebhookDelivery:
    with session_scope(settings.database_url) as db:
        return webhooks.deliveries_of(db, rid)[0]


@pytest.fixture
def allowed(seeded, dispatcher):
    """A client whose service allows loopback callbacks (as tests and private deployments do)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    from .conftest import bearer, make_key

    s = seeded.model_copy(update={"callback_allow": LOCAL, "webhook_backoff_s": 0.0})
    with TestClient(create_app(s, dispatcher=dispatcher), headers=bearer(make_key(s))) as c:
        yield s, c


def test_checked_again_at_delivery(allowed, monkeypatch):
    s, client = allowed
    rec = Receiver()
    try:
        rid = _submit(client, "alice", rec.url)
        webhooks.deliver_due(s.model_copy(update={"callback_allow": ""}))  # the operator closed loopback since
        d = _delivery(s, rid)
        assert rec.got == [] and d.status == "pending" and d.last_error.startswith("refused:"), d.last_error

        # DNS rebinding: the name resolved to a public address when recorded, to loopback now
        answers = {"now": "93.184.216.34"}
        real = socket.getaddrinfo

        def fake(host, port, *a, **kw):
            if host == "hooks.portal.test":
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers["now"], port))]
            return real(host, port, *a, **kw)

        monkeypatch.setattr(outbound.socket, "getaddrinfo", fake)
        rid2 = _submit(client, "bob", f"http://hooks.portal.test:{rec.server.server_address[1]}/hook")
        answers["now"] = "127.0.0.1"
        webhooks.deliver_due(s.model_copy(update={"callback_allow": ""}))
        assert rec.got == [] and _delivery(s, rid2).last_error.startswith("refused:")
        # and a name the operator allows is sent to the address that was checked, Host kept
        webhooks.deliver_due(s.model_copy(update={"callback_allow": "hooks.portal.test"}))
        assert len(rec.got) == 1 and rec.got[0][1]["Host"].startswith("hooks.portal.test:")
        assert _delivery(s, rid2).status == "delivered"
    finally:
        rec.close()


def test_redirects_are_not_followed(allowed):
    s, client = allowed
    target = Receiver()
    redirector = Receiver(status=307, location=target.url)
    try:
        rid = _submit(client, "alice", redirector.url)
        webhooks.deliver_due(s)
        d = _delivery(s, rid)
        assert len(redirector.got) == 1 and target.got == []
        assert d.status == "pending" and d.last_status_code == 307  # a failed attempt, retried later
    finally:
        target.close()
        redirector.close()


def test_a_receiver_that_never_answers_delays_only_its_own(allowed):
    """Four callbacks to a port that accepts and never answers; another portal's webhook
    still arrives at once (before: one at a time, 5 s timeout each -> 20 s late)."""
    s, client = allowed
    s = s.model_copy(update={"webhook_timeout_s": 5.0, "webhook_poll_s": 0.05})
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)  # the kernel completes the handshakes; nobody ever reads or answers
    slow_url = f"http://127.0.0.1:{hang.getsockname()[1]}/hook"
    fast = Receiver()
    pump = webhooks.WebhookPump(s)
    try:
        for subject in ("alice", "bob", "user-5", "user-6"):
            _submit(client, subject, slow_url)
        pump.start()
        time.sleep(0.5)  # the slow deliveries are now in flight
        t0 = time.monotonic()
        rid = _submit(client, "user-7", fast.url)
        deadline = t0 + 10
        while not fast.got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fast.got, "the fast receiver got nothing"
        assert fast.got[0][0] - t0 < 1.5, fast.got[0][0] - t0
        for _ in range(50):  # recorded as delivered right after
            if _delivery(s, rid).status == "delivered":
                break
            time.sleep(0.02)
        assert _delivery(s, rid).status == "delivered"
    finally:
        pump.stop()
        hang.close()
        fast.close()
