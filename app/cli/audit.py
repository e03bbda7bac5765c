"""The audit chain: ``audit verify`` (the server recomputes it), ``audit export`` (download
it as JSON lines) and ``audit verify-export`` (recompute a downloaded export offline, no
server or database needed: what an auditor runs)."""
from __future__ import annotations

import sys

from ..client import NEGATIVE, OK, USAGE, Api, CliError
from .common import Commands, emit


def register(cmds: Commands) -> None:
    audit = cmds.group("audit", "the audit chain: verify on the server, export, verify an export offline")
    audit.http("verify", cmd_verify, "recompute the hash chain on the server (audit:read)")
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
    r = api.request("GET", "/v1/audit/verify")
    emit(args, r, _human(r))
    return OK if r["ok"] else NEGATIVE


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
