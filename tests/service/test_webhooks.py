"""Signed webhooks, checked by a real HTTP receiver on localhost that verifies each
signature with the documented recipe; a failing receiver is retried with backoff and
every attempt is recorded."""
import datetime as dt
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.db import session_scope
from app.jobs import service as jobs
from app.webhooks import service as webhooks
from app.webhooks.models import WebhookDelivery

from .conftest import MODEL, bearer, make_key

SECRET = "whsec-test-0123456789"
LOCAL = "127.0.0.0/8"  # the receivers listen on loopback, which callbacks may reach only when allowed


@pytest.fixture
def seeded(seeded):
    return seeded.model_copy(update={"callback_allow": LOCAL})


@pytest.fixture
def client(seeded, dispatcher):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(seeded, dispatcher=dispatcher), headers=bearer(make_key(seeded))) as c:
        yield c


def receiver_verifies(secret: str, headers, body: bytes) -> bool:
    """The recipe from docs/service.md, written out independently of app/webhooks."""
    ts, sig = headers.get("Lethe-Timestamp", ""), headers.get("Lethe-Signature", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
        return False
    expected = "v1=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, sig)


@pytest.fixture
def receiver():
    """A real HTTP server: answers 500 to the first `fail_first` posts, then 200."""
    state = {"got": [], "fail_first": 0, "bad_signatures": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = receiver_verifies(SECRET, self.headers, body)
            state["bad_signatures"] += not ok
            state["got"].append({"headers": dict(self.headers), "body": body, "verified": ok})
            code = 500 if len(state["got"]) <= state["fail_first"] else (200 if ok else 401)
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/hooks/lethe"
    yield state
    server.shutdown()
    server.server_close()


def test_every_status_change_is_posted_signed_and_recorded(client, seeded, receiver):
    s = seeded.model_copy(update={"webhook_secret": SECRET, "webhook_backoff_s": 0.0})
    receiver["fail_first"] = 1  # the first POST gets a 500: retried
    r = client.post("/v1/forget", json={"model": MODEL, "subject_id": "alice", "callback_url": receiver["url"],
                                        "external_id": "T-9"})
    assert r.status_code == 202, r.text
    rid, job_id = r.json()["id"], r.json()["job_id"]
    with session_scope(s.database_url) as db:
        c = jobs.claim(db, job_id, worker="w1", lease_s=s.job_lease_s)
    with session_scope(s.database_url) as db:
        jobs.fail(db, job_id=job_id, token=c.token, worker="w1", error="boom", retryable=False)
    assert client.post(f"/v1/forget/{rid}/deny", json={"reason_code": "no_match", "reason": "not ours"}).status_code == 200

    for _ in range(10):  # one change per request per pass: they go out in order
        webhooks.deliver_due(s)
    got = receiver["got"]
    assert receiver["bad_signatures"] == 0 and all(g["verified"] for g in got)
    bodies = [json.loads(g["body"]) for g in got]
    # queued (first POST failed, retried), running, failed, denied
    assert [(b["previous_status"], b["status"]) for b in bodies] == [
        (None, "queued"), (None, "queued"), ("queued", "running"), ("running", "failed"), ("failed", "denied")]
    assert all(b["request_id"] == rid and b["external_id"] == "T-9" for b in bodies)
    assert bodies[-1]["reason_code"] == "no_match" and "alice" not in str(bodies)
    assert got[0]["headers"]["Lethe-Delivery"] == got[1]["headers"]["Lethe-Delivery"]  # same delivery, retried
    assert got[0]["headers"]["Lethe-Event"] == "forget.status_changed"

    rows = client.get(f"/v1/forget/{rid}/webhooks").json()
    assert [d["status"] for d in rows] == ["delivered"] * 4
    assert rows[0]["attempts"] == 2 and [a["status_code"] for a in rows[0]["log"]] == [500, 200]
    assert all(d["attempts"] == 1 and d["delivered_at"] for d in rows[1:])
    # a tampered body or a stale timestamp does not verify
    g = got[-1]
    assert webhooks.verify_signature(SECRET, g["body"], g["headers"]["Lethe-Timestamp"], g["headers"]["Lethe-Signature"])
    assert not receiver_verifies(SECRET, g["headers"], g["body"].replace(b"no_match", b"legal_exemption"))
    assert not webhooks.verify_signature(SECRET, g["body"], str(int(time.time()) - 3600), g["headers"]["Lethe-Signature"])
    assert not webhooks.verify_signature("wrong-secret", g["body"], g["headers"]["Lethe-Timestamp"],
                                         g["headers"]["Lethe-Signature"])


def test_backoff_then_give_up(client, seeded):
    s = seeded.model_copy(update={"webhook_backoff_s": 60.0, "webhook_max_attempts": 2})
    dead = "http://127.0.0.1:9/nothing-listens-here"
    rid = client.post("/v1/forget", json={"model": MODEL, "subject_id": "bob", "callback_url": dead}).json()["id"]
    assert webhooks.deliver_due(s) == 1
    with session_scope(s.database_url) as db:
        d = webhooks.deliveries_of(db, rid)[0]
        assert d.status == "pending" and d.attempts == 1 and d.last_error
        wait = (d.next_attempt_at - dt.datetime.fromisoformat(d.log[0]["at"])).total_seconds()
        assert 59 <= wait <= 61  # first retry after webhook_backoff_s
    assert webhooks.deliver_due(s) == 0  # not due yet
    with session_scope(s.database_url) as db:
        db.get(WebhookDelivery, d.id).next_attempt_at = d.created_at
    assert webhooks.deliver_due(s) == 1
    row = client.get(f"/v1/forget/{rid}/webhooks").json()[0]
    assert row["status"] == "failed" and row["attempts"] == 2 and len(row["log"]) == 2


def test_callback_url_must_be_http(client):
    for bad in ("ftp://x/y", "not a url", "http://"):
        r = client.post("/v1/forget", json={"model": MODEL, "subject_id": "alice", "callback_url": bad})
        assert r.status_code == 422 and "callback_url" in r.json()["detail"], (bad, r.text)


def test_a_request_consolidated_later_gets_a_signed_forget_consolidated_event(client, seeded, receiver):
    """Served approximately, the request is `completed`; when a consolidation publishes an
    exact version its status does not change, so the portal hears of it by its own event."""
    from worker import driver

    from .conftest import publish

    s = seeded.model_copy(update={"webhook_secret": SECRET, "webhook_backoff_s": 0.0})
    r = client.post("/v1/forget", json={"model": MODEL, "subject_id": "alice", "callback_url": receiver["url"]})
    assert r.status_code == 202, r.text
    rid, job_id = r.json()["id"], r.json()["job_id"]
    quiet = client.post("/v1/forget", json={"model": MODEL, "subject_id": "bob"}).json()  # no callback_url
    with session_scope(s.database_url) as db:
        c = jobs.claim(db, job_id, worker="w1", lease_s=s.job_lease_s)
    publish(s, job_id, c.token, list(c.instance_ids))  # v2, approximate (metrics do not say exact)
    cons = client.post(f"/v1/models/{MODEL}/consolidate").json()
    assert driver.execute_job(cons["id"], settings=s, worker_name="w1") == "completed"
    assert client.get(f"/v1/forget/{rid}").json()["exact_version"] == 3

    for _ in range(10):
        webhooks.deliver_due(s)
    got = receiver["got"]
    assert all(g["verified"] for g in got) and receiver["bad_signatures"] == 0
    bodies = [json.loads(g["body"]) for g in got]
    assert [(b["event"], b["status"]) for b in bodies] == [
        ("forget.status_changed", "queued"), ("forget.status_changed", "running"),
        ("forget.status_changed", "completed"), ("forget.consolidated", "completed")]
    last = bodies[-1]
    assert last["request_id"] == rid and last["previous_status"] == "completed"
    assert last["version_after"] == 2 and last["exact_version"] == 3 and "alice" not in got[-1]["body"].decode()
    assert got[-1]["headers"]["Lethe-Event"] == "forget.consolidated"
    assert receiver_verifies(SECRET, got[-1]["headers"], got[-1]["body"])
    rows = client.get(f"/v1/forget/{rid}/webhooks").json()
    assert [d["event"] for d in rows][-1] == "forget.consolidated" and rows[-1]["status"] == "delivered"
    assert client.get(f"/v1/forget/{quiet['id']}/webhooks").json() == []
