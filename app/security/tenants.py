"""Tenants: every API key belongs to one (``lethe keys create --tenant T``; ``default``
otherwise) and every forget request to the tenant of the key that submitted it.

A ``forget:read``/``forget:write`` caller sees only its tenant's requests (another tenant's
request id answers the same 404 as an unknown one), and its Idempotency-Keys live in its
tenant's namespace. Operators (``models:admin``) and auditors (``audit:read``) see every
tenant."""
from __future__ import annotations

import re

from .scopes import AUDIT_READ, MODELS_ADMIN

DEFAULT = "default"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


def check_name(tenant: str) -> str:
    """A tenant name: 1 to 64 of lowercase letters, digits, ``_ . -`` (ValueError otherwise)."""
    if not _NAME.match(tenant or ""):
        raise ValueError(f"tenant {tenant!r}: use 1 to 64 lowercase letters, digits, '_', '.', '-' "
                         "(starting with a letter or digit)")
    return tenant


def visible_tenant(tenant: str, scopes) -> str | None:
    """The tenant a caller's reads are limited to, or None for operators and auditors."""
    return None if (MODELS_ADMIN in scopes or AUDIT_READ in scopes) else tenant


def namespaced_key(tenant: str, key: str) -> str:
    """How an Idempotency-Key is stored: as sent for the default tenant (keys stored before
    tenants existed keep matching), ``tenant`` + newline + key otherwise. A header value
    cannot carry a newline, so no key of one tenant can spell another tenant's."""
    return key if tenant == DEFAULT else f"{tenant}\n{key}"
