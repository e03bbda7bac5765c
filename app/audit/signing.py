"""The service's Ed25519 key: signs deletion certificates; the public half is served at
``GET /v1/keys/audit`` so anyone can verify a certificate offline.

The private key lives in ``LETHE_SIGNING_KEY_FILE`` (default ``audit-ed25519.pem`` next to the
registry directory, i.e. ``./var/audit-ed25519.pem``), PEM/PKCS#8, created on first use with
mode 0600. ``key_id`` = first 16 hex characters of sha256(raw 32-byte public key).
"""
from __future__ import annotations

import base64
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


def verify_document(public_key_pem: str | bytes, canonical_text: str | bytes, signature_b64: str) -> bool:
    """What a third party runs (see docs/service.md): True when the signature is valid."""
    pub = serialization.load_pem_public_key(public_key_pem.encode() if isinstance(public_key_pem, str)
                                            else public_key_pem)
    data = canonical_text.encode("utf-8") if isinstance(canonical_text, str) else canonical_text
    try:
        pub.verify(base64.b64decode(signature_b64), data)
        return True
    except (InvalidSignature, ValueError):
        return False
