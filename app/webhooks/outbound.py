"""Outbound safety for callback URLs (server-side request forgery, OWASP API7).

A callback URL is the one place where a client makes Lethe open a connection. Without a
check, a portal could point it at the metadata service (169.254.169.254), the database
port, Redis on loopback, or any private host, and read the deliveries endpoint
("connection refused" vs an HTTP status) as a port scanner. So:

- the URL is parsed once, by ``parse``, with the parser the sender uses (``httpx.URL``),
  after refusing control characters (CR, LF, NUL, DEL, tab...): a URL that would make the
  sender raise is refused when it is submitted, never stored;
- only ``http``/``https`` with a host, a port other than 0, and never credentials in the URL
  (``user:pw@``);
- the host is resolved and **every** address it resolves to must be public: ``is_global``
  and not multicast, and outside every range of the IANA special-purpose address registries
  (``SPECIAL``): loopback, private (RFC 1918, ULA), link-local, shared (100.64/10),
  reserved, unspecified and documentation ranges, and the IPv6 forms that embed an IPv4
  address a router may translate (IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96`` and
  ``64:ff9b:1::/48``, 6to4 ``2002::/16``, Teredo ``2001::/32``);
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

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IANA IPv4 / IPv6 Special-Purpose Address Registries (RFC 6890 and its updates), plus the
# ranges whose addresses embed an IPv4 address that a translator or tunnel would reach
SPECIAL = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "255.255.255.255/32",
    "::/96",            # unspecified, loopback and the deprecated IPv4-compatible ::a.b.c.d
    "::ffff:0:0/96",    # IPv4-mapped
    "64:ff9b::/96",     # NAT64 well-known prefix (RFC 6052)
    "64:ff9b:1::/48",   # local-use IPv4/IPv6 translation (RFC 8215)
    "100::/64",         # discard-only
    "2001::/23",        # IETF protocol assignments, Teredo 2001::/32 among them
    "2001:db8::/32",    # documentation
    "2002::/16",        # 6to4 (RFC 3056)
    "3fff::/20",        # documentation (RFC 9637)
    "5f00::/16",        # segment routing SIDs (RFC 9602)
    "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8"))
CONTROL = frozenset(chr(c) for c in (*range(0x20), 0x7F))


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
    if not ip.is_global or ip.is_multicast:
        return False
    return not any(ip.version == n.version and ip in n for n in SPECIAL)


def parse(url: str) -> httpx.URL:
    """The URL as the sender will use it (``httpx.URL``), or ``UnsafeCallback`` saying what is
    wrong: control characters (CR, LF, NUL...), not http(s), no host, port 0, credentials."""
    if not isinstance(url, str) or not url:
        raise UnsafeCallback("callback_url must be an absolute http:// or https:// URL")
    bad = next((c for c in url if c in CONTROL), None)
    if bad is not None:
        raise UnsafeCallback(f"callback_url contains a control character ({bad!r}); percent-encode it")
    if any(c.isspace() for c in url):
        raise UnsafeCallback("callback_url contains white space; percent-encode it")
    try:
        parts, parsed = urlsplit(url), httpx.URL(url)
        port = parts.port
    except (ValueError, httpx.InvalidURL) as e:
        raise UnsafeCallback("callback_url is not a valid URL") from e
    if parsed.scheme not in ("http", "https") or parts.scheme not in ("http", "https") or not parsed.host \
            or not parts.hostname:
        raise UnsafeCallback("callback_url must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc or parsed.userinfo:
        raise UnsafeCallback("callback_url must not carry credentials (user:password@)")
    if port == 0 or parsed.port == 0:
        raise UnsafeCallback("callback_url port 0 is not a port a receiver listens on")
    return parsed


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
    parsed = parse(url)
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")  # IDNA-encoded, as it is sent
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
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
