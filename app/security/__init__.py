"""Access control: API keys with scopes, sent as ``Authorization: Bearer <key>``.

- Keys are 256-bit random tokens (``lethe_...``); only ``sha256(key)`` is stored
  (``api_keys.key_hash``), the plaintext is shown once when the key is created.
- Scopes (``scopes.py``): ``forget:write`` (portals submit and cancel), ``forget:read``
  (poll requests, certificates), ``subjects:read`` (what the catalogue holds for a subject), ``audit:read`` (auditors), ``models:admin``
  (register models, move aliases, and the operator actions deny / retry), ``metrics:read``
  (Prometheus), ``models:read`` (serving systems: registry reads and weights downloads of the
  models granted to the key's tenant, nothing of requests or subjects).
- Every route under ``/v1`` depends on ``require_scope(...)`` (``guard.py``): 401 when the
  key is missing, malformed, unknown or revoked; 403 naming the missing scope. The scopes of
  each route are published in the OpenAPI schema as ``x-required-scopes``.
- ``create_key`` / ``revoke_key`` / ``list_keys`` (``keys.py``) work inside the caller's
  transaction and audit what they do (never the key or its hash); ``lethe keys ...`` is the
  command line. ``bootstrap_keys`` gives a fresh install its first admin key.
"""
from __future__ import annotations

from .guard import (Principal, install, optional_principal, require_scope, require_scope_on_loop, route_scopes,
                    scoped_routes)
from .keys import (KEY_PREFIX, MIN_KEY_LENGTH, admin_key_path, authenticate, bootstrap_keys, create_key, hash_key,
                   list_keys, revoke_key)
from .models import ApiKey
from .scopes import AUDIT_READ, FORGET_READ, FORGET_WRITE, METRICS_READ, MODELS_ADMIN, MODELS_READ, SCOPES, SUBJECTS_READ

__all__ = ["SCOPES", "FORGET_WRITE", "FORGET_READ", "SUBJECTS_READ", "AUDIT_READ", "MODELS_ADMIN", "METRICS_READ", "MODELS_READ", "optional_principal", "KEY_PREFIX", "MIN_KEY_LENGTH",
           "ApiKey", "Principal", "require_scope", "require_scope_on_loop", "create_key", "revoke_key", "list_keys", "hash_key",
           "authenticate", "bootstrap_keys", "admin_key_path", "route_scopes", "scoped_routes", "install"]
