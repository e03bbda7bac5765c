"""The HTTP side of the ``lethe`` CLI: a small client of the Lethe API and the commands
built on it. Base URL and API key come from flags or ``LETHE_URL`` / ``LETHE_API_KEY``;
``--json`` prints the API's answer as JSON for scripts.

Exit codes: 0 success; 1 the command ran and the answer is negative (request failed,
denied or canceled, audit chain broken, certificate invalid); 2 usage error; 3 the API refused or could not be
reached, or does not provide the endpoint; 4 ``watch`` timed out.
"""
from __future__ import annotations

import base64
import binascii
import json
import sys
import time
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
# a request ends completed, failed (an operator may retry it), denied or canceled ("rejected": older servers)
FINAL = ("completed", "failed", "denied", "canceled", "rejected")
OK, NEGATIVE, API_ERROR, TIMEOUT = 0, 1, 3, 4


class CliError(Exception):
    def __init__(self, message: str, code: int = API_ERROR):
        super().__init__(message)
        self.code = code


class Api:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "lethe-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, *, json_body: Any = None, headers: dict | None = None,
                params: dict | None = None, hint: str | None = None) -> Any:
        """When the server answers that the route does not exist, the error says so (with
        ``hint``, what to do instead) rather than a bare 404."""
        try:
            r = self.http.request(method, path, json=json_body, headers=headers,
                                  params={k: v for k, v in (params or {}).items() if v is not None})
        except httpx.HTTPError as e:
            raise CliError(f"cannot reach Lethe at {self.url}: {e.__class__.__name__}: {e}") from e
        if r.status_code < 400:
            if not r.content:
                return None
            return r.json() if "json" in r.headers.get("content-type", "") else r.text  # e.g. a PEM key
        try:
            body = r.json()
        except ValueError:
            body = {"detail": r.text[:300]}
        detail = body.get("detail") if isinstance(body, dict) else body
        route_missing = (r.status_code == 404 and detail == "Not Found") or r.status_code == 405
        if route_missing:
            extra = f"; {hint}" if hint else ""
            raise CliError(f"this server does not provide {method} {path}: HTTP {r.status_code}{extra}")
        if r.status_code in (401, 403):
            what = ("give an API key with the needed scope (--api-key or LETHE_API_KEY)"
                    if "authorization" in self.http.headers
                    else "no API key was given: set LETHE_API_KEY or pass --api-key")
            raise CliError(f"not authorised (HTTP {r.status_code}): {detail}; {what}")
        code = body.get("code") if isinstance(body, dict) else None
        raise CliError(f"HTTP {r.status_code}{f' {code}' if code else ''}: {detail}")


