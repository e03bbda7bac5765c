"""Deletion certificates: ``certificate get`` downloads one, ``certificate verify`` checks
its Ed25519 signature locally with ``app/audit/signing.py::verify_certificate`` (the one
verification the service's own tests use too). The public key comes from ``--public-key``
(offline) or from ``GET /v1/keys/audit`` (an open route)."""
from __future__ import annotations

import json
from typing import Any

from ..audit.signing import key_id, load_public_key, verify_certificate
from ..client import NEGATIVE, OK, USAGE, Api, CliError
from .common import Commands, emit


def register(cmds: Commands) -> None:
    cert = cmds.group("certificate", "deletion certificates: download, verify the signature")
    s = cert.http("get", cmd_get, "download a request's certificate (forget:read or audit:read)")
    s.add_argument("request_id")
    s.add_argument("-o", "--output", help="write it to this file")
    s = cert.http("verify", cmd_verify, "check a certificate file's Ed25519 signature locally")
    s.add_argument("file")
    s.add_argument("--public-key", metavar="FILE", help="the audit public key (PEM, or raw 32 bytes in base64/hex); "
                                                        "default: fetched from GET /v1/keys/audit (no API key needed)")


def cmd_get(api: Api, args) -> int:
    r = api.request("GET", f"/v1/forget/{args.request_id}/certificate")
    text = json.dumps(r, indent=2, sort_keys=True)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
        if not args.json:
            c = r.get("certificate") or {}
            print(f"certificate of request {args.request_id} written to {args.output} "
                  f"(signed by key {(r.get('signature') or {}).get('key_id')}, audit entry "
                  f"#{(c.get('audit_entry') or {}).get('seq')})")
            return OK
    print(text)
    return OK


def cmd_verify(api: Api, args) -> int:
    try:
        with open(args.file) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read certificate {args.file}: {e}", USAGE) from e
    sig = doc.get("signature") if isinstance(doc, dict) else None
    cert_key_id = sig.get("key_id") if isinstance(sig, dict) else None
    if args.public_key:
        try:
            with open(args.public_key) as f:
                key_text = f.read()
        except OSError as e:
            raise CliError(f"cannot read public key {args.public_key}: {e}", USAGE) from e
        key, source = _key(key_text, USAGE), args.public_key
    else:
        resp = api.request("GET", "/v1/keys/audit", hint="pass --public-key FILE to verify offline")
        key, source = public_key_from_response(resp, cert_key_id), f"{api.url}/v1/keys/audit"
    ok, reason = verify_certificate(doc, key)
    out = {"valid": ok, "reason": reason, "file": args.file, "public_key_from": source,
           "key_id": key_id(key), "certificate_key_id": cert_key_id}
    if ok:
        c = doc["certificate"]
        before, after = (c.get("version_before") or {}).get("version"), (c.get("version_after") or {}).get("version")
        human = (f"certificate VALID: Ed25519 signature verified with key {out['key_id']} ({source}); request "
                 f"{c.get('request_id')}, model {c.get('model')} v{before} -> v{after}")
    else:
        human = f"certificate INVALID: {reason}"
    emit(args, out, human)
    return OK if ok else NEGATIVE


def _key(text: str, code: int):
    try:
        return load_public_key(text)
    except ValueError as e:
        raise CliError(str(e), code) from e


def public_key_from_response(resp: Any, cert_key_id: str | None = None):
    """The key in the answer of GET /v1/keys/audit, ``{alg, key_id, public_key_pem,
    public_key_raw_b64}``. Refused when it is not Ed25519, when its key_id does not match
    the key it holds, or when the certificate names another key_id (signed with a key the
    server no longer uses: verify with that key's file, --public-key)."""
    if not isinstance(resp, dict) or not isinstance(resp.get("public_key_pem") or resp.get("public_key_raw_b64"), str):
        raise CliError("the server's answer holds no public key (expected {alg, key_id, public_key_pem, "
                       "public_key_raw_b64})")
    if str(resp.get("alg", "Ed25519")).lower() != "ed25519":
        raise CliError(f"the server's audit key is {resp.get('alg')!r}, not Ed25519", NEGATIVE)
    key = _key(resp.get("public_key_pem") or resp["public_key_raw_b64"], USAGE)
    if resp.get("key_id") is not None and resp["key_id"] != key_id(key):
        raise CliError(f"the server's answer is inconsistent: key_id {resp['key_id']!r} but the key's id is "
                       f"{key_id(key)!r}", NEGATIVE)
    if cert_key_id is not None and cert_key_id != key_id(key):
        raise CliError(f"the certificate was signed with key {cert_key_id!r}, the server's audit key is now "
                       f"{key_id(key)!r}: verify with the old key's file (--public-key)", NEGATIVE)
    return key
