"""The scope check of every ``/v1`` route, and the scopes published in OpenAPI.

``require_scope(scope, ...)`` is a FastAPI dependency that reads the request in three
steps: the bearer token from the ``Authorization`` header (401 when missing or malformed),
the key it names (401 when unknown or revoked), the scope the route needs (403 naming it).
"""
from __future__ import annotations

import dataclasses

from fastapi import Depends, FastAPI, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from ..db import read_scope
from ..deps import RequestDb, request_db, request_session
from ..errors import LetheError
from . import sessions as dashboard_session
from . import ratelimit, tenants
from .keys import authenticate, unauthorized
from .models import ApiKey
from .scopes import check_scopes


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the key that authenticated the request."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    tenant: str = tenants.DEFAULT
    # the tenant's policy row as read with the key in the request's own transaction: None when
    # not read that way; (row,) when read, row None when the tenant has no row (app/tenants)
    tenant_row: tuple | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def sees_tenant(self) -> str | None:
        """The tenant this caller's forget reads are limited to; None for operators and
        auditors, who see every tenant (app/security/tenants.py)."""
        return tenants.visible_tenant(self.tenant, self.scopes)

    @property
    def caller(self) -> str:
        """Who rate limits count (ratelimit.py): a tenant's keys share one bucket (a second
        key must not double a portal's allowance); keys of the default tenant count apart."""
        return f"tenant:{self.tenant}" if self.tenant != tenants.DEFAULT else f"key:{self.key_id}"

    @property
    def actor(self) -> str:
        """How the audit log names whoever used this key."""
        return f"key:{self.key_id}:{self.name}"[:128]


# only for the OpenAPI schema ("ApiKey" security scheme); the header is read by bearer_token
_bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                     description="API key with scopes: `Authorization: Bearer <key>`")


