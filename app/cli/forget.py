"""Deletion requests, client side: ``forget``, ``watch``, ``status``, ``list`` and the
lifecycle commands ``cancel``, ``deny``, ``retry`` (``/v1/forget`` routes)."""
from __future__ import annotations

import sys
import time
from typing import Any

from models import unlearn

from ..client import FINAL, NEGATIVE, OK, TIMEOUT, USAGE, Api, CliError
from .common import Commands, emit

# the choices offered by `lethe forget` come from the method catalogue (the API validates them again)
METHODS = unlearn.method_names()
OBJECTIVES = unlearn.OBJECTIVES


def register(cmds: Commands) -> None:
    from ..forget.models import DENY_REASONS, STATUSES

    s = cmds.http("forget", cmd_forget, "submit a deletion request")
    s.add_argument("--model", help="the model; omit it (with --subject) to forget the subject from every model "
                                    "trained on their data (one erasure, a request per model)")
    s.add_argument("--subject", help="forget every catalogued instance of this subject")
    s.add_argument("--instance", action="append", metavar="ID", help="a training instance id (repeatable)")
    s.add_argument("--objective", default=unlearn.DEFAULT_OBJECTIVE, choices=OBJECTIVES)
    s.add_argument("--method", default=None, choices=METHODS, help="default: the model family's own (docs/methods.md)")
    s.add_argument("--target-label", type=int)
    s.add_argument("--external-id", help="your own reference (ticket id)")
    s.add_argument("--idempotency-key", help="retrying with the same key returns the same request")
    s.add_argument("--watch", action="store_true", help="then watch it until it ends")
    _watch_options(s)

    s = cmds.http("watch", cmd_watch, "follow a request until it ends (progress bar on stderr)")
    s.add_argument("request_id")
    _watch_options(s)

    s = cmds.http("status", cmd_status, "show a request once")
    s.add_argument("request_id")

    s = cmds.http("list", cmd_list, "list requests, newest first (filters: --status, --model, --overdue)")
    s.add_argument("--status", choices=STATUSES)
    s.add_argument("--model")
    s.add_argument("--overdue", action="store_true", help="only open requests past their due date")
    s.add_argument("--limit", type=int, default=50, help="at most this many (default 50, at most 500)")
    s.add_argument("--offset", type=int, default=0)

    s = cmds.http("cancel", cmd_cancel, "cancel a request that has not started (API key with forget:write)")
    s.add_argument("request_id")
    s.add_argument("--reason")

    s = cmds.http("deny", cmd_deny, "deny a queued or failed request with a reason code (models:admin)")
    s.add_argument("request_id")
    s.add_argument("--reason-code", required=True, choices=DENY_REASONS)
    s.add_argument("--reason", required=True, help="free text, shown to the requester")

    s = cmds.http("retry", cmd_retry, "run a failed request again (models:admin)")
    s.add_argument("request_id")


def _watch_options(s) -> None:
    s.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
    s.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (0 = never)")
    s.add_argument("--quiet", action="store_true", help="no progress bar on stderr")


def cmd_forget(api: Api, args) -> int:
    if not args.subject and not args.instance:
        raise CliError("give --subject and/or --instance", USAGE)
    if not args.model and args.instance:
        raise CliError("--instance needs --model (without --model, give --subject only)", USAGE)
    body: dict[str, Any] = {"objective": args.objective}
    if args.model:
        body["model"] = args.model
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
    if out.get("erasure_id"):  # no model named: one request per model holding the subject's data
        if args.watch:
            return max(watch(api, args, m["request_id"]) for m in out["requests"])
        emit(args, out, f"erasure {out['id']} accepted, due {out['due_at'][:10]}: "
                        + ", ".join(f"{m['model']} (request {m['request_id']})" for m in out["requests"]))
        return OK
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
