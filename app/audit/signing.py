"""The service's Ed25519 key: signs deletion certificates; the public half is served at
``GET /v1/keys/audit`` so anyone can verify a certificate offline.

The private key lives in ``LETHE_SIGNING_KEY_FILE`` (default ``audit-ed25519.pem`` next to the
registry directory, i.e. ``./var/audit-ed25519.pem``), PEM/PKCS#8, created on first use with
mode 0600. ``key_id`` = first 16 hex characters of sha256(raw 32-byte public key).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_lock = threading.Lock()
_cache: dict[str, Ed25519PrivateKey] = {}


def key_path(settings) -> str:
    if settings.signing_key_file:
        return settings.signing_key_file
    return os.path.join(os.path.dirname(os.path.abspath(settings.registry_dir)), "audit-ed25519.pem")


def private_key(settings) -> Ed25519PrivateKey:
    path = key_path(settings)
    with _lock:
        if path in _cache:
            return _cache[path]
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption())
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)
            except FileExistsError:  # another process created it first: use theirs
                pass
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        _cache[path] = key
        return key


def raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(public)).hexdigest()[:16]


def public_info(settings) -> dict:
    pub = private_key(settings).public_key()
    return {"alg": "Ed25519", "key_id": key_id(pub),
            "public_key_pem": pub.public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii"),
            "public_key_raw_b64": base64.b64encode(raw_public(pub)).decode("ascii")}


def canonical(obj: Any) -> str:
    """The exact text that is signed: sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sign_document(settings, document: dict) -> dict:
    """{document, canonical, signature: {alg, key_id, value (base64)}}"""
    key = private_key(settings)
    text = canonical(document)
    return {"certificate": document, "canonical": text,
            "signature": {"alg": "Ed25519", "key_id": key_id(key.public_key()),
                          "value": base64.b64encode(key.sign(text.encode("ascii"))).decode("ascii")}}


# --- verification: the one implementation, used by `lethe certificate verify` and the tests ----
# A certificate is {"certificate": {...}, "canonical": "<the exact text signed>",
# "signature": {"alg": "Ed25519", "key_id": "<sha256(raw public key)[:16]>", "value": "<base64>"}}.
# Valid = the signature verifies over the UTF-8 bytes of "canonical" with the audit key, AND
# "canonical" parses to exactly "certificate" (so the readable copy says what was signed).

def decode_bytes(text: str, sizes: tuple[int, ...]) -> bytes:
    """Hex, base64 or url-safe base64 text whose decoded length is one of ``sizes``."""
    text = text.strip()
    candidates = []
    if all(c in "0123456789abcdefABCDEF" for c in text) and len(text) % 2 == 0:
        candidates.append(lambda: bytes.fromhex(text))
    candidates.append(lambda: base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
    candidates.append(lambda: base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    for c in candidates:
        try:
            raw = c()
        except (ValueError, binascii.Error):
            continue
        if len(raw) in sizes:
            return raw
    raise ValueError(f"not {' or '.join(map(str, sizes))} bytes in hex or base64")


def load_public_key(text: str | bytes) -> Ed25519PublicKey:
    """PEM (SubjectPublicKeyInfo), or the raw 32 bytes (or DER) in base64/hex. ValueError
    when it is not an Ed25519 public key."""
    text = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    try:
        if "BEGIN" in text:
            key = serialization.load_pem_public_key(text.strip().encode())
        else:
            raw = decode_bytes(text, (32, 44))
            key = (Ed25519PublicKey.from_public_bytes(raw) if len(raw) == 32
                   else serialization.load_der_public_key(raw))
    except ValueError as e:
        raise ValueError(f"not an Ed25519 public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"not an Ed25519 public key: the key is {type(key).__name__}")
    return key


def verify_certificate(doc: Any, key: Ed25519PublicKey) -> tuple[bool, str | None]:
    """(True, None) when ``doc`` is a certificate signed by ``key`` whose readable copy is what
    was signed; otherwise (False, why)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("certificate"), dict) \
            or not isinstance(doc.get("canonical"), str) or not isinstance(doc.get("signature"), dict):
        return False, "not a Lethe deletion certificate: expected {certificate, canonical, signature}"
    sig = doc["signature"]
    if str(sig.get("alg")).lower() != "ed25519":
        return False, f"signature algorithm {sig.get('alg')!r} is not Ed25519"
    if sig.get("key_id") is not None and sig["key_id"] != key_id(key):
        return False, f"signed with key {sig['key_id']!r}, not with this key ({key_id(key)!r})"
    if not isinstance(sig.get("value"), str):
        return False, "no signature value"
    try:
        raw_sig = decode_bytes(sig["value"], (64,))
    except ValueError as e:
        return False, f"signature: {e}"
    try:
        key.verify(raw_sig, doc["canonical"].encode("utf-8"))
    except InvalidSignature:
        return False, "the signature does not match the signed canonical text and this key"
    try:
        signed = json.loads(doc["canonical"])
    except ValueError:
        return False, "the signed canonical text is not JSON"
    if signed != doc["certificate"]:
        diff = sorted(k for k in set(signed) | set(doc["certificate"]) if signed.get(k) != doc["certificate"].get(k))
        return False, f"the readable certificate differs from what was signed (fields: {', '.join(diff)})"
    return True, None
