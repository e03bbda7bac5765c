"""Access control: API keys with scopes, sent as ``Authorization: Bearer <key>``.

- Keys are 256-bit random tokens (``lethe_...``); only ``sha256(key)`` is stored
  (``api_keys.key_hash``), the plaintext is shown once when the key is created.
- Scopes: ``forget:write`` (portals submit and cancel), ``forget:read`` (poll requests,
  subjects, certificates), ``audit:read`` (auditors), ``models:admin`` (register models,
  move aliases, and the operator actions deny / retry).
- Every route under ``/v1`` depends on ``require_scope(...)``: 401 when the key is missing,
  malformed, unknown or revoked; 403 naming the missing scope. The scopes of each route
  are published in the OpenAPI schema as ``x-required-scopes``.
- ``create_key`` / ``revoke_key`` / ``list_keys`` work inside the caller's transaction and
  audit what they do (never the key or its hash); ``lethe keys ...`` is
  the command line. ``bootstrap_keys`` gives a fresh install its first admin key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import secrets
from typing import Iterable

from fastapi import FastAPI, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import session_scope, utcnow
from ..errors import LetheError
from .models import ApiKey

log = logging.getLogger("lethe.security")

FORGET_WRITE, FORGET_READ, AUDIT_READ, MODELS_ADMIN = "forget:write", "forget:read", "audit:read", "models:admin"
SCOPES: tuple[str, ...] = (FORGET_WRITE, FORGET_READ, AUDIT_READ, MODELS_ADMIN)
KEY_PREFIX = "lethe_"
MIN_KEY_LENGTH = 24

__all__ = ["SCOPES", "FORGET_WRITE", "FORGET_READ", "AUDIT_READ", "MODELS_ADMIN", "ApiKey", "AuthError",
           "Principal", "require_scope", "create_key", "revoke_key", "list_keys", "hash_key", "authenticate",
           "bootstrap_keys", "admin_key_path", "route_scopes", "scoped_routes", "install"]


class AuthError(LetheError):
    """401 (no valid key; answered with ``WWW-Authenticate``) or 403 (key lacks the scope)."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(status, code, detail, {"WWW-Authenticate": 'Bearer realm="lethe"'} if status == 401 else None)


@dataclasses.dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    scopes: tuple[str, ...]

    @property
    def actor(self) -> str:
        """How the audit log names whoever used this key."""
        return f"key:{self.key_id}:{self.name}"[:128]


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def _check_scopes(scopes: Iterable[str]) -> list[str]:
    out: list[str] = []
    for s in scopes:
        s = s.strip()
        if not s:
            continue
        if s not in SCOPES:
            raise ValueError(f"unknown scope {s!r}; scopes are {', '.join(SCOPES)}")
        if s not in out:
            out.append(s)
    if not out:
        raise ValueError(f"a key needs at least one scope of {', '.join(SCOPES)}")
    return out


def _insert(session: Session, name: str, scopes: Iterable[str], plaintext: str, actor: str) -> str:
    from ..audit import service as audit

    name = name.strip()
    if not (1 <= len(name) <= 128):
        raise ValueError("a key name must be 1 to 128 characters")
    scopes = _check_scopes(scopes)
    key_id = "k_" + secrets.token_hex(6)
    session.add(ApiKey(id=key_id, name=name, key_hash=hash_key(plaintext), prefix=plaintext[:12], scopes=scopes,
                       created_at=utcnow()))
    session.flush()
    audit.append(session, actor=actor, action="key.created", payload={"key_id": key_id, "name": name, "scopes": scopes})
    return key_id


