"""Datasets, client side: ``datasets`` (list), ``datasets add NAME FILE`` (register a file,
with its held-out rows, and follow the ingestion's progress) — the ``/v1/datasets`` routes."""
from __future__ import annotations

import json
import os
import sys
import time

from ..client import NEGATIVE, OK, USAGE, Api, CliError
from .common import Commands, emit


def register(cmds: Commands) -> None:
    s = cmds.http("datasets", cmd_datasets, "the registered datasets; `datasets add NAME FILE` registers a file "
                                            "(Parquet, Arrow, CSV, .npz) and follows its ingestion (models:admin)")
    s.add_argument("action", nargs="?", choices=["add"], help="add: register a dataset from a file")
    s.add_argument("name", nargs="?", help="add: the new dataset's name")
    s.add_argument("file", nargs="?", help="add: the file (columns instance_id, label, subject_id?, split?, features)")
    s.add_argument("--eval", dest="eval_file", help="held-out evaluation rows (same columns)")
    s.add_argument("--uri", help="instead of FILE: a server-side path or URI under LETHE_DATASET_ROOTS")
    s.add_argument("--format", help="parquet, arrow, csv or npz (default: from the file name)")
    s.add_argument("--kind", help="tabular, tensor, image or tokens (default: inferred)")
    s.add_argument("--columns", help="tabular: feature columns, comma-separated")
    s.add_argument("--feature-column", help="tensor/image/tokens: the feature column")
    s.add_argument("--shape", help="tensor shape, image C,H,W or tokens max_len, comma-separated")
    s.add_argument("--classes", help="class names, comma-separated")
    s.add_argument("--test-fraction", type=float, help="hold out this random fraction as the test split")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-wait", action="store_true", help="return once accepted; do not follow the ingestion")
    s.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow the ingestion")


def cmd_datasets(api: Api, args) -> int:
    if args.action == "add":
        return cmd_add(api, args)
    r = api.request("GET", "/v1/datasets")
    items = r.get("items", r) if isinstance(r, dict) else r
    lines = [f"{d['name']:<16} {d['status']:<9} {d.get('kind') or '-':<8} train {d['splits'].get('train', 0):>8}  "
             f"test {d['splits'].get('test', 0):>7}  subjects {d['subjects']:>7}  models {', '.join(d['models']) or '-'}"
             for d in items]
    emit(args, r, "\n".join(lines) or "no datasets registered")
    return OK


def _csv(v: str | None, cast=str):
    return None if v is None else json.dumps([cast(x.strip()) for x in v.split(",") if x.strip()])


def cmd_add(api: Api, args) -> int:
    if not args.name or not (args.file or args.uri):
        raise CliError("usage: lethe datasets add NAME FILE [--eval FILE] (or NAME --uri URI)", code=USAGE)
    data = {"name": args.name, "uri": args.uri, "format": args.format, "kind": args.kind,
            "columns": _csv(args.columns), "feature_column": args.feature_column, "shape": _csv(args.shape, int),
            "classes": _csv(args.classes), "test_fraction": args.test_fraction, "seed": str(args.seed)}
    opened = []
    try:
        files = {}
        for field, path in (("file", args.file), ("eval_file", args.eval_file)):
            if path:
                if not os.path.isfile(path):
                    raise CliError(f"no such file: {path}", code=USAGE)
                f = open(path, "rb")
                opened.append(f)
                files[field] = (os.path.basename(path), f)
        print(f"uploading {args.name} ...", file=sys.stderr)
        r = api.post_form("/v1/datasets", data, files)
    finally:
        for f in opened:
            f.close()
    if r["status"] == "ingesting" and not args.no_wait:
        r = follow(api, f"/v1/datasets/{args.name}", args.timeout, lambda d: (d["status"] != "ingesting", d["progress"],
                                                                              "ingesting"))
    text = (f"dataset {r['name']}: {r['status']}, train {r['splits'].get('train', 0)} rows, "
            f"test {r['splits'].get('test', 0)} rows, {r['subjects']} subjects")
    if r["status"] == "failed":
        text += f" ({(r.get('error') or {}).get('code')}: {(r.get('error') or {}).get('detail')})"
    emit(args, r, text)
    return NEGATIVE if r["status"] == "failed" else OK


def follow(api: Api, path: str, timeout: float, state, every: float = 1.0):
    """Poll ``path`` until ``state(answer)`` says done; print the progress on stderr."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        r = api.request("GET", path)
        done, progress, stage = state(r)
        line = f"{stage}: {100 * (progress or 0):.0f}%"
        if line != last:
            print(line, file=sys.stderr)
            last = line
        if done:
            return r
        if time.monotonic() > deadline:
            raise CliError(f"still {stage} after {timeout:.0f} s; follow it with GET {path}", code=4)
        time.sleep(every)
