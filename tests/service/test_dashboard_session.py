"""Issue 15 finding 8: the dashboard cookie is an expiring session (not the raw key), Secure
behind a trusted TLS proxy; CSP / X-Frame-Options / nosniff / Referrer-Policy; /metrics
behind a scope or on a separate listener."""
import base64
import hashlib
import re
import socket
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from app import security
from app.security import sessions as dashboard_session
from app.dashboard.router import COOKIE
from app.db import session_scope
from app.main import create_app

from .conftest import bearer, make_key


@pytest.fixture
def app_client(seeded, dispatcher):
    def make(**kw):
        s = seeded.model_copy(update=kw)
        return s, TestClient(create_app(s, dispatcher=dispatcher))
    return make


def _login(c, key, **headers):
    r = c.get("/dashboard", params={"key": key}, headers=headers, follow_redirects=False)
    assert r.status_code == 303, r.text
    return r


def test_the_cookie_is_an_expiring_session_not_the_key(app_client):
    s, c = app_client(dashboard_session_ttl_s=600)
    with c:
        key = make_key(s, ["audit:read"], name="auditor")
        r = _login(c, key)
        cookie = r.headers["set-cookie"]
        token = r.cookies[COOKIE]
        assert key not in cookie and token.startswith("lsess.")
        low = cookie.lower()
        assert "httponly" in low and "samesite=strict" in low and "path=/dashboard" in low and "max-age=600" in low
        assert "secure" not in low  # plain http, no trusted proxy
        c.cookies.clear()
        jar = {COOKIE: token}
        assert c.get("/dashboard", cookies=jar).status_code == 200
        assert c.get("/dashboard/live.json", cookies=jar).status_code == 200
        # the token is not an API key: refused outside /dashboard, even as a bearer token
        assert c.get("/v1/audit/verify", headers=bearer(token)).status_code == 401
        # tampered, expired: refused
        bad = token[:-1] + ("0" if token[-1] != "0" else "1")
        assert c.get("/dashboard/live.json", cookies={COOKIE: bad}).json()["code"] == "session_expired"
        key_id = token.split(".")[1]
        old = dashboard_session.issue(s, key_id, now=time.time() - 601)
        assert c.get("/dashboard/live.json", cookies={COOKIE: old}).status_code == 401
        # revoking the key ends its sessions
        with session_scope(s.database_url) as db:
            security.revoke_key(db, key_id, actor="test")
        assert c.get("/dashboard/live.json", cookies=jar).json()["code"] == "revoked_api_key"
        # logout clears the cookie
        out = c.get("/dashboard/logout", headers=bearer(make_key(s, ["audit:read"])), follow_redirects=False)
        assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]


def test_secure_cookie_behind_a_trusted_tls_proxy_only(app_client):
    s, c = app_client(trusted_proxies="10.0.0.0/8,testclient")
    with c:
        key = make_key(s, ["audit:read"])
        assert "secure" in _login(c, key, **{"X-Forwarded-Proto": "https"}).headers["set-cookie"].lower()
        assert "secure" not in _login(c, key).headers["set-cookie"].lower()
    s, c = app_client(trusted_proxies="10.0.0.0/8")  # the client is not a trusted proxy: header ignored
    with c:
        key = make_key(s, ["audit:read"])
        assert "secure" not in _login(c, key, **{"X-Forwarded-Proto": "https"}).headers["set-cookie"].lower()


def test_security_headers(client):
    page = client.get("/dashboard")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    scripts = re.findall(r"<script>(.*?)</script>", page.text, re.S)
    assert scripts
    for text in scripts:  # the page's inline script is exactly what the CSP allows
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    for r in (page, client.get("/v1/models"), client.get("/healthz")):
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"


def test_metrics_need_a_scope_or_a_separate_listener(app_client):
    s, c = app_client()
    with c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=bearer(make_key(s, ["forget:write"]))).status_code == 403
        ok = c.get("/metrics", headers=bearer(make_key(s, ["metrics:read"], name="prometheus")))
        assert ok.status_code == 200 and "lethe_http_requests_total" in ok.text
    s, c = app_client(metrics_open=True)
    with c:
        assert c.get("/metrics").status_code == 200
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s, c = app_client(metrics_bind=f"127.0.0.1:{port}")
    with c:
        assert c.get("/metrics", headers=bearer(make_key(s))).status_code == 404  # not on the API port
        r = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200 and "lethe_" in r.text
