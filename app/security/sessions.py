"""Dashboard sessions: the API key is shown to the server once and exchanged for a session.

The cookie used to hold the raw, long-lived API key. Now ``/dashboard?key=<key>`` checks the
key like any API call and answers with a cookie holding only a session token

    lsess.<key id>.<expires, unix seconds>.<hex HMAC-SHA256(session secret, "<key id>.<expires>")>

HttpOnly, SameSite=Strict, Path=/dashboard, Max-Age = ``LETHE_DASHBOARD_SESSION_TTL_S``, and
Secure when the request arrived over TLS: directly, or through a proxy listed in
``LETHE_TRUSTED_PROXIES`` that says ``X-Forwarded-Proto: https`` (a header from anyone else is
ignored). A token is accepted on ``/dashboard`` paths only, until it expires, and only while
its key is active (every request looks the key up: revoking the key ends its sessions). The
session secret is ``LETHE_SESSION_SECRET``, or a random one per process (sessions then end
when the gateway restarts, and several gateways need the setting).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time

PREFIX = "lsess."
_process_secret = secrets.token_bytes(32)


def _secret(settings) -> bytes:
    return settings.session_secret.encode("utf-8") if settings.session_secret else _process_secret


def _mac(settings, key_id: str, expires: int) -> str:
    return hmac.new(_secret(settings), f"{key_id}.{expires}".encode("utf-8"), hashlib.sha256).hexdigest()


def issue(settings, key_id: str, *, now: float | None = None) -> str:
    expires = int((now if now is not None else time.time()) + settings.dashboard_session_ttl_s)
    return f"{PREFIX}{key_id}.{expires}.{_mac(settings, key_id, expires)}"


def is_session(token: str) -> bool:
    return token.startswith(PREFIX)


def key_of(settings, token: str, *, now: float | None = None) -> str | None:
    """The key id a valid, unexpired token was issued for; None otherwise."""
    try:
        key_id, expires_s, mac = token[len(PREFIX):].rsplit(".", 2)
        expires = int(expires_s)
    except ValueError:
        return None
    if not hmac.compare_digest(_mac(settings, key_id, expires), mac):
        return None
    if (now if now is not None else time.time()) >= expires:
        return None
    return key_id


def behind_tls(request, settings) -> bool:
    """HTTPS directly, or a trusted proxy's ``X-Forwarded-Proto: https``."""
    if request.url.scheme == "https":
        return True
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return proto == "https" and trusted(request.client.host if request.client else "", settings.trusted_proxies)


def trusted(host: str, proxies: str) -> bool:
    for item in (p.strip() for p in (proxies or "").split(",")):
        if not item:
            continue
        if item == host:
            return True
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(item, strict=False):
                return True
        except ValueError:
            continue
    return False
