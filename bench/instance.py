"""Benchmark: instance-wise unlearning, the field's baselines and retraining, in one run.

    python -m bench.instance                                  # the default grid (see --help)
    python -m bench.instance --datasets digits --scenarios 1,8 --seeds 0

Splits (nothing is scored on data a method or its tuning looked at):
  * the training split: D_f is drawn from it (random k, 10 % at random, or one whole class);
  * the test split, in two halves: the *calibration* half is the held-out data `retrain_like`
    calibrates against (and the half Lethe's defaults were chosen on, with forget sets drawn
    from other seeds than the ones scored here); the *evaluation* half gives TA, the
    population attacks' non-members and the per-example audit's non-members.

Per (dataset, scenario, forget-set seed): `--retrain-seeds` models retrained from scratch
without D_f (training seeds 0, 1, ...; seed 0 is the served model's recipe): retraining as a
distribution, the reference of Avg.Gap (SalUn) and of the audit. A `noop` row (the served model
unchanged) shows what a measure says when nothing was forgotten.

Per-example audit (models/metrics.ShadowBank): one bank of shadow models per dataset, trained
on random halves of (training split + evaluation half); every row's model is scored on D_f
against the evaluation half. See models/metrics.py for what it is and is not (the shadows are
trained in/never-seen, not unlearned per method: Hayes et al.'s full U-LiRA costs one
unlearning run per shadow and method).

Rows are saved as they come (<out>.partial); `python -m bench.render` writes the tables.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from models.data import DEFAULT_ARCH, load_dataset
from models.device import get_device
from models.metrics import ShadowBank, avg_gap, evaluate
from models.train import predict, train_model
from models.unlearn import UnlearnRequest, get_method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_METHOD = "lethe_retrain_like"  # the row of what the service runs for a deletion by default
# row name -> (registered method, objective, options)
METHOD_ROWS = {
    "lethe_retrain_like": ("lethe", "retrain_like", {}),
    "lethe": ("lethe", "misclassify", {}),
    "lethe_relabel": ("lethe", "relabel", {}),
    "paper_full": ("paper_full", "misclassify", {}),
    "finetune": ("finetune", "retrain_like", {}),
    "neggrad_plus": ("neggrad_plus", "retrain_like", {}),
    "random_labels": ("random_labels", "retrain_like", {}),
    "l1_sparse": ("l1_sparse", "retrain_like", {}),
    "scrub": ("scrub", "retrain_like", {}),
    "salun": ("salun", "retrain_like", {}),
    "puma": ("puma", "retrain_like", {}),
}
SHADOWS = {"digits": 16, "adult": 16, "mnist5k": 8}  # each trains in seconds (mnist5k: tens of seconds)


def _train(d, x, y, seed, device):
    return train_model(DEFAULT_ARCH[d.name], x, y, input_shape=d.input_shape, num_classes=d.num_classes,
                       seed=seed, device=device)


def forget_split(d, scenario: str, seed: int):
    """(forget indices, retain indices) in the training split for a scenario: an int k (random
    k instances), "10pct" (10 % at random) or "class" (every instance of one class, drawn by seed)."""
    n = len(d.x_train)
    if scenario == "class":
        cls = int(torch.randint(0, d.num_classes, (1,), generator=torch.Generator().manual_seed(seed)))
        mask = d.y_train == cls
        return mask.nonzero().flatten(), (~mask).nonzero().flatten()
    k = int(round(0.1 * n)) if scenario == "10pct" else int(scenario)
    g = torch.Generator().manual_seed(1000 * seed + (k if scenario != "10pct" else 10_000))
    perm = torch.randperm(n, generator=g)
    return perm[:k], perm[k:]


def _row(dataset, scenario, k, seed, method, m, seconds, retrain_seconds, stats=None, **extra):
    stats = stats or {}
    return {"dataset": dataset, "scenario": scenario, "k": k, "seed": seed, "method": method,
            "ua": m["ua"], "ra": m["ra"], "ta": m["ta"], "mia": m["mia_efficacy"], "loss_auc": m["loss_auc"],
            "ulira_auc": m["ulira_auc"], "ulira_tpr_at_1fpr": m["ulira_tpr_at_1fpr"],
            "seconds": seconds, "retrain_seconds": retrain_seconds,
            "speedup": retrain_seconds / seconds if seconds else None,
            "steps": stats.get("steps"), "converged": bool(stats.get("converged", True)), **extra}


class Cell:
    """One (dataset, scenario, seed): D_f, the retrained references and a scorer for any model."""

    def __init__(self, d, bank, scenario, seed, calib, evalset, eval_idx, retrain_seeds, device):
        self.d, self.bank, self.scenario, self.seed = d, bank, scenario, seed
        fi, ri = forget_split(d, scenario, seed)
        self.fi, self.k = fi, len(fi)
        self.forget, self.retain = (d.x_train[fi], d.y_train[fi]), (d.x_train[ri], d.y_train[ri])
        self.calib, self.evalset, self.eval_idx = calib, evalset, eval_idx
        self.retrained, self.retrain_seconds = [], []
        for s in range(retrain_seeds):
            t = time.perf_counter()
            self.retrained.append(_train(d, *self.retain, s, device))
            self.retrain_seconds.append(time.perf_counter() - t)
        self.ref = [self.score(m) for m in self.retrained]

    def score(self, model) -> dict:
        m = evaluate(model, forget=self.forget, retain=self.retain, test=self.evalset)
        m.update(self.bank.audit(model, self.forget, self.fi.numpy(), self.evalset, self.eval_idx))
        return m

    def row(self, method, model_metrics, seconds, stats=None, reference=None, **extra):
        ref = self.ref if reference is None else reference
        return _row(self.d.name, self.scenario, self.k, self.seed, method, model_metrics, seconds,
                    self.retrain_seconds[0], stats, avg_gap=avg_gap(model_metrics, ref),
                    retrain_ulira_auc=float(np.mean([r["ulira_auc"] for r in ref])), **extra)

    def request(self, objective, options):
        targets = None
        if objective == "relabel":
            tg = torch.Generator().manual_seed(self.seed)
            targets = (self.forget[1] + torch.randint(1, self.d.num_classes, (self.k,), generator=tg)) % self.d.num_classes
        return UnlearnRequest(*self.forget, objective=objective, target_labels=targets, retain_x=self.retain[0],
                              retain_y=self.retain[1], holdout_x=self.calib[0], holdout_y=self.calib[1],
                              seed=self.seed, options=dict(options))


def _bank(d, evalset, device, n_shadows):
    """Shadow models on random halves of (training split + evaluation half)."""
    pool_x, pool_y = torch.cat([d.x_train, evalset[0]]), torch.cat([d.y_train, evalset[1]])
    t = time.perf_counter()
    bank = ShadowBank.train(lambda x, y, s: _train(d, x, y, 100 + s, device), pool_x, pool_y, n_shadows)
    print(f"[{d.name}] {n_shadows} shadow models in {time.perf_counter() - t:.0f}s", flush=True)
    return bank


def run(datasets, scenarios, seeds, methods, paper_max_k, retrain_seeds, device, shadows=None, flip_max_k=128):
    rows = []
    for name in datasets:
        d = load_dataset(name)
        half = len(d.x_test) // 2
        calib, evalset = (d.x_test[:half], d.y_test[:half]), (d.x_test[half:], d.y_test[half:])
        eval_idx = np.arange(len(d.x_train), len(d.x_train) + len(evalset[0]))
        bank = _bank(d, evalset, device, shadows or SHADOWS.get(name, 8))
        served = _train(d, d.x_train, d.y_train, 0, device)
        for seed in seeds:
            for scenario in scenarios:
                if scenario == "class" and d.num_classes < 3:
                    continue  # forgetting a whole class of a binary task leaves a one-class model
                cell = Cell(d, bank, scenario, seed, calib, evalset, eval_idx, retrain_seeds, device)
                for s, (model_m, secs) in enumerate(zip(cell.ref, cell.retrain_seconds)):
                    others = cell.ref[:s] + cell.ref[s + 1:]  # retraining's own spread: leave one out
                    _emit(rows, cell.row("retrain", model_m, secs, reference=others, train_seed=s))
                _emit(rows, cell.row("noop", cell.score(served), 0.0, {"steps": 0, "converged": False}))
                for method in methods:
                    fn, objective, options = METHOD_ROWS[method]
                    if method == "paper_full" and cell.k > paper_max_k:
                        continue
                    if objective in ("misclassify", "relabel") and cell.k > flip_max_k:
                        continue  # flipping thousands of instances is label noise the net must memorise
                    t = time.perf_counter()
                    res = get_method(fn)(served, cell.request(objective, options))
                    secs = time.perf_counter() - t
                    extra = {k: res.stats[k] for k in ("df_confidence_change", "df_confidence_change_raw", "df_drop_expected") if k in res.stats}
                    _emit(rows, cell.row(method, cell.score(res.model), secs, res.stats, objective=objective, **extra))
    return rows


_PARTIAL: dict = {"path": None, "rows": []}


def _emit(rows, r):
    rows.append(r)
    if _PARTIAL["path"]:  # every row is also saved as it comes, so a stopped run keeps what it measured
        _PARTIAL["rows"].append(r)
        with open(_PARTIAL["path"], "w") as f:
            json.dump({"machine": machine(), "partial": True, "default_method": DEFAULT_METHOD,
                       "rows": _PARTIAL["rows"]}, f, indent=1)
    print(f"{r['dataset']:8s} {r['scenario']:>6s} k={r['k']:<5d} seed={r['seed']} {r['method']:18s} UA={r['ua']:6.1f} "
          f"RA={r['ra']:6.2f} TA={r['ta']:6.2f} MIA={r['mia']:6.1f} uAUC={r['ulira_auc']:.3f} "
          f"(retrain {r['retrain_ulira_auc']:.3f}) gap={r['avg_gap']:.2f} {r['seconds']:7.2f}s "
          f"conv={r['converged']}", flush=True)


def machine() -> str:
    dev = get_device()
    gpu = torch.cuda.get_device_name(0) if dev.type == "cuda" else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
            f"torch {torch.__version__} ({torch.get_num_threads()} thread), {dev} ({gpu})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="digits,adult,mnist5k")
    p.add_argument("--scenarios", default="1,8,32,128,10pct,class",
                   help="comma-separated: a number k (random k instances), 10pct, class")
    p.add_argument("--seeds", default="0,1,2", help="forget-set seeds")
    p.add_argument("--retrain-seeds", type=int, default=2, help="retrained models per cell (training seeds 0..n-1)")
    p.add_argument("--methods", default=",".join(METHOD_ROWS))
    p.add_argument("--paper-max-k", type=int, default=8,
                   help="skip paper_full above this k (PGD-100 x 20 examples per instance costs minutes)")
    p.add_argument("--shadows", type=int, default=None, help="shadow models per dataset (default: SHADOWS)")
    p.add_argument("--flip-max-k", type=int, default=128,
                   help="skip the misclassify/relabel rows above this k (minutes of whole-network phase each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="only merge result files of separate runs into --out")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "instance.json"))
    a = p.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    if a.merge:
        docs = [json.load(open(path)) for path in a.merge]
        runs = []  # the command of each run merged, flattened when a file was itself a merge
        for d in docs:
            argv_d = d.get("argv", [])
            runs += argv_d[1:] if argv_d[:1] == ["--merge"] else [" ".join(argv_d)]
        merged = {"machine": docs[0]["machine"], "started": docs[0].get("started", "?"),
                  "argv": ["--merge"] + [r for r in runs if r.strip()], "default_method": DEFAULT_METHOD,
                  "rows": [r for d in docs for r in d["rows"]]}
        if any(d.get("partial") for d in docs):
            merged["partial"] = True
        with open(a.out, "w") as f:
            json.dump(merged, f, indent=1)
        return print(f"merged {len(merged['rows'])} rows into {a.out}")
    torch.set_num_threads(a.threads)
    device = get_device()
    _PARTIAL["path"] = a.out + ".partial"
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = run(a.datasets.split(","), a.scenarios.split(","), [int(s) for s in a.seeds.split(",")],
               a.methods.split(","), a.paper_max_k, a.retrain_seeds, device, a.shadows, a.flip_max_k)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"machine": machine(), "started": started, "argv": argv, "default_method": DEFAULT_METHOD,
                   "rows": rows}, f, indent=1)
    print(f"wrote {a.out}; render the tables with `python -m bench.render`")


if __name__ == "__main__":
    main()
