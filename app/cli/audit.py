"""The audit chain: ``audit verify`` (the server recomputes it), ``audit export`` (download
it as JSON lines) and ``audit verify-export`` (recompute a downloaded export offline, no
server or database needed: what an auditor runs)."""
from __future__ import annotations

import sys

from ..client import NEGATIVE, OK, USAGE, Api, CliError
from .common import Commands, emit


def register(cmds: Commands) -> None:
    audit = cmds.group("audit", "the audit chain: verify on the server, export, verify an export offline")
    s = audit.http("verify", cmd_verify, "recompute the whole hash chain on the server (audit:read); with "
                                         "--checkpoint, download the export and check it here against saved "
                                         "signed checkpoints (truncation, rewrite)")
    s.add_argument("--checkpoint", metavar="FILE", help="signed checkpoint(s) saved earlier from "
                                                        "GET /v1/audit/checkpoints (one JSON document or JSON lines, "
                                                        "e.g. LETHE_AUDIT_CHECKPOINT_FILE)")
    s.add_argument("--public-key", metavar="FILE", help="the audit public key (default: GET /v1/keys/audit)")
    s = audit.http("export", cmd_export, "download the chain as JSON lines, oldest first (audit:read)")
    s.add_argument("-o", "--output", help="write it to this file (default: stdout)")
    s.add_argument("--after-seq", type=int, help="only the events after this sequence number")
    s = audit.local("verify-export", cmd_verify_export,
                    "recompute the hash chain of an exported file offline (exit 1 when broken)")
    s.add_argument("file", help="what `lethe audit export` (GET /v1/audit/export) wrote")
    s.add_argument("--json", action="store_true", help="print the result as JSON")


def _human(r: dict) -> str:
    if r["ok"]:
        return f"audit chain OK: {r['entries']} entries, head {r['head']}"
    return f"audit chain BROKEN at event {r['first_bad_seq']}: {r['reason']} ({r['entries']} entries verified)"


def cmd_verify(api: Api, args) -> int:
    if args.checkpoint:
        return _verify_against_checkpoints(api, args)
    r = api.request("GET", "/v1/audit/verify", params={"full": "true"})  # an auditor's check: every event
    emit(args, r, _human(r))
    return OK if r["ok"] else NEGATIVE


def _verify_against_checkpoints(api: Api, args) -> int:
    """Trust nothing the database says: recompute the exported chain here, and require every
    saved checkpoint to carry the audit key's signature and to match the chain (its event
    present, with the pinned hash)."""
    import io
    import json

    from ..audit.checkpoints import holds, read_file
    from ..audit.service import verify_lines
    from ..audit.signing import verify_certificate
    from .certificate import _key, public_key_from_response

    try:
        saved = read_file(args.checkpoint)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read checkpoint file {args.checkpoint}: {e}", USAGE) from e
    if args.public_key:
        try:
            with open(args.public_key) as f:
                key = _key(f.read(), USAGE)
        except OSError as e:
            raise CliError(f"cannot read public key {args.public_key}: {e}", USAGE) from e
    else:
        key = public_key_from_response(api.request("GET", "/v1/keys/audit"))
    buf = io.BytesIO()
    api.download("/v1/audit/export", buf)
    lines = buf.getvalue().decode("utf-8").splitlines()
    chain = verify_lines(lines)
    hashes = {}
    for line in lines:
        ev = json.loads(line) if line.strip() else {}
        if "seq" in ev:
            hashes[ev["seq"]] = ev["hash"]
    problems = []
    for cp in saved:
        ok, reason = verify_certificate(cp, key)
        problem = holds(cp, hashes.get) if ok else f"checkpoint signature: {reason}"
        if problem:
            problems.append(problem)
    if not chain["ok"]:
        problems.insert(0, f"chain broken at event {chain['first_bad_seq']}: {chain['reason']}")
    out = {"ok": not problems, "entries": chain["entries"], "head": chain["head"], "checkpoints": len(saved),
           "problems": problems}
    human = (f"audit chain OK against {len(saved)} signed checkpoint(s): {chain['entries']} entries, head "
             f"{chain['head']}" if not problems else "audit chain NOT OK: " + "; ".join(problems))
    emit(args, out, human)
    return OK if not problems else NEGATIVE


def cmd_export(api: Api, args) -> int:
    params = {"after_seq": args.after_seq}
    if not args.output:
        api.download("/v1/audit/export", sys.stdout.buffer, params=params)
        return OK
    with open(args.output, "wb") as f:
        size = api.download("/v1/audit/export", f, params=params)
    if not args.json:
        print(f"audit export written to {args.output} ({size} bytes); check it with "
              f"`lethe audit verify-export {args.output}`")
    return OK


def cmd_verify_export(args) -> int:
    from ..audit.service import verify_lines

    try:
        with open(args.file, "rb") as f:
            r = verify_lines(f)
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e}", USAGE) from e
    except (ValueError, KeyError, TypeError) as e:  # a line that is not an exported event
        raise CliError(f"{args.file} is not an audit export (JSON lines of "
                       f"{{seq, ts, actor, action, subject_ref, payload, prev_hash, hash}}): "
                       f"{e.__class__.__name__}: {e}", NEGATIVE) from e
    emit(args, r, _human(r))
    return OK if r["ok"] else NEGATIVE
