"""Benchmark: instance-wise unlearning vs retraining from scratch, in one run.

    python -m bench.instance                       # the default grid (see --help)
    python -m bench.instance --datasets digits --ks 1,8 --seeds 0

For each dataset, forget-set size k and seed, D_f is drawn at random from the training
split. Every method starts from the same served model (trained with the same recipe as
the retrain baseline). Metrics (models/metrics.py) are computed on the *evaluation* half
of the test split; the other half is the held-out calibration data that `retrain_like`
may look at, so no method is scored on data it calibrated against.

Writes bench/results/instance.json (one object per row) and appends a markdown table
to docs/benchmarks.md, with the machine it ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from models.data import DEFAULT_ARCH, load_dataset
from models.device import get_device
from models.metrics import evaluate
from models.train import predict, train_model
from models.unlearn import UnlearnRequest, get_method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD_ROWS = ["retrain", "paper_ga", "paper_ga_adv", "paper_full", "lethe", "lethe_relabel", "lethe_retrain_like"]
# Ablations of Lethe's default (models/unlearn/instance.py, LetheConfig): each row switches one
# choice off (or the paper's components on) and keeps everything else.
ABLATIONS = {
    "lethe_ce_replay": {"replay_loss": "ce", "replay_focus": 0.0},   # labels instead of the teacher's logits, no focus
    "lethe_no_focus": {"replay_focus": 0.0},                          # teacher logits, random replay only
    "lethe_no_guard": {"guard_drop": 100.0, "repair_tol": 100.0},     # no rollback, no repair
    "lethe_plus_adv": {"use_adv": True},                              # + the paper's adversarial examples
    "lethe_plus_importance": {"use_importance": True},                # + the paper's MAS anchor
}


def _train(d, x, y, seed, device):
    return train_model(DEFAULT_ARCH[d.name], x, y, input_shape=d.input_shape, num_classes=d.num_classes,
                       seed=seed, device=device)


def _row(dataset, k, seed, method, metrics, seconds, retrain_seconds, stats=None):
    row = {"dataset": dataset, "k": k, "seed": seed, "method": method,
           "ua": metrics["ua"], "ra": metrics["ra"], "ta": metrics["ta"], "mia": metrics["mia_efficacy"],
           "loss_auc": metrics["loss_auc"], "seconds": seconds, "retrain_seconds": retrain_seconds,
           "speedup": retrain_seconds / seconds if seconds else None}
    if stats:
        row["steps"] = stats.get("steps")
        row["converged"] = stats.get("converged")
    return row


def run(datasets, ks, seeds, methods, paper_max_k, continual, device, ablation_ks=()):
    rows = []
    for name in datasets:
        d = load_dataset(name)
        half = len(d.x_test) // 2
        holdout = (d.x_test[:half], d.y_test[:half])
        test = (d.x_test[half:], d.y_test[half:])
        base_seed = 0
        t0 = time.perf_counter()
        served = _train(d, d.x_train, d.y_train, base_seed, device)
        print(f"[{name}] served model trained in {time.perf_counter() - t0:.1f}s", flush=True)
        for seed in seeds:
            for k in ks:
                g = torch.Generator().manual_seed(1000 * seed + k)
                perm = torch.randperm(len(d.x_train), generator=g)
                fi, ri = perm[:k], perm[k:]
                forget = (d.x_train[fi], d.y_train[fi])
                retain = (d.x_train[ri], d.y_train[ri])
                orig_pred = predict(served, forget[0])

                t = time.perf_counter()
                retrained = _train(d, retain[0], retain[1], base_seed, device)
                retrain_s = time.perf_counter() - t
                m = evaluate(retrained, forget=forget, retain=retain, test=test, original_pred=orig_pred)
                rows.append(_row(name, k, seed, "retrain", m, retrain_s, retrain_s))
                _print(rows[-1])
                extra = list(ABLATIONS) if k in ablation_ks else []
                for method in methods + extra:
                    if method == "retrain":
                        continue
                    if method.startswith("paper") and k > paper_max_k:
                        continue
                    objective, targets, fn, options = "misclassify", None, method, {}
                    if method in ABLATIONS:
                        fn, options = "lethe", ABLATIONS[method]
                    if method == "lethe_relabel":
                        objective, fn = "relabel", "lethe"
                        tg = torch.Generator().manual_seed(seed)
                        targets = (forget[1] + torch.randint(1, d.num_classes, (k,), generator=tg)) % d.num_classes
                    elif method == "lethe_retrain_like":
                        objective, fn = "retrain_like", "lethe"
                    req = UnlearnRequest(forget[0], forget[1], objective=objective, target_labels=targets,
                                         retain_x=retain[0], retain_y=retain[1],
                                         holdout_x=holdout[0], holdout_y=holdout[1], seed=seed, options=options)
                    t = time.perf_counter()
                    res = get_method(fn)(served, req)
                    secs = time.perf_counter() - t
                    m = evaluate(res.model, forget=forget, retain=retain, test=test, original_pred=orig_pred)
                    rows.append(_row(name, k, seed, method, m, secs, retrain_s, res.stats))
                    _print(rows[-1])
            if continual:
                rows.extend(_continual(d, served, seed, test, device))
    return rows


def _continual(d, served, seed, test, device, requests=16, per_request=8):
    """16 requests of 8 instances, each applied to the model the previous one produced."""
    g = torch.Generator().manual_seed(5000 + seed)
    perm = torch.randperm(len(d.x_train), generator=g)
    forgotten = perm[:requests * per_request]
    model, secs = served, 0.0
    for i in range(requests):
        fi = perm[i * per_request:(i + 1) * per_request]
        ri = perm[(i + 1) * per_request:]  # everything not yet forgotten, minus this request
        req = UnlearnRequest(d.x_train[fi], d.y_train[fi], retain_x=d.x_train[ri], retain_y=d.y_train[ri], seed=seed)
        t = time.perf_counter()
        model = get_method("lethe")(model, req).model
        secs += time.perf_counter() - t
    ri = perm[requests * per_request:]
    forget = (d.x_train[forgotten], d.y_train[forgotten])
    retain = (d.x_train[ri], d.y_train[ri])
    t = time.perf_counter()
    retrained = _train(d, retain[0], retain[1], 0, device)
    retrain_s = time.perf_counter() - t
    out = []
    m = evaluate(retrained, forget=forget, retain=retain, test=test)
    out.append(_row(d.name, requests * per_request, seed, "retrain_continual", m, retrain_s, retrain_s))
    _print(out[-1])
    m = evaluate(model, forget=forget, retain=retain, test=test)
    # against retraining once per request, which is what a service without unlearning pays
    out.append(_row(d.name, requests * per_request, seed, "lethe_continual", m, secs, retrain_s * requests))
    _print(out[-1])
    return out


_PARTIAL: dict = {"path": None, "rows": []}


def _print(r):
    # every row is also saved as it comes, so a run stopped early keeps what it measured
    if _PARTIAL["path"]:
        _PARTIAL["rows"].append(r)
        with open(_PARTIAL["path"], "w") as f:
            json.dump({"machine": machine(), "partial": True, "rows": _PARTIAL["rows"]}, f, indent=1)
    print(f"{r['dataset']:8s} k={r['k']:<4d} seed={r['seed']} {r['method']:20s} UA={r['ua']:6.1f} RA={r['ra']:6.2f} "
          f"TA={r['ta']:6.2f} MIA={r['mia']:6.1f} AUC={r['loss_auc']:.3f} {r['seconds']:7.2f}s "
          f"x{r['speedup']:.1f}", flush=True)


def machine() -> str:
    dev = get_device()
    gpu = torch.cuda.get_device_name(0) if dev.type == "cuda" else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {dev} ({gpu})"


def markdown(rows) -> str:
    head = "| dataset | k | seed | method | UA | RA | TA | MIA-eff. | loss AUC | s | retrain s | speed-up |\n" \
           "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r['dataset']} | {r['k']} | {r['seed']} | {r['method']} | {r['ua']:.1f} | {r['ra']:.2f} | {r['ta']:.2f} | "
        f"{r['mia']:.1f} | {r['loss_auc']:.3f} | {r['seconds']:.2f} | {r['retrain_seconds']:.2f} | {r['speedup']:.1f}x |\n"
        for r in rows)
    return head + body


def summary(rows) -> str:
    """Mean (min..max) over seeds of TA minus the retrained model's TA, UA and speed-up."""
    import statistics as st
    retrain = {(r["dataset"], r["k"], r["seed"]): r for r in rows if r["method"] in ("retrain", "retrain_continual")}
    groups: dict = {}
    for r in rows:
        if r["method"] in ("retrain", "retrain_continual"):
            continue
        base = retrain.get((r["dataset"], r["k"], r["seed"]))
        if base is None:
            continue
        g = groups.setdefault((r["dataset"], r["k"], r["method"]), [])
        g.append((r["ta"] - base["ta"], r["ua"], r["speedup"], r["loss_auc"] - base["loss_auc"], r["ta"]))
    head = "| dataset | k | method | seeds | TA − retrain TA, mean (worst) | UA mean (min) | AUC − retrain AUC | speed-up mean (min) |\n" \
           "|---|---|---|---|---|---|---|---|\n"
    body = ""
    for (ds, k, m), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        d_ta, ua, sp, d_auc = [x[0] for x in g], [x[1] for x in g], [x[2] for x in g], [x[3] for x in g]
        body += (f"| {ds} | {k} | {m} | {len(g)} | {st.mean(d_ta):+.2f} ({min(d_ta):+.2f}) | {st.mean(ua):.1f} ({min(ua):.1f}) | "
                 f"{st.mean(d_auc):+.3f} | {st.mean(sp):.1f}x ({min(sp):.1f}x) |\n")
    return head + body


