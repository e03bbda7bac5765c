"""Outbound safety for callback URLs (server-side request forgery, OWASP API7).

A callback URL is the one place where a client makes Lethe open a connection. Without a
check, a portal could point it at the metadata service (169.254.169.254), the database
port, Redis on loopback, or any private host, and read the deliveries endpoint
("connection refused" vs an HTTP status) as a port scanner. So:

- only ``http``/``https`` with a host, and never credentials in the URL (``user:pw@``);
- the host is resolved and **every** address it resolves to must be public: loopback,
  private (RFC 1918, ULA), link-local, shared (100.64/10), multicast, reserved,
  unspecified and documentation ranges are refused (``ipaddress``'s ``is_global`` minus
  multicast);
- the check runs when the request is recorded (422 ``callback_url_refused``) and again at
  every delivery, and the delivery connects to the address that passed the check (the
  URL's host goes in ``Host`` and, for https, in SNI and the certificate check), so a DNS
  answer that changes between the check and the connection cannot redirect it;
- redirects are never followed (a 3xx is a failed attempt);
- ``LETHE_CALLBACK_ALLOW`` (comma-separated CIDR networks and/or host names) opens what an
  operator needs: a private deployment's receivers, or ``127.0.0.0/8`` for tests.
"""
from __future__ import annotations

import functools
import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeCallback(ValueError):
    """The URL may not be called; the message says why (without internal details)."""


@functools.lru_cache(maxsize=32)
def parse_allow(allow: str) -> tuple[tuple, frozenset[str]]:
    """``"10.0.0.0/8, ::1/128, hooks.internal"`` -> (networks, host names)."""
    nets, names = [], set()
    for item in (allow or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            names.add(item.lower().rstrip("."))
    return tuple(nets), frozenset(names)


def public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as e:
        raise UnsafeCallback(f"callback_url host {host!r} does not resolve") from e
    out: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


def check(url: str, allow: str = "") -> tuple[str, int, IPAddress]:
    """Validate ``url`` for an outbound POST. Returns (host, port, address to connect to);
    raises ``UnsafeCallback``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UnsafeCallback("callback_url is not a valid URL") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeCallback("callback_url must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeCallback("callback_url must not carry credentials (user:password@)")
    host = parts.hostname.lower().rstrip(".")
    port = port or (443 if parts.scheme == "https" else 80)
    nets, names = parse_allow(allow)
    addresses = _resolve(host, port)
    if not addresses:
        raise UnsafeCallback(f"callback_url host {host!r} does not resolve")
    if host not in names:
        for ip in addresses:
            if not public(ip) and not any(ip.version == n.version and ip in n for n in nets):
                raise UnsafeCallback(f"callback_url host {host!r} resolves to a non-public address ({ip}); "
                                     "loopback, private, link-local, multicast and reserved ranges are refused "
                                     "unless the operator allows them (LETHE_CALLBACK_ALLOW)")
    return host, port, addresses[0]


def destination(url: str) -> str:
    """What the per-destination concurrency limit counts: scheme://host:port."""
    try:
        p = urlsplit(url)
        return f"{p.scheme}://{(p.hostname or '').lower()}:{p.port or (443 if p.scheme == 'https' else 80)}"
    except ValueError:
        return url
