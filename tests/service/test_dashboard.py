"""The dashboard, rendered by the gateway (the browser test is test_dashboard_browser.py)."""
from __future__ import annotations

import asyncio
import datetime as dt
import re
import sqlite3

from app.security.pseudonyms import subject_ref
from app.dashboard.router import COOKIE, CookieBearer
from app.dashboard.view import chart
from app.db import session_scope
from app.forget.models import ForgetRequest

from .conftest import MODEL, SECRET, complete_request

METRICS = {"ua": 100.0, "ra": 96.0, "ta": 90.5, "mia_efficacy": 40.0}


def _row(html: str, attr: str, value: str) -> str:
    m = re.search(rf'<tr {attr}="{re.escape(value)}"[^>]*>.*?</tr>', html, re.S)
    assert m, f"no row {attr}={value}"
    return m.group(0)


def test_dashboard_shows_requests_jobs_lineage_and_audit(client, seeded):
    done, job_id = complete_request(seeded, "alice", metrics=METRICS)
    queued = client.post("/v1/forget", json={"model": MODEL, "subject_id": "bob"}).json()["id"]
    late = client.post("/v1/forget", json={"model": MODEL, "instance_ids": ["toy-00007"]}).json()["id"]
    with session_scope(seeded.database_url) as db:
        db.get(ForgetRequest, late).due_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)

    r = client.get("/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    row = _row(html, "data-request", done)
    assert "completed" in row and "v1 → v2" in row
    row = _row(html, "data-request", queued)
    assert "queued" in row and "overdue" not in row and re.search(r'class="days">(30\.0|29\.9)<', row), row
    row = _row(html, "data-request", late)
    assert 'class="overdue"' in row and "(overdue)" in row and "-2.0" in row
    assert re.search(r'data-count="overdue"><b>1</b>', html)
    job = _row(html, "data-job", job_id)
    assert "completed" in job and "width: 100.0%" in job
    # lineage, alias history and a chart with the four series
    assert '<tr data-version="2">' in html and "production" in html
    assert "v1 → v2" in html.split('class="alias-history"')[1]
    for key in ("ua", "ra", "ta", "mia_efficacy"):
        assert f'data-series="{key}"' in html
    assert 'id="audit" class="card ok"' in html and "verified" in html
    # no subject ids, not even their references
    assert "alice" not in html and "bob" not in html and subject_ref(SECRET, "alice") not in html

    # filters
    only_done = client.get("/dashboard", params={"status": "completed"}).text
    assert done in only_done and queued not in only_done and late not in only_done
    none = client.get("/dashboard", params={"model": "other-model"}).text
    assert done not in none and "no requests match these filters" in none

    live = client.get("/dashboard/live.json").json()
    assert {j["id"]: j["status"] for j in live["jobs"]}[job_id] == "completed"
    assert live["open_requests"] == {queued: "queued", late: "queued"}


def test_broken_audit_chain_is_shown(client, seeded):
    complete_request(seeded, "alice", metrics=METRICS)
    con = sqlite3.connect(seeded.database_url[len("sqlite:///"):])
    con.execute("DROP TRIGGER audit_events_no_update")
    con.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3")
    con.commit()
    con.close()
    html = client.get("/dashboard").text
    assert 'id="audit" class="card bad"' in html and "BROKEN" in html and "first bad event #3" in html


def test_key_goes_into_an_httponly_cookie_and_out_of_the_url(client):
    r = client.get("/dashboard", params={"key": "lk_secret", "status": "queued"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard?status=queued"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=lsess.") and "lk_secret" not in cookie  # a session, not the key
    low = cookie.lower()
    assert "httponly" in low and "samesite=strict" in low and "path=/dashboard" in low and "max-age=" in low


def test_cookie_becomes_a_bearer_token_on_dashboard_paths_only():
    seen = {}

    async def app(scope, receive, send):
        seen[scope["path"]] = dict(scope["headers"]).get(b"authorization")

    mw = CookieBearer(app)
    cookie = (b"cookie", f"a=1; {COOKIE}=lk_123".encode())
    for path, headers in (("/dashboard", [cookie]), ("/dashboard/live.json", [cookie]), ("/v1/forget", [cookie]),
                          ("/dashboardx", [cookie]), ("/dashboard/live.json", [cookie, (b"authorization", b"Bearer x")])):
        seen.clear()
        asyncio.run(mw({"type": "http", "path": path, "headers": headers}, None, None))
        expected = {"/dashboard": b"Bearer lk_123", "/v1/forget": None, "/dashboardx": None}.get(path, b"Bearer lk_123")
        if len(headers) == 2:
            expected = b"Bearer x"  # an explicit Authorization header wins
        assert seen[path] == expected, (path, seen)


def test_chart_geometry():
    versions = [{"version": 1, "metrics": {"ta": 90.0}}, {"version": 2, "metrics": {"ua": 100.0, "ta": 80.0}},
                {"version": 3, "metrics": None}, {"version": 4, "metrics": {"ua": 50.0, "ta": 70.0}}]
    c = chart(versions, width=300, height=140)
    s = {x["key"]: x for x in c["series"]}
    # forget accuracy = 100 - UA; plotted where recorded, a gap breaks the line
    assert [p["value"] for p in s["ua"]["points"]] == [0.0, 50.0]
    assert s["ua"]["polylines"] == []  # two isolated points, no segment
    assert len(s["ta"]["polylines"]) == 1 and len(s["ta"]["points"]) == 3
    ys = [p["y"] for p in s["ta"]["points"]]
    assert ys == sorted(ys)  # falling accuracy goes down the chart (SVG y grows downwards)
    assert s["ra"]["points"] == [] and c["has_points"]


def test_dashboard_shows_subscriptions_and_deliveries_of_both_kinds(client, seeded):
    """Registry-event subscriptions and the latest deliveries, request webhooks beside them."""
    from app.events import service as events
    from app.events.models import Subscription
    from app.registry import service as registry

    with session_scope(seeded.database_url) as db:
        db.add(Subscription(id="sub-00000001", tenant=None, model_name=MODEL, url="https://serving.example.com/hooks",
                            events=list(events.MODEL_EVENTS), created_by="test"))
        db.flush()
        events.alias_moved(db, MODEL, "production", None, registry.get_version(db, MODEL, 1), actor="test")
    rid = client.post("/v1/forget", json={"model": MODEL, "subject_id": "bob"}).json()["id"]
    with session_scope(seeded.database_url) as db:  # a portal's webhook of that request (as status_changed records it)
        from app.webhooks import service as webhooks

        req = db.get(ForgetRequest, rid)
        req.callback_url = "https://portal.example.com/cb"
        webhooks._record(db, req, webhooks.EVENT, webhooks.request_payload(req, None))
    html = client.get("/dashboard").text
    row = _row(html, "data-subscription", "sub-00000001")
    assert MODEL in row and "operators" in row and "https://serving.example.com:443" in row and "pending 1" in row
    deliveries = html.split('id="deliveries"')[1].split("</table>")[0]
    assert "model.alias_moved" in deliveries and "subscription sub-0000" in deliveries
    assert "forget.status_changed" in deliveries and f"request {rid[:8]}" in deliveries
    assert "https://portal.example.com:443" in deliveries


def test_dashboard_lists_retrain_orders_with_due_date_and_escalation(client, seeded):
    """Orders to the customers' pipelines: status, due date and days left, escalation (with a
    card counting the escalated ones still waiting), refused uploads and the version published."""
    from app.jobs.sweeper import sweep_and_dispatch
    from app.registry.models import RetrainOrder

    now = dt.datetime.now(dt.timezone.utc)

    def order(oid, status, due_days, **kw):
        return RetrainOrder(id=oid, model_name=MODEL, status=status, base_version=1, reason="debt due",
                            snapshot_path=f"orders/{oid}/retained.parquet", snapshot_sha256="0" * 64, rows=10,
                            forget_ids=["toy-00001", "toy-00002"], recipe={"trainer": "external"}, token_sha256="",
                            due_at=now + dt.timedelta(days=due_days), created_at=now, **{"refusals": [], **kw})

    with session_scope(seeded.database_url) as db:
        db.add_all([order("order-calm", "open", 6.0),
                    order("order-near", "claimed", 0.5,
                          refusals=[{"at": now.isoformat(), "reason": "the erased rows look trained on", "metrics": None}]),
                    order("order-done", "fulfilled", 3.0, fulfilled_at=now, version=4)])
    html = client.get("/dashboard").text
    assert re.search(r'data-count="orders-escalated"><b>0<', html)
    row = _row(html, "data-order", "order-calm")
    assert "open" in row and re.search(r'class="days">(6\.0|5\.9)<', row) and "escalated" not in row, row
    # the sweeper escalates the order whose due date is within LETHE_ORDER_ESCALATE_BEFORE_S (a day)
    sweep_and_dispatch(seeded, type("D", (), {"dispatch": lambda self, job_id: None})())
    html = client.get("/dashboard").text
    assert re.search(r'class="card alert" data-count="orders-escalated"><b>1<', html)
    row = _row(html, "data-order", "order-near")
    assert 'data-escalated="true"' in row and "claimed" in row and "escalated 20" in row, row
    assert "the erased rows look trained on" in row and re.search(r'class="days">0\.[45]<', row), row
    assert "escalated 20" not in _row(html, "data-order", "order-calm")
    row = _row(html, "data-order", "order-done")
    assert "fulfilled" in row and "v4" in row and 'class="days">–<' in row, row
