"""The scope check of every ``/v1`` route, and the scopes published in OpenAPI.

``require_scope(scope, ...)`` is a FastAPI dependency that reads the request in three
steps: the bearer token from the ``Authorization`` header (401 when missing or malformed),
the key it names (401 when unknown or revoked), the scope the route needs (403 naming it).
"""
from __future__ import annotations

import dataclasses

from fastapi import FastAPI, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..db import session_scope
from ..errors import LetheError
from .keys import authenticate, unauthorized
from .scopes import check_scopes


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the key that authenticated the request."""

    key_id: str
    name: str
    scopes: tuple[str, ...]

    @property
    def actor(self) -> str:
        """How the audit log names whoever used this key."""
        return f"key:{self.key_id}:{self.name}"[:128]


# only for the OpenAPI schema ("ApiKey" security scheme); the header is read by bearer_token
_bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                     description="API key with scopes: `Authorization: Bearer <key>`")


def require_scope(scope: str, *alternatives: str):
    """A FastAPI dependency: the request must carry an active key holding ``scope`` (or one
    of ``alternatives``). Returns the ``Principal``, so a route can record who acted."""
    allowed = tuple(check_scopes((scope, *alternatives)))

    def dependency(request: Request,
                   _credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Principal:
        principal = principal_of(request, bearer_token(request))
        check_allowed(principal, allowed)
        request.state.principal = principal
        return principal

    dependency.required_scopes = allowed  # type: ignore[attr-defined]
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


def principal_of(request: Request, token: str) -> Principal:
    """Step 2: the active key the token names (its own short transaction)."""
    with session_scope(request.app.state.settings.database_url) as db:
        key = authenticate(db, token)
        return Principal(key.id, key.name, tuple(key.scopes))


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
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
