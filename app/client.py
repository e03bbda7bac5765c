"""The HTTP side of the ``lethe`` CLI: a small client of the Lethe API and the commands
built on it. Base URL and API key come from flags or ``LETHE_URL`` / ``LETHE_API_KEY``;
``--json`` prints the API's answer as JSON for scripts.

Exit codes: 0 success; 1 the command ran and the answer is negative (request failed,
audit chain broken, certificate invalid); 2 usage error; 3 the API refused or could not be
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
FINAL = ("completed", "failed", "rejected")
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
                params: dict | None = None, needs: str | None = None) -> Any:
        """``needs`` names the server feature an endpoint comes with; when the server answers
        that the route does not exist, the error says so instead of a bare 404."""
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
            extra = f" (it comes with {needs})" if needs else ""
            raise CliError(f"this server does not provide {method} {path}{extra}: HTTP {r.status_code}")
        if r.status_code in (401, 403):
            raise CliError(f"not authorised (HTTP {r.status_code}): {detail}; give an API key with the needed scope "
                           "(--api-key or LETHE_API_KEY)")
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
    body: dict[str, Any] = {"model": args.model, "objective": args.objective, "method": args.method}
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
        human = f"request {request_id} {r['status']}: {r.get('error') or 'no reason given'}"
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
    r = api.request("GET", "/v1/forget", params={"status": args.status, "model": args.model},
                    needs="the governance API (GET /v1/forget)")
    items = r.get("items", r.get("requests", [])) if isinstance(r, dict) else r
    lines = [f"{i['id']}  {i['status']:<10} {i.get('model', '')}  due {str(i.get('due_at', ''))[:10]}" for i in items]
    emit(args, r, "\n".join(lines) or "no requests")
    return OK


def cmd_versions(api: Api, args) -> int:
    r = api.request("GET", f"/v1/models/{args.model}/versions")
    by_version: dict[int, list[str]] = {}
    for a, v in r["aliases"].items():
        by_version.setdefault(v, []).append(a)
    lines = [f"{'version':>7}  {'parent':>6}  {'sha256':<12}  {'UA':>6}  {'TA':>6}  aliases"]
    for v in r["versions"]:
        m = v.get("metrics") or {}
        fmt = (lambda k: f"{m[k]:6.1f}" if isinstance(m.get(k), (int, float)) else f"{'-':>6}")
        lines.append(f"{'v' + str(v['version']):>7}  {('v' + str(v['parent_version'])) if v['parent_version'] else '-':>6}"
                     f"  {v['sha256'][:12]:<12}  {fmt('ua')}  {fmt('ta')}  {', '.join(sorted(by_version.get(v['version'], [])))}")
    lines.append("alias moves: " + "; ".join(
        f"{a['alias']}: {('v' + str(a['from_version'])) if a['from_version'] else '(new)'} -> v{a['to_version']}"
        for a in r["alias_moves"]))
    emit(args, r, "\n".join(lines))
    return OK


def cmd_rollback(api: Api, args) -> int:
    r = api.request("PUT", f"/v1/models/{args.model}/aliases/{args.alias}", json_body={"version": args.version},
                    needs="the governance API (PUT /v1/models/{name}/aliases/{alias})")
    emit(args, r, f"{args.model}@{args.alias} -> v{args.version}")
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
    r = api.request("GET", f"/v1/forget/{args.request_id}/certificate",
                    needs="the governance API (GET /v1/forget/{id}/certificate)")
    text = json.dumps(r, indent=2, sort_keys=True)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
        if not args.json:
            print(f"certificate of request {args.request_id} written to {args.output}")
            return OK
    print(text)
    return OK


def cmd_certificate_verify(api: Api | None, args) -> int:
    try:
        with open(args.file) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read certificate {args.file}: {e}", 2) from e
    if args.public_key:
        with open(args.public_key) as f:
            key_text = f.read()
        key, source = load_public_key(key_text.strip()), args.public_key
    else:
        resp = api.request("GET", "/v1/keys/audit", needs="the governance API (GET /v1/keys/audit); "
                                                          "or pass --public-key FILE")
        key, source = public_key_from_response(resp, doc.get("key_id")), f"{api.url}/v1/keys/audit"
    ok, reason = verify_certificate(doc, key)
    out = {"valid": ok, "reason": reason, "file": args.file, "public_key_from": source,
           "key_fingerprint": key_fingerprint(key)}
    emit(args, out, (f"certificate VALID: Ed25519 signature verified with key {out['key_fingerprint']} ({source})"
                     if ok else f"certificate INVALID: {reason}"))
    return OK if ok else NEGATIVE


# --- certificates: local Ed25519 verification -----------------------------------------------
# A certificate is a JSON object carrying an Ed25519 signature (base64, base64url or hex) in
# "signature". The signed message is either the field "payload"/"certificate"/"body" (a
# string: its UTF-8 bytes; an object: its canonical JSON) or, when there is no such field,
# the canonical JSON of every other top-level field. Canonical JSON = the audit chain's
# (sorted keys, no spaces, ASCII).

SIGNATURE_FIELDS = ("signature", "signature_alg", "alg", "algorithm", "key_id", "public_key")
PAYLOAD_FIELDS = ("payload", "certificate", "body")


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


def public_key_from_response(resp: Any, key_id: str | None = None):
    """The key in an answer of GET /v1/keys/audit: a PEM/base64/hex string, an object with
    public_key / public_key_pem / key, or a list of such objects under "keys" (picked by
    the certificate's key_id when it has one)."""
    if isinstance(resp, str):
        return load_public_key(resp)
    entries = resp.get("keys") if isinstance(resp, dict) and isinstance(resp.get("keys"), list) else [resp]
    if key_id is not None:
        matching = [e for e in entries if isinstance(e, dict) and e.get("key_id") in (None, key_id)]
        if not matching:
            raise CliError(f"the server has no audit key with key_id {key_id!r}", NEGATIVE)
        entries = matching
    for e in entries:
        for field in ("public_key_pem", "public_key", "key"):
            if isinstance(e, dict) and isinstance(e.get(field), str):
                return load_public_key(e[field])
    raise CliError("the server's answer holds no public key")


def key_fingerprint(key) -> str:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:16]


def signed_message(doc: dict) -> bytes:
    from .audit.service import canonical_json

    for field in PAYLOAD_FIELDS:
        if field in doc:
            p = doc[field]
            return p.encode("utf-8") if isinstance(p, str) else canonical_json(p).encode("utf-8")
    return canonical_json({k: v for k, v in doc.items() if k not in SIGNATURE_FIELDS}).encode("utf-8")


def verify_certificate(doc: Any, key) -> tuple[bool, str | None]:
    from cryptography.exceptions import InvalidSignature

    if not isinstance(doc, dict) or not isinstance(doc.get("signature"), str):
        return False, "no 'signature' field"
    alg = doc.get("alg") or doc.get("algorithm") or doc.get("signature_alg")
    if alg is not None and str(alg).lower() != "ed25519":
        return False, f"signature algorithm {alg!r} is not Ed25519"
    try:
        sig = _decode_bytes(doc["signature"], (64,))
    except ValueError as e:
        return False, f"signature: {e}"
    try:
        key.verify(sig, signed_message(doc))
    except InvalidSignature:
        return False, "the signature does not match the certificate's content and this key"
    return True, None
