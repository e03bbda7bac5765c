"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright with
``executable_path``; Playwright's own browser download is never used). The operator logs in
with ``/dashboard?key=<key with audit:read>``; the page loads, shows a request that was just
completed (live, without a manual reload), the job's progress bar moves, the chart is drawn,
and a screenshot is left in build/artifacts/. The login itself is also checked over plain
HTTP (no browser needed)."""
from __future__ import annotations

import os

import httpx
import pytest

from app.dashboard.router import COOKIE
from app.db import session_scope
from app.jobs import service as jobs

from .conftest import MODEL, bearer, complete_request, make_key, publish, submit_and_claim

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.path.join(ROOT, "build", "artifacts")  # git-ignored
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
METRICS = [{"ua": 100.0, "ra": 97.0, "ta": 91.0, "mia_efficacy": 35.0},
           {"ua": 100.0, "ra": 95.5, "ta": 89.5, "mia_efficacy": 48.0}]


@pytest.fixture
def browser_page(require_tool, tmp_path):
    chromium = require_tool("/usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=chromium,
                                                   headless=True, args=CHROMIUM_ARGS,
                                                   viewport={"width": 1400, "height": 1000})
        try:
            yield ctx, ctx.new_page()
        finally:
            ctx.close()


def _heartbeat(settings, job_id, token, fraction):
    with session_scope(settings.database_url) as db:
        assert jobs.heartbeat(db, job_id, token, stage="unlearning", fraction=fraction)


def test_dashboard_in_headless_chromium(live_server, seeded, browser_page):
    from playwright.sync_api import expect

    ctx, page = browser_page
    complete_request(seeded, "alice", metrics=METRICS[0])
    rid, job_id, token, ids = submit_and_claim(seeded, "bob")  # a job now running
    _heartbeat(seeded, job_id, token, 0.25)
    api_key = make_key(seeded, ["audit:read"], name="auditor")  # what the dashboard needs, nothing more
    assert ctx.request.get(f"{live_server}/dashboard").status == 401  # this browser has no key yet
    assert not ctx.cookies()
    console_errors = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{live_server}/dashboard?key={api_key}")
    assert page.url == f"{live_server}/dashboard"  # the key left the address bar ...
    cookie = next(c for c in ctx.cookies() if c["name"] == COOKIE)  # ... for an HttpOnly cookie
    assert cookie["value"].startswith("lsess.") and api_key not in cookie["value"]  # a session, not the key
    assert cookie["httpOnly"] and cookie["path"] == "/dashboard" and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # not readable by scripts

    row = page.locator(f'tr[data-request="{rid}"]')
    expect(row).to_contain_text("running")
    bar = page.locator(f'tr[data-job="{job_id}"] .bar span')
    assert bar.evaluate("e => e.style.width") == "25%"

    # live progress: the page polls live.json and moves the bar without a reload
    _heartbeat(seeded, job_id, token, 0.75)
    expect(page.locator(f'tr[data-job="{job_id}"] .pct')).to_have_text("75%", timeout=15_000)
    assert bar.evaluate("e => e.style.width") == "75%"

    # the job completes: the page notices, reloads, and shows the request completed, v2 -> v3
    publish(seeded, job_id, token, ids, metrics=METRICS[1], seed=3)
    expect(row.locator(".status")).to_have_text("completed", timeout=20_000)
    expect(row).to_contain_text("v2 → v3")
    expect(page.locator(f'tr[data-job="{job_id}"] .jstatus')).to_have_text("completed")
    expect(page.locator("#audit")).to_contain_text("verified")

    # the chart is rendered: the four series, drawn with a real size, one point per version
    svg = page.locator(f'section[data-model="{MODEL}"] svg.chart')
    box = svg.bounding_box()
    assert box and box["width"] >= 400 and box["height"] >= 150
    for key in ("ua", "ra", "ta", "mia_efficacy"):
        line = svg.locator(f'polyline[data-series="{key}"]')
        expect(line).to_have_count(1)
        lb = line.bounding_box()
        assert lb and lb["width"] > 100, (key, lb)
        expect(svg.locator(f'circle[data-series="{key}"]')).to_have_count(2)  # v2 and v3 (v1 has no metrics)
    assert not console_errors, console_errors

    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "dashboard.png")
    page.screenshot(path=shot, full_page=True)
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(shot) > 20_000

    # filters work in the browser too
    page.select_option('select[name="status"]', "queued")
    page.wait_for_url(f"{live_server}/dashboard?status=queued&model=")
    expect(page.locator("#requests")).to_contain_text("no requests match these filters")
    live = httpx.get(f"{live_server}/dashboard/live.json", headers=bearer(api_key)).json()
    assert live["open_requests"] == {}, live


def test_login_with_a_key_in_the_url(live_server, seeded):
    """Only a valid key with audit:read opens the dashboard and gets the cookie; the cookie
    works for /dashboard only."""
    from app import security

    def login(key):
        return httpx.get(f"{live_server}/dashboard", params={"key": key, "model": MODEL})

    assert httpx.get(f"{live_server}/dashboard").status_code == 401
    portal = make_key(seeded, ["forget:write", "forget:read"], name="portal")
    revoked = make_key(seeded, ["audit:read"], name="gone")
    with session_scope(seeded.database_url) as db:
        gone = next(k for k in security.list_keys(db) if k.name == "gone")
        security.revoke_key(db, gone.id, actor="test")
    for key, status, code in (("lethe_not-a-real-key-000000000000", 401, "invalid_api_key"),
                              (revoked, 401, "revoked_api_key"), (portal, 403, "missing_scope")):
        r = login(key)
        assert (r.status_code, r.json()["code"]) == (status, code) and "set-cookie" not in r.headers, (key, r.text)
    assert "lacks scope audit:read" in login(portal).json()["detail"]

    key = make_key(seeded, ["audit:read"], name="auditor")
    r = login(key)
    assert r.status_code == 303 and r.headers["location"] == f"/dashboard?model={MODEL}"
    assert r.headers["set-cookie"].startswith(f"{COOKIE}=lsess.") and key not in r.headers["set-cookie"]
    with httpx.Client(base_url=live_server, cookies={COOKIE: r.cookies[COOKIE]}) as browser:
        assert browser.get("/dashboard").status_code == 200
        assert browser.get("/dashboard/live.json").status_code == 200
        assert browser.get("/v1/audit/verify").status_code == 401  # the cookie is for the dashboard only
        assert browser.get("/dashboard", params={"key": portal}).status_code == 403  # a new login is checked anew
