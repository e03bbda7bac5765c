"""The operators' dashboard: server-rendered HTML (Jinja2) plus one small script that polls
``/dashboard/live.json`` for job progress. No front-end build, no JS library, no external
asset: the page works on a closed network and is one request to render.

Auth: browsers cannot attach a bearer token to a page load, so an operator opens
``/dashboard?key=<api key>`` once. ``CookieBearer`` presents that key as the bearer token of
this one request (a browser sends no Authorization header), so ``require_scope("audit:read")``
checks it like any API call (unknown or revoked: 401; without audit:read: 403; no cookie is
set). Once it passes, the answer sets a cookie holding an expiring **session token** (never
the key; ``session.py``: HttpOnly, SameSite=Strict, Path=/dashboard, Max-Age, Secure behind
TLS) and redirects to the URL without the key (it does not stay in the address bar or
history). From then on ``CookieBearer`` turns that cookie into an ``Authorization: Bearer``
header for ``/dashboard`` paths only, and ``security.principal_of`` accepts a session token
there (and nowhere else) while it is unexpired and its key active. ``/dashboard/logout``
clears the cookie. ``SecurityHeaders`` (``app/main.py``) adds CSP, X-Frame-Options, nosniff
and Referrer-Policy to these pages.
"""
from __future__ import annotations

import os
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from ..deps import SessionDep, SettingsDep
from ..security import require_scope
from ..security import sessions as dashboard_session
from . import view

COOKIE = "lethe_dashboard_session"
PREFIX = "/dashboard"

def _script_hash(path: str) -> str:
    """CSP source for the page's one inline script: 'sha256-<base64>' of its exact text."""
    import base64
    import hashlib
    import re

    with open(path, encoding="utf-8") as f:
        scripts = re.findall(r"<script>(.*?)</script>", f.read(), re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)


CSP = ("default-src 'none'; script-src " + _script_hash(os.path.join(os.path.dirname(__file__), "templates",
                                                                     "dashboard.html"))
       + "; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
         "base-uri 'none'; form-action 'self'")

templates = Jinja2Templates(directory=os.path.join(os.path.dirname(__file__), "templates"))

# behind audit:read; the key arrives as a bearer token or via the cookie CookieBearer turns into one
router = APIRouter(prefix=PREFIX, tags=["dashboard"], include_in_schema=False,
                   dependencies=[Depends(require_scope("audit:read"))])


def _filters(status: str | None, model: str | None) -> tuple[str | None, str | None]:
    status = status if status in view.STATUSES else None
    return status, (model or None)


@router.get("", response_class=HTMLResponse)
def dashboard(request: Request, session: SessionDep, settings: SettingsDep, status: str | None = Query(default=None, max_length=16),
              model: str | None = Query(default=None, max_length=128),
              key: str | None = Query(default=None, max_length=512)):
    if key is not None:  # exchange the key for a session cookie, then drop it from the URL
        rest = {k: v for k, v in (("status", status), ("model", model)) if v}
        resp = RedirectResponse(PREFIX + (f"?{urlencode(rest)}" if rest else ""), status_code=303)
        resp.set_cookie(COOKIE, dashboard_session.issue(settings, request.state.principal.key_id),
                        max_age=int(settings.dashboard_session_ttl_s), httponly=True, samesite="strict",
                        path=PREFIX, secure=dashboard_session.behind_tls(request, settings))
        return resp
    status, model = _filters(status, model)
    data = view.overview(session, status=status, model=model, database_url=settings.database_url)
    return templates.TemplateResponse(request, "dashboard.html", {"d": data}, headers={"Cache-Control": "no-store"})


@router.get("/logout")
def logout():
    resp = RedirectResponse(PREFIX, status_code=303)
    resp.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return resp


@router.get("/live.json")
def live(session: SessionDep):
    return JSONResponse(view.live(session), headers={"Cache-Control": "no-store"})


def _query_key(query_string: bytes) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(query_string.decode("latin-1"), keep_blank_values=False).get("key")
    return values[-1] if values else None


class CookieBearer:
    """ASGI middleware, on ``/dashboard`` paths only, for a request without an Authorization
    header: the login URL ``/dashboard?key=<key>`` presents that key as its bearer token (a
    new login wins over an older cookie); otherwise the dashboard cookie becomes
    ``Authorization: Bearer <cookie value>``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["path"] == PREFIX or scope["path"].startswith(PREFIX + "/")):
            headers = list(scope.get("headers") or [])
            if not any(k == b"authorization" for k, _ in headers):
                token = _query_key(scope.get("query_string") or b"") if scope["path"] == PREFIX else None
                if not token:
                    from http.cookies import SimpleCookie

                    jar = SimpleCookie()
                    for k, v in headers:
                        if k == b"cookie":
                            try:
                                jar.load(v.decode("latin-1"))
                            except Exception:  # noqa: BLE001 - a malformed cookie header is ignored
                                pass
                    token = jar[COOKIE].value if COOKIE in jar and jar[COOKIE].value else None
                if token:
                    try:
                        value = b"Bearer " + token.encode("latin-1")
                    except UnicodeEncodeError:  # not a key; the scope check answers 401
                        value = b"Bearer -"
                    headers.append((b"authorization", value))
                    scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
