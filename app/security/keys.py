"""API keys: create, revoke, list, authenticate, and the first key of a fresh install.

Every function that writes works inside the caller's transaction and audits what it did
(never the key or its hash). Only ``sha256(key)`` is stored; the plaintext is returned once.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
from typing import Iterable

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from ..db import session_scope, utcnow
from ..errors import LetheError
from . import tenants
from ..tenants.models import Tenant
from .models import ApiKey
from .scopes import SCOPES, check_scopes

log = logging.getLogger("lethe.security")

KEY_PREFIX = "lethe_"
MIN_KEY_LENGTH = 24


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def unauthorized(code: str, detail: str) -> LetheError:
    """A 401 answer, with the ``WWW-Authenticate`` challenge RFC 9110 asks of it."""
    return LetheError(401, code, detail, {"WWW-Authenticate": 'Bearer realm="lethe"'})


# --- lifecycle ---------------------------------------------------------------------------------

def create_key(session: Session, name: str, scopes: Iterable[str], *, actor: str = "cli",
               tenant: str = tenants.DEFAULT) -> tuple[str, str]:
    """Create a key of ``tenant`` inside the caller's transaction. Returns (key_id,
    plaintext); the plaintext is not stored anywhere and cannot be shown again."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    return _insert(session, name, scopes, plaintext, actor, tenant), plaintext


def _insert(session: Session, name: str, scopes: Iterable[str], plaintext: str, actor: str,
            tenant: str = tenants.DEFAULT) -> str:
    from ..audit import service as audit

    name = name.strip()
    if not (1 <= len(name) <= 128):
        raise ValueError("a key name must be 1 to 128 characters")
    scopes = check_scopes(scopes)
    from ..tenants import service as tenant_policy

    tenant = tenant_policy.ensure(session, tenant).name  # a new tenant starts with no models granted
    key_id = "k_" + secrets.token_hex(6)
    session.add(ApiKey(id=key_id, name=name, key_hash=hash_key(plaintext), prefix=plaintext[:12], scopes=scopes,
                       created_at=utcnow(), tenant=tenant))
    session.flush()
    audit.append(session, actor=actor, action="key.created", payload={"key_id": key_id, "name": name, "scopes": scopes,
                                                                                "tenant": tenant})
    return key_id


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


def authenticate(session: Session, plaintext: str):
    """The key (id, name, scopes, tenant, revoked_at, and its tenant's policy columns:
    ``tenant_found``, ``all_models``, ``methods``, ``max_open_requests``,
    ``max_requests_per_day``) for a presented key; a 401 LetheError when unknown or revoked. Every authenticated request runs it: a Core query on the
    session's connection (no ORM identity map), about half the CPU of loading the entity."""
    key = session.connection().execute(_BY_HASH, {"h": hash_key(plaintext)}).first()
    if key is None:
        raise unauthorized("invalid_api_key", "invalid API key: no active key matches the bearer token")
    if key.revoked_at is not None:
        raise unauthorized("revoked_api_key", f"API key {key.id} ({key.name}) was revoked at {key.revoked_at.isoformat()}")
    return key


_T = ApiKey.__table__
_TN = Tenant.__table__
# with the key, its tenant's policy row (the LEFT JOIN's ``tenant_found`` is NULL when the tenant
# has none): a portal's submission reads it next, and this saves it a query (issue 16)
_BY_HASH = (select(_T.c.id, _T.c.name, _T.c.scopes, _T.c.tenant, _T.c.revoked_at, _TN.c.name.label("tenant_found"),
                   _TN.c.all_models, _TN.c.methods, _TN.c.max_open_requests, _TN.c.max_requests_per_day)
            .select_from(_T.outerjoin(_TN, _TN.c.name == _T.c.tenant)).where(_T.c.key_hash == bindparam("h")))


# --- first key of a fresh install ----------------------------------------------------------------

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
            _register_given_key(db, settings.bootstrap_admin_key)
            return None
        if db.execute(select(ApiKey.id).limit(1)).first() is not None:
            return None
        key_id, plain = create_key(db, "admin", SCOPES, actor="bootstrap")
        path = admin_key_path(settings)
        _write_once(path, plain)  # inside the transaction: no key is stored that nobody could read
    log.warning("first start: created admin API key %s (all scopes) and wrote it to %s (mode 0600). "
                "Send it as 'Authorization: Bearer <key>'; create scoped keys with "
                "'lethe keys create' and revoke this one.", key_id, path)
    return path


def _register_given_key(db: Session, plain: str) -> None:
    if len(plain) < MIN_KEY_LENGTH:
        raise ValueError(f"LETHE_BOOTSTRAP_ADMIN_KEY must be at least {MIN_KEY_LENGTH} characters")
    if db.execute(select(ApiKey.id).where(ApiKey.key_hash == hash_key(plain))).first() is None:
        key_id = _insert(db, "bootstrap-admin", SCOPES, plain, actor="bootstrap")
        log.info("registered LETHE_BOOTSTRAP_ADMIN_KEY as API key %s (all scopes)", key_id)


def _write_once(path: str, secret: str) -> None:
    """Write ``secret`` to a new file readable by its owner only (mode 0600 from creation)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