def require_scope(scope: str, *alternatives: str, limit: str | None = None):
    """A FastAPI dependency: the request must carry an active key holding ``scope`` (or one
    of ``alternatives``). Returns the ``Principal``, so a route can record who acted.
    ``limit``: the route's rate-limit class (``ratelimit.SUBMIT`` / ``EXPENSIVE``), counted
    per caller once the key is checked (429 ``rate_limited`` with Retry-After)."""
    allowed = tuple(check_scopes((scope, *alternatives)))

    def dependency(request: Request, session: Session = Depends(request_session),
                   _credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Principal:
        return _admit(request, principal_of(request, bearer_token(request), session), allowed, limit)

    return _named(dependency, allowed, limit)


def require_scope_on_loop(scope: str, *alternatives: str, limit: str | None = None):
    """``require_scope`` for the routes that work through a ``RequestDb`` (app/deps.py: the
    submit and the polls): the key is read in the request's ``RequestDb`` — on Postgres on
    the event loop, with no thread-pool hop. Same steps, same answers."""
    allowed = tuple(check_scopes((scope, *alternatives)))

    async def dependency(request: Request, db: RequestDb = Depends(request_db),
                         _credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Principal:
        token = bearer_token(request)
        return _admit(request, await db.run(_principal_in, request, token), allowed, limit)

    return _named(dependency, allowed, limit)


def require_scope_streaming(scope: str, *alternatives: str):
    """``require_scope`` for routes that stream a long answer (weights downloads): the key is
    read in a short session of its own, not the request's, so the download holds neither a
    connection nor a place at the database gate (app/deps.py) while its bytes go out.
    Same steps, same answers."""
    allowed = tuple(check_scopes((scope, *alternatives)))

    def dependency(request: Request,
                   _credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Principal:
        return _admit(request, principal_of(request, bearer_token(request)), allowed, None)

    return _named(dependency, allowed, None)


def _principal_in(session: Session, request: Request, token: str) -> Principal:
    return principal_of(request, token, session)


def _admit(request: Request, principal: Principal, allowed: tuple[str, ...], limit: str | None) -> Principal:
    """Steps 3 and 4: the scope, the rate limit."""
    check_allowed(principal, allowed)
    request.state.principal = principal
    if limit:
        check_rate(request, principal, limit)
    return principal


def _named(dependency, allowed: tuple[str, ...], limit: str | None):
    dependency.required_scopes = allowed  # type: ignore[attr-defined]
    dependency.rate_limit = limit  # type: ignore[attr-defined]
    dependency.__name__ = "require_scope_" + "_or_".join(s.replace(":", "_") for s in allowed)
    return dependency


def bearer_token(request: Request) -> str:
    """Step 1: the key from ``Authorization: Bearer <key>``."""
    header = request.headers.get("authorization")
    if not header:
        raise unauthorized("missing_api_key", "missing API key: send it as 'Authorization: Bearer <key>'")
    parts = header.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1].strip():
        raise unauthorized("malformed_authorization", "the Authorization header must be 'Bearer <key>'")
    return parts[1].strip()


def principal_of(request: Request, token: str, session: Session | None = None) -> Principal:
    """Step 2: the active key the token names. On ``/dashboard`` paths the token may also be
    a dashboard session (app/security/sessions.py).

    On Postgres the key is read in the request's own session (``session``, the one its
    route uses: one connection checkout, one transaction per request, which matters on the
    submit path, issue 16). On SQLite a transaction that begins in the request's session
    takes the database-wide write lock (BEGIN IMMEDIATE) until the response, so the key is
    read in a short read-only session instead."""
    settings = request.app.state.settings
    if session is not None and session.get_bind().dialect.name == "postgresql":
        return _principal(request, settings, session, token, own_transaction=True)
    with read_scope(settings.database_url) as db:
        return _principal(request, settings, db, token)


def _principal(request: Request, settings, db: Session, token: str, own_transaction: bool = False) -> Principal:
    if dashboard_session.is_session(token) and _dashboard_path(request.url.path):
        key = _session_key(db, settings, token)
        return Principal(key.id, key.name, tuple(key.scopes), key.tenant or tenants.DEFAULT)
    key = authenticate(db, token)
    row = None
    if own_transaction and key.tenant:  # what the tenant's policy reads, read in the same transaction
        row = (key if key.tenant_found is not None else None,)
    return Principal(key.id, key.name, tuple(key.scopes), key.tenant or tenants.DEFAULT, row)


def optional_principal(request: Request) -> Principal | None:
    """For open routes that say more to a known key (``/readyz``): None instead of 401."""
    if not request.headers.get("authorization"):
        return None
    try:
        return principal_of(request, bearer_token(request))
    except LetheError:
        return None


def _dashboard_path(path: str) -> bool:
    return path == "/dashboard" or path.startswith("/dashboard/")


def _session_key(session, settings, token: str) -> ApiKey:
    """The key behind a dashboard session token: valid, unexpired, key still active."""
    key_id = dashboard_session.key_of(settings, token)
    key = session.get(ApiKey, key_id) if key_id else None
    if key is None:
        raise unauthorized("session_expired", "the dashboard session expired or is invalid: open "
                                              "/dashboard?key=<API key> again")
    if key.revoked_at is not None:
        raise unauthorized("revoked_api_key", f"API key {key.id} ({key.name}) was revoked at "
                                              f"{key.revoked_at.isoformat()}")
    return key


def check_rate(request: Request, principal: Principal, kind: str) -> None:
    """Step 4 on rate-limited routes: one token from the caller's bucket, else 429."""
    limiter = getattr(request.app.state, "limiter", None)
    wait = limiter.take(principal.caller, kind) if limiter is not None else 0
    if wait:
        after = ratelimit.retry_after(wait)
        raise LetheError(429, "rate_limited", f"too many {kind} requests from {principal.caller}; retry in {after} s",
                         {"Retry-After": after})


def check_allowed(principal: Principal, allowed: tuple[str, ...]) -> None:
    """Step 3: the key holds one of the scopes the route accepts, else 403 naming them."""
    if not any(s in principal.scopes for s in allowed):
        need = " or ".join(allowed)
        raise LetheError(403, "missing_scope", f"API key {principal.key_id} ({principal.name}) lacks scope {need}; "
                                               f"it has: {', '.join(principal.scopes)}")


# --- the scopes in the OpenAPI schema -----------------------------------------------------------

def route_scopes(route) -> tuple[str, ...] | None:
    """The scopes a route requires (None: the route is open)."""
    stack = [route.dependant]
    while stack:
        d = stack.pop()
        found = getattr(d.call, "required_scopes", None)
        if found:
            return tuple(found)
        stack.extend(d.dependencies)
    return None


def route_limit(route) -> str | None:
    """The rate-limit class of a route (None: not limited)."""
    stack = [route.dependant]
    while stack:
        d = stack.pop()
        if getattr(d.call, "rate_limit", None):
            return d.call.rate_limit
        stack.extend(d.dependencies)
    return None


def limited_routes(app: FastAPI):
    """(path, method, rate-limit class) for every rate-limited API route."""
    from fastapi import routing

    for ctx in routing.iter_route_contexts(app.routes):
        if isinstance(ctx.original_route, APIRoute):
            kind = route_limit(ctx)
            if kind:
                for method in sorted(ctx.methods or ()):
                    yield ctx.path_format, method, kind


def scoped_routes(app: FastAPI):
    """(path, method, scopes or None) for every API route, included routers flattened."""
    from fastapi import routing

    for ctx in routing.iter_route_contexts(app.routes):
        if isinstance(ctx.original_route, APIRoute):
            scopes = route_scopes(ctx)
            for method in sorted(ctx.methods or ()):
                yield ctx.path_format, method, scopes


def install(app: FastAPI) -> None:
    """Publish each route's scopes in the OpenAPI schema (``x-required-scopes``, and a
    sentence in its description)."""
    default_openapi = app.openapi

    def openapi() -> dict:
        schema = default_openapi()  # cached by FastAPI; rebuilt when routes change
        if not schema.get("x-scopes-annotated"):
            schema["x-scopes-annotated"] = True
            for path, method, scopes in scoped_routes(app):
                op = schema.get("paths", {}).get(path, {}).get(method.lower())
                if op is not None and scopes:
                    op["x-required-scopes"] = list(scopes)
                    op["description"] = (op.get("description") or "") + \
                        f"\n\nRequires an API key with scope: {' or '.join(scopes)}."
            for path, method, kind in limited_routes(app):
                op = schema.get("paths", {}).get(path, {}).get(method.lower())
                if op is not None:
                    op["x-rate-limit"] = kind
                    op.setdefault("responses", {})["429"] = {
                        "description": f"rate limited ({kind} class): retry after Retry-After seconds",
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}}}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