def emit(args, data: Any, human: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(human)


# --- commands --------------------------------------------------------------------------------

def cmd_forget(api: Api, args) -> int:
    if not args.subject and not args.instance:
        raise CliError("give --subject and/or --instance", 2)
    body: dict[str, Any] = {"model": args.model, "objective": args.objective}
    if args.method:  # otherwise the server picks the model's own method family
        body["method"] = args.method
    if args.subject:
        body["subject_id"] = args.subject
    if args.instance:
        body["instance_ids"] = args.instance
    if args.target_label is not None:
        body["target_label"] = args.target_label
    if args.external_id:
        body["external_id"] = args.external_id
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    out = api.request("POST", "/v1/forget", json_body=body, headers=headers)
    if args.watch:
        if not args.json:
            print(f"request {out['id']} accepted, due {out['due_at'][:10]}", file=sys.stderr)
        return watch(api, args, out["id"])
    emit(args, out, f"request {out['id']} accepted: status {out['status']}, due {out['due_at'][:10]}, "
                    f"job {out['job_id']}")
    return OK


def _bar(fraction: float, width: int = 30) -> str:
    n = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * n + "-" * (width - n) + f"] {fraction * 100:5.1f}%"


def watch(api: Api, args, request_id: str) -> int:
    deadline = time.monotonic() + args.timeout if args.timeout else None
    tty = sys.stderr.isatty()
    last = None
    while True:
        r = api.request("GET", f"/v1/forget/{request_id}")
        job = r.get("job") or {}
        progress = 1.0 if r["status"] == "completed" else float(job.get("progress") or 0.0)
        line = f"{_bar(progress)}  {r['status']}" + (f" · {job['stage']}" if job.get("stage") else "")
        if line != last and not args.quiet:
            if tty:
                sys.stderr.write("\r\033[K" + line)
            else:
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
            last = line
        if r["status"] in FINAL:
            if tty and not args.quiet:
                sys.stderr.write("\n")
            break
        if deadline is not None and time.monotonic() > deadline:
            if tty and not args.quiet:
                sys.stderr.write("\n")
            raise CliError(f"request {request_id} still {r['status']} after {args.timeout:g}s", TIMEOUT)
        time.sleep(args.interval)
    if r["status"] == "completed":
        human = (f"request {request_id} completed: {r['model']} v{r['version_before']} -> v{r['version_after']}"
                 + (f", UA {r['metrics']['ua']:.1f} %" if (r.get("metrics") or {}).get("ua") is not None else ""))
    else:
        why = r.get("error") or (f"{r['reason_code']}: {r.get('reason') or ''}".rstrip(": ") if r.get("reason_code")
                                 else r.get("reason")) or "no reason given"
        human = f"request {request_id} {r['status']}: {why}"
    emit(args, r, human)
    return OK if r["status"] == "completed" else NEGATIVE


def cmd_watch(api: Api, args) -> int:
    return watch(api, args, args.request_id)


def cmd_status(api: Api, args) -> int:
    r = api.request("GET", f"/v1/forget/{args.request_id}")
    job = r.get("job") or {}
    emit(args, r, f"{r['id']}: {r['status']} ({r['model']}, {len(r['instance_ids'])} instances, due "
                  f"{r['due_at'][:10]})" + (f"; job {job['status']} {job['stage']} {job['progress'] * 100:.0f}%"
                                            if job else ""))
    return OK


def cmd_list(api: Api, args) -> int:
    r = api.request("GET", "/v1/forget", params={"status": args.status, "model": args.model,
                                                "overdue": "true" if args.overdue else None,
                                                "limit": args.limit, "offset": args.offset})
    lines = [f"{i['id']}  {i['status']:<9} {i['model']}  due {i['due_at'][:10]}"
             + (f"  {i['days_left']}d left" if i.get("days_left") is not None else "")
             + ("  OVERDUE" if i.get("overdue") else "") for i in r["items"]]
    shown = f"{r['offset'] + 1}-{r['offset'] + len(r['items'])}" if r["items"] else "none"
    lines.append(f"{shown} of {r['total']}" + (f" (next: --offset {r['next_offset']})"
                                                 if r.get("next_offset") is not None else ""))
    emit(args, r, "\n".join(lines) if r["items"] else f"no requests ({r['total']} in all match)")
    return OK


def _lifecycle(api: Api, args, action: str, body: dict | None) -> int:
    r = api.request("POST", f"/v1/forget/{args.request_id}/{action}", json_body=body)
    emit(args, r, f"request {r['id']}: {r['status']}" + (f" ({r['reason_code']})" if r.get("reason_code") else ""))
    return OK


def cmd_cancel(api: Api, args) -> int:
    return _lifecycle(api, args, "cancel", {"reason": args.reason} if args.reason else None)


def cmd_deny(api: Api, args) -> int:
    return _lifecycle(api, args, "deny", {"reason_code": args.reason_code, "reason": args.reason})


def cmd_retry(api: Api, args) -> int:
    return _lifecycle(api, args, "retry", None)


def _state(v: dict) -> str:
    if v.get("status") == "PURGED":
        return "purged"
    return "tainted" if v.get("tainted") else "ready"


def _move_text(a: dict) -> str:
    return (f"{a['alias']}: {('v' + str(a['from_version'])) if a['from_version'] else '(new)'} -> v{a['to_version']}"
            + (f" ({a['reason']})" if a.get("reason") else ""))


def cmd_versions(api: Api, args) -> int:
    r = api.request("GET", f"/v1/models/{args.model}/versions")
    by_version: dict[int, list[str]] = {}
    for a, v in r["aliases"].items():
        by_version.setdefault(v, []).append(a)
    lines = [f"{'version':>7}  {'parent':>6}  {'sha256':<12}  {'UA':>6}  {'TA':>6}  {'state':<7}  aliases"]
    for v in r["versions"]:
        m = v.get("metrics") or {}
        fmt = (lambda k: f"{m[k]:6.1f}" if isinstance(m.get(k), (int, float)) else f"{'-':>6}")
        lines.append(f"{'v' + str(v['version']):>7}  {('v' + str(v['parent_version'])) if v['parent_version'] else '-':>6}"
                     f"  {v['sha256'][:12]:<12}  {fmt('ua')}  {fmt('ta')}  {_state(v):<7}"
                     f"  {', '.join(sorted(by_version.get(v['version'], [])))}".rstrip())
    lines.append("alias moves: " + "; ".join(_move_text(a) for a in r["alias_moves"]))
    emit(args, r, "\n".join(lines))
    return OK


def cmd_history(api: Api, args) -> int:
    r = api.request("GET", f"/v1/models/{args.model}/aliases/history", params={"alias": args.alias})
    lines = [f"{str(a['moved_at'])[:19]}  {_move_text(a)}  by {a['actor']}" for a in r]
    emit(args, r, "\n".join(lines) or "no alias moves")
    return OK


def cmd_rollback(api: Api, args) -> int:
    """PUT /v1/models/{name}/aliases/{alias}: the server refuses (409) a tainted or purged version."""
    r = api.request("PUT", f"/v1/models/{args.model}/aliases/{args.alias}",
                    json_body={"version": args.version, "reason": args.reason})
    emit(args, r, f"{r['model']}@{r['alias']} -> v{r['version']}" + ("" if r["moved"] else " (already there)"))
    return OK


def cmd_audit_verify(api: Api, args) -> int:
    r = api.request("GET", "/v1/audit/verify")
    if r["ok"]:
        human = f"audit chain OK: {r['entries']} entries, head {r['head']}"
    else:
        human = f"audit chain BROKEN at event {r['first_bad_seq']}: {r['reason']} ({r['entries']} entries verified)"
    emit(args, r, human)
    return OK if r["ok"] else NEGATIVE


def cmd_certificate_get(api: Api, args) -> int:
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


def cmd_certificate_verify(api: Api | None, args) -> int:
    try:
        with open(args.file) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read certificate {args.file}: {e}", 2) from e
    sig = doc.get("signature") if isinstance(doc, dict) else None
    cert_key_id = sig.get("key_id") if isinstance(sig, dict) else None
    if args.public_key:
        try:
            with open(args.public_key) as f:
                key_text = f.read()
        except OSError as e:
            raise CliError(f"cannot read public key {args.public_key}: {e}", 2) from e
        key, source = load_public_key(key_text.strip()), args.public_key
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


# --- certificates: local Ed25519 verification -----------------------------------------------
# The format is the server's (app/audit/signing.py::sign_document, docs/service.md
# "Deletion certificates"):
#   {"certificate": {...the readable statement...},
#    "canonical": "<the exact text signed: the certificate as JSON, sorted keys, no spaces, ASCII>",
#    "signature": {"alg": "Ed25519", "key_id": "<sha256(raw public key)[:16]>", "value": "<base64>"}}
# Valid = the signature verifies over the UTF-8 bytes of "canonical" with the audit key, AND
# "canonical" parses to exactly "certificate" (so the readable copy says what was signed).


def _decode_bytes(text: str, sizes: tuple[int, ...]) -> bytes:
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


def load_public_key(text: str):
    """PEM (SubjectPublicKeyInfo), or the raw 32 bytes (or DER) in base64/hex."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        if "BEGIN" in text:
            key = serialization.load_pem_public_key(text.encode())
        else:
            raw = _decode_bytes(text, (32, 44))
            key = (Ed25519PublicKey.from_public_bytes(raw) if len(raw) == 32
                   else serialization.load_der_public_key(raw))
    except ValueError as e:
        raise CliError(f"not an Ed25519 public key: {e}", 2) from e
    if not isinstance(key, Ed25519PublicKey):
        raise CliError(f"the public key is {type(key).__name__}, not Ed25519", 2)
    return key


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
    key = load_public_key(resp.get("public_key_pem") or resp["public_key_raw_b64"])
    if resp.get("key_id") is not None and resp["key_id"] != key_id(key):
        raise CliError(f"the server's answer is inconsistent: key_id {resp['key_id']!r} but the key's id is "
                       f"{key_id(key)!r}", NEGATIVE)
    if cert_key_id is not None and cert_key_id != key_id(key):
        raise CliError(f"the certificate was signed with key {cert_key_id!r}, the server's audit key is now "
                       f"{key_id(key)!r}: verify with the old key's file (--public-key)", NEGATIVE)
    return key


def key_id(key) -> str:
    """The server's key id: first 16 hex characters of sha256(raw 32-byte public key)."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signed_message(doc: dict) -> bytes:
    """The bytes the signature covers: the certificate's ``canonical`` text, as sent."""
    return doc["canonical"].encode("utf-8")


def verify_certificate(doc: Any, key) -> tuple[bool, str | None]:
    from cryptography.exceptions import InvalidSignature

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
        raw_sig = _decode_bytes(sig["value"], (64,))
    except ValueError as e:
        return False, f"signature: {e}"
    try:
        key.verify(raw_sig, signed_message(doc))
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