def write(rows, out, doc, argv, started):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"machine": machine(), "argv": argv or [], "rows": rows}, f, indent=1)
    if doc:
        with open(doc, "a") as f:
            f.write(f"\n## Instance-wise unlearning — run of {started}\n\n"
                    f"Machine: {machine()}. Command: `python -m bench.instance {' '.join(argv or [])}`.\n\n"
                    "Summary over seeds (each row against the model retrained without the same D_f in the same run):\n\n")
            f.write(summary(rows))
            f.write("\n<details><summary>All rows</summary>\n\n")
            f.write(markdown(rows))
            f.write("\n</details>\n")
    print(f"wrote {out}" + (f" and appended to {doc}" if doc else ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="digits,mnist5k")
    p.add_argument("--ks", default="1,8,32,128")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(METHOD_ROWS))
    p.add_argument("--paper-max-k", type=int, default=32,
                   help="skip the paper rows above this k (PGD-100 x 20 examples per instance costs minutes)")
    p.add_argument("--no-continual", action="store_true")
    p.add_argument("--ablation-ks", default="",
                   help="comma-separated k at which the ablation rows of Lethe's default also run")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="only merge result files of parallel runs into --out and --doc")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "instance.json"))
    p.add_argument("--doc", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    a = p.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    started = time.strftime('%Y-%m-%d %H:%M')
    if a.merge:
        rows = [r for path in a.merge for r in json.load(open(path))["rows"]]
        return write(rows, a.out, a.doc, argv, started)
    device = get_device()
    _PARTIAL["path"] = a.out + ".partial"
    rows = run(a.datasets.split(","), [int(k) for k in a.ks.split(",")], [int(s) for s in a.seeds.split(",")],
               a.methods.split(","), a.paper_max_k, not a.no_continual, device,
               ablation_ks={int(k) for k in a.ablation_ks.split(",") if k})
    write(rows, a.out, a.doc if a.doc != "-" else None, argv, started)


if __name__ == "__main__":
    main()
