"""The model registry, client side: ``models``, ``models register`` (a model trained
elsewhere), ``models train`` (Lethe trains it, with progress), ``versions``, ``history``,
``rollback``, ``models pull`` (``/v1/models`` routes)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys

from ..client import NEGATIVE, OK, USAGE, Api, CliError
from .common import Commands, emit


def register(cmds: Commands) -> None:
    s = cmds.http("models", cmd_models, "the registered models: family, dataset, latest version, aliases; "
                                        "`models register NAME --dataset D --arch A --weights F (--manifest M | "
                                        "--all-training-rows)` registers a model trained elsewhere, `models train "
                                        "NAME --dataset D --arch A` has Lethe train one and follows it (models:admin); "
                                        "`models consolidate NAME` retrains NAME from scratch now (models:admin); "
                                        "`models pull NAME[@alias|:version] -o FILE` downloads weights and checks "
                                        "their sha256 (models:read)")
    s.add_argument("action", nargs="?", choices=["register", "train", "consolidate", "pull"],
                   help="register: a model trained elsewhere (safetensors + manifest); train: Lethe trains it; "
                        "consolidate: a job that retrains from scratch; the next version is exact. pull: download "
                        "a version's safetensors file")
    s.add_argument("model", nargs="?", help="the model to register, train or consolidate, or "
                                            "NAME[@alias|:version] to pull (default alias production)")
    s.add_argument("-o", "--output", help="pull: the file to write (default NAME-vN.safetensors)")
    s.add_argument("--dataset", help="register/train: the registered dataset it is (to be) trained on")
    s.add_argument("--arch", help="register/train: an architecture of GET /v1/architectures (plug-ins included)")
    s.add_argument("--arch-params", help="register/train: the architecture's parameters, a JSON object")
    s.add_argument("--recipe", help="register/train: how it is trained, a JSON object")
    s.add_argument("--weights", help="register: the safetensors state dict")
    s.add_argument("--manifest", help='register: JSON file {"instances": [{"instance_id", "subject_id"?}, ...]}')
    s.add_argument("--all-training-rows", action="store_true",
                   help="register: the model was trained on the dataset's whole training split (no manifest)")
    s.add_argument("--no-wait", action="store_true", help="train: return once started; do not follow it")
    s.add_argument("--timeout", type=float, default=24 * 3600.0, help="train: seconds to follow the run")

    s = cmds.http("versions", cmd_versions,
                  "a model's versions (state: ready, tainted, purged), aliases and alias moves")
    s.add_argument("model")

    s = cmds.http("history", cmd_history, "every move of a model's aliases: when, from, to, why, by whom")
    s.add_argument("model")
    s.add_argument("--alias", help="only this alias")

    s = cmds.http("rollback", cmd_rollback, "point an alias (default production) at another version "
                                            "(models:admin); refused for a tainted or purged version")
    s.add_argument("model")
    s.add_argument("version", type=int)
    s.add_argument("--alias", default="production")
    s.add_argument("--reason", help="why (kept in the alias history)")


def cmd_models(api: Api, args) -> int:
    if args.action == "pull":
        return cmd_pull(api, args)
    if args.action == "register":
        return cmd_register(api, args)
    if args.action == "train":
        return cmd_train(api, args)
    if args.action == "consolidate":
        if not args.model:
            raise CliError("usage: lethe models consolidate NAME", code=USAGE)
        r = api.request("POST", f"/v1/models/{args.model}/consolidate")
        emit(args, r, f"consolidation job {r['id']} ({r['status']}): {(r.get('plan') or {}).get('reason', '')}")
        return OK
    r = api.request("GET", "/v1/models")
    lines = [f"{m['name']}  {m.get('family', '-'):<8} {m['dataset']:<10} {m['arch']:<10} "
             f"latest v{m['latest_version']}  "
             + ", ".join(f"{a}=v{v}" for a, v in sorted(m["aliases"].items())) for m in r]
    emit(args, r, "\n".join(lines) or "no models registered")
    return OK


_REF = re.compile(r"^([^@:/]+)(?:@([a-z][a-z0-9_-]{0,63})|:(\d{1,10}))?$")


def weights_path(ref: str) -> str:
    """``NAME``, ``NAME@alias`` or ``NAME:version`` -> the weights URL path."""
    m = _REF.match(ref or "")
    if m is None:
        raise CliError(f"cannot read {ref!r}: use NAME, NAME@alias or NAME:version", code=USAGE)
    name, alias, version = m.groups()
    if version:
        return f"/v1/models/{name}/versions/{int(version)}/weights"
    return f"/v1/models/{name}/aliases/{alias or 'production'}/weights"


def cmd_pull(api: Api, args) -> int:
    """Download to ``FILE.part``, hash what arrived, and only when it equals the sha256 the
    server announced (ETag, the registry's record) rename it to ``FILE``; else delete it
    and exit 1."""
    if not args.model:
        raise CliError("usage: lethe models pull NAME[@alias|:version] -o FILE", code=USAGE)
    path = weights_path(args.model)
    headers: dict = {}
    out = args.output
    tmp = f"{out or args.model.replace('@', '-').replace(':', '-v')}.{os.getpid()}.part"
    try:
        with open(tmp, "wb") as f:
            n = api.download(path, f, headers_out=headers)
        h = hashlib.sha256()
        with open(tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        expected = headers.get("etag", "").strip('"')
        if not expected or h.hexdigest() != expected:
            print(f"refused: the file's sha256 {h.hexdigest()} is not the registry's {expected or '(none sent)'}",
                  file=sys.stderr)
            return NEGATIVE
        out = out or f"{headers.get('lethe-model', 'model')}-v{headers.get('lethe-version', '0')}.safetensors"
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    r = {"model": headers.get("lethe-model"), "version": int(headers.get("lethe-version", 0)), "sha256": expected,
         "bytes": n, "file": out}
    emit(args, r, f"{r['model']} v{r['version']} -> {out} ({n} bytes, sha256 {expected[:12]}... verified)")
    return OK


def _state(v: dict) -> str:
    if v.get("status") == "PURGED":
        return "purged"
    if v.get("superseded_by"):
        return "superseded"
    return "tainted" if v.get("tainted") else "ready"


def _exactness(v: dict) -> str:
    if v.get("exact", True):
        return "exact"
    d = v.get("debt") or {}
    return f"approx:{d.get('instances', 0)}i/{d.get('versions', 0)}v"  # the debt: instances / versions


def _move_text(a: dict) -> str:
    return (f"{a['alias']}: {('v' + str(a['from_version'])) if a['from_version'] else '(new)'} -> v{a['to_version']}"
            + (f" ({a['reason']})" if a.get("reason") else ""))


def cmd_versions(api: Api, args) -> int:
    r = api.request("GET", f"/v1/models/{args.model}/versions")
    by_version: dict[int, list[str]] = {}
    for a, v in r["aliases"].items():
        by_version.setdefault(v, []).append(a)
    lines = [f"{'version':>7}  {'parent':>6}  {'sha256':<12}  {'UA':>6}  {'TA':>6}  {'exact':<16}  {'state':<10}"
             f"  aliases"]
    for v in r["versions"]:
        m = v.get("metrics") or {}
        fmt = (lambda k: f"{m[k]:6.1f}" if isinstance(m.get(k), (int, float)) else f"{'-':>6}")
        lines.append(f"{'v' + str(v['version']):>7}  {('v' + str(v['parent_version'])) if v['parent_version'] else '-':>6}"
                     f"  {v['sha256'][:12]:<12}  {fmt('ua')}  {fmt('ta')}  {_exactness(v):<16}  {_state(v):<10}"
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


def _json_arg(raw: str | None, what: str) -> dict | None:
    if raw is None:
        return None
    try:
        v = json.loads(raw)
    except ValueError as e:
        raise CliError(f"--{what} is not JSON: {e}", code=USAGE)
    if not isinstance(v, dict):
        raise CliError(f"--{what} must be a JSON object", code=USAGE)
    return v


def cmd_register(api: Api, args) -> int:
    """POST /v1/models (multipart): the weights file and the manifest (a file, or
    {"all_training_rows": true})."""
    if not (args.model and args.dataset and args.arch and args.weights) or \
            bool(args.manifest) == bool(args.all_training_rows):
        raise CliError("usage: lethe models register NAME --dataset D --arch A --weights FILE "
                       "(--manifest FILE | --all-training-rows)", code=USAGE)
    for path in (args.weights, args.manifest):
        if path and not os.path.isfile(path):
            raise CliError(f"no such file: {path}", code=USAGE)
    data = {"name": args.model, "dataset": args.dataset, "arch": args.arch,
            "arch_params": json.dumps(_json_arg(args.arch_params, "arch-params")) if args.arch_params else None,
            "recipe": json.dumps(_json_arg(args.recipe, "recipe")) if args.recipe else None}
    with open(args.weights, "rb") as w:
        if args.all_training_rows:
            data["manifest"] = json.dumps({"all_training_rows": True})
            files = {"weights": (os.path.basename(args.weights), w)}
            print(f"uploading {args.model} ...", file=sys.stderr)
            r = api.post_form("/v1/models", data, files)
        else:
            with open(args.manifest, "rb") as m:
                files = {"weights": (os.path.basename(args.weights), w),
                         "manifest": (os.path.basename(args.manifest), m, "application/json")}
                print(f"uploading {args.model} ...", file=sys.stderr)
                r = api.post_form("/v1/models", data, files)
    emit(args, r, f"{r['name']} v{r['version']} ({r['arch']} on {r['dataset']}): {r['instances']} training rows, "
                  f"test accuracy {r['test_accuracy']:.1f}, sha256 {r['sha256'][:12]}...")
    return OK


def cmd_train(api: Api, args) -> int:
    """POST /v1/models/{name}/train, then follow GET /v1/models/{name}/training (stage and
    progress on stderr) until the run completes or fails."""
    from .datasets import follow

    if not (args.model and args.dataset and args.arch):
        raise CliError("usage: lethe models train NAME --dataset D --arch A [--arch-params JSON] [--recipe JSON]",
                       code=USAGE)
    body = {"dataset": args.dataset, "arch": args.arch, "arch_params": _json_arg(args.arch_params, "arch-params"),
            "recipe": _json_arg(args.recipe, "recipe")}
    run = api.request("POST", f"/v1/models/{args.model}/train", json_body=body)
    if not args.no_wait:
        def state(runs):
            r = next((x for x in runs if x["id"] == run["id"]), runs[0])
            return r["status"] in ("completed", "failed"), r["progress"], r["stage"] or r["status"]

        runs = follow(api, f"/v1/models/{args.model}/training", args.timeout, state)
        run = next((x for x in runs if x["id"] == run["id"]), runs[0])
    m = run.get("metrics") or {}
    text = f"training run {run['id']} of {run['model']}: {run['status']}"
    if run["status"] == "completed" and isinstance(m.get("ta"), (int, float)):
        text += f", test accuracy {m['ta']:.1f}"
    if run.get("error"):
        text += f" ({run['error']})"
    emit(args, run, text)
    return NEGATIVE if run["status"] == "failed" else OK