def create_key(session: Session, name: str, scopes: Iterable[str], *, actor: str = "cli") -> tuple[str, str]:
    """Create a key inside the caller's transaction. Returns (key_id, plaintext); the
    plaintext is not stored anywhere and cannot be shown again."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    return _insert(session, name, scopes, plaintext, actor), plaintext


def revoke_key(session: Session, key_id: str, *, actor: str = "cli") -> ApiKey:
    """Revoke a key (the row stays, for the record). Raises KeyError for an unknown id."""
    from ..audit import service as audit

    key = session.get(ApiKey, key_id)
    if key is None:
        raise KeyError(f"no API key with id {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
        audit.append(session, actor=actor, action="key.revoked", payload={"key_id": key.id, "name": key.name})
    return key


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.execute(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)).scalars())


def authenticate(session: Session, plaintext: str) -> ApiKey:
    """The key row for a presented key; AuthError(401) when unknown or revoked."""
    key = session.execute(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext))).scalar_one_or_none()
    if key is None:
        raise AuthError(401, "invalid_api_key", "invalid API key: no active key matches the bearer token")
    if key.revoked_at is not None:
        raise AuthError(401, "revoked_api_key",
                        f"API key {key.id} ({key.name}) was revoked at {key.revoked_at.isoformat()}")
    return key


_bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                     description="API key with scopes: `Authorization: Bearer <key>`")


def require_scope(scope: str, *alternatives: str):
    """A FastAPI dependency: the request must carry an active key holding ``scope`` (or one
    of ``alternatives``). Returns the ``Principal``, so a route can record who acted."""
    allowed = tuple(_check_scopes((scope, *alternatives)))

    def dependency(request: Request,
                   _credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Principal:
        header = request.headers.get("authorization")
        if not header:
            raise AuthError(401, "missing_api_key",
                            "missing API key: send it as 'Authorization: Bearer <key>'")
        parts = header.split(None, 1)
        if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1].strip():
            raise AuthError(401, "malformed_authorization",
                            "the Authorization header must be 'Bearer <key>'")
        with session_scope(request.app.state.settings.database_url) as db:
            key = authenticate(db, parts[1].strip())
            principal = Principal(key.id, key.name, tuple(key.scopes))
        if not any(s in principal.scopes for s in allowed):
            need = allowed[0] if len(allowed) == 1 else " or ".join(allowed)
            raise AuthError(403, "missing_scope",
                            f"API key {principal.key_id} ({principal.name}) lacks scope {need}; "
                            f"it has: {', '.join(principal.scopes)}")
        request.state.principal = principal
        return principal

    dependency.required_scopes = allowed  # type: ignore[attr-defined]
    dependency.__name__ = "require_scope_" + "_or_".join(s.replace(":", "_") for s in allowed)
    return dependency


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


def install(app: FastAPI) -> None:
    """Publish each route's scopes in the OpenAPI schema (``x-required-scopes``); AuthError
    is a LetheError, answered by ``app.errors``."""

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


def scoped_routes(app: FastAPI):
    """(path, method, scopes or None) for every API route, included routers flattened."""
    from fastapi import routing

    for ctx in routing.iter_route_contexts(app.routes):
        if isinstance(ctx.original_route, APIRoute):
            scopes = route_scopes(ctx)
            for method in sorted(ctx.methods or ()):
                yield ctx.path_format, method, scopes


# --- first key of a fresh install ----------------------------------------------------------

def admin_key_path(settings) -> str:
    """Where the first admin key is written: LETHE_ADMIN_KEY_FILE, else ``admin.key`` next
    to the registry directory (``./var/admin.key`` by default)."""
    if settings.admin_key_file:
        return settings.admin_key_file
    return os.path.join(os.path.dirname(os.path.abspath(settings.registry_dir)), "admin.key")


def bootstrap_keys(settings) -> str | None:
    """Give a fresh install its first key (all scopes). Two ways:

    - ``LETHE_BOOTSTRAP_ADMIN_KEY`` set: that value (at least 24 characters) is registered as
      key ``bootstrap-admin`` unless a key with the same hash exists (idempotent; revoke
      it with ``lethe keys revoke``);
    - otherwise, when the database holds no key at all: a random admin key is created and
      written once to ``admin_key_path(settings)`` with mode 0600.

    Returns the path written, or None."""
    with session_scope(settings.database_url) as db:
        if settings.bootstrap_admin_key:
            plain = settings.bootstrap_admin_key
            if len(plain) < MIN_KEY_LENGTH:
                raise ValueError(f"LETHE_BOOTSTRAP_ADMIN_KEY must be at least {MIN_KEY_LENGTH} characters")
            if db.execute(select(ApiKey.id).where(ApiKey.key_hash == hash_key(plain))).first() is None:
                key_id = _insert(db, "bootstrap-admin", SCOPES, plain, actor="bootstrap")
                log.info("registered LETHE_BOOTSTRAP_ADMIN_KEY as API key %s (all scopes)", key_id)
            return None
        if db.execute(select(ApiKey.id).limit(1)).first() is not None:
            return None
        key_id, plain = create_key(db, "admin", SCOPES, actor="bootstrap")
        path = admin_key_path(settings)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(plain + "\n")
    log.warning("first start: created admin API key %s (all scopes) and wrote it to %s (mode 0600). "
                "Send it as 'Authorization: Bearer <key>'; create scoped keys with "
                "'lethe keys create' and revoke this one.", key_id, path)
    return path
