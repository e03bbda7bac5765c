"""Benchmark: full U-LiRA (models/ulira.py) of every method, the method run inside each shadow.

    python -m bench.ulira                                    # the default grid (see --help)
    python -m bench.ulira --datasets digits --scenarios 8 --shadows 8 --methods noop,retrain,lethe_retrain_like

Per (dataset, scenario k, target-set seed): a target set T of 2k training examples; the base pool
is the rest of the training split plus the evaluation half of the test split; `--shadows`
shadow models train on half the base pool and half of T; each method unlearns each shadow's
k targets (its retained data: the shadow's own base half; `retrain_like`'s held-out data: the
calibration half of the test split, which no shadow trained on); the attack tells "unlearned"
from "never trained on" per example, leave-one-shadow-out. `noop` (the shadow unchanged) and
`retrain` (trained from scratch on the shadow's base half) bracket every cell: a method whose
AUC is near retrain's is indistinguishable from retraining to this attacker; near noop's, it
forgot nothing it can show.

Times are CPU seconds of this process (torch on one thread), so pauses and a loaded machine do
not inflate them: `cpu_seconds` per method run, `train_seconds` per shadow (= one retraining at
the shadow's size); `seconds` is the wall time, for reference.

Rows go to bench/results/ulira.json (saved as they come to <out>.partial);
`python -m bench.render` writes the tables into README.md and docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from bench.instance import DEFAULT_METHOD, METHOD_ROWS, _train, machine
from models.data import load_dataset
from models.device import get_device
from models.metrics import ShadowBank, logit_confidence
from models.ulira import run_ulira, train_shadows
from models.unlearn import UnlearnRequest, get_method
from models.unlearn.instance import privacy_signal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_METHODS = ["noop", "retrain", "lethe_retrain_like", "lethe", "finetune", "neggrad_plus", "random_labels",
                   "l1_sparse", "scrub", "salun"]


def target_split(d, scenario: str, seed: int, device=None):
    """(target indices T, base-from-train indices, k): T is 2k training examples -- at random
    ("8", "10pct"), or ("hard32") drawn from the 8k examples a model trained without them finds
    hardest: the atypical ones a model memorises, where membership leaks most (Hayes et al.
    2025 and RULI, Naderloui et al. 2025: random targets understate the risk)."""
    n = len(d.x_train)
    hard = scenario.startswith("hard")
    k = int(round(0.1 * n)) if scenario == "10pct" else int(scenario[4:] if hard else scenario)
    g = torch.Generator().manual_seed(7919 * (seed + 1) + k + (500_000 if hard else 0))
    if hard:
        pool = torch.from_numpy(np.argsort(hardness(d, device), kind="stable")[:min(8 * k, n // 2)].copy())
        chosen = pool[torch.randperm(len(pool), generator=g)[:2 * k]]
        rest = torch.from_numpy(np.setdiff1d(np.arange(n), chosen.numpy()))
        return chosen, rest, k
    perm = torch.randperm(n, generator=g)
    return perm[:2 * k], perm[2 * k:], k


_HARDNESS: dict = {}


def hardness(d, device=None) -> np.ndarray:
    """Per training example: phi under a model trained on the other half of the training split
    (two models on complementary halves, training seed 0): low = hard to get right unseen."""
    if d.name not in _HARDNESS:
        n = len(d.x_train)
        half = torch.randperm(n, generator=torch.Generator().manual_seed(4242)) < n // 2
        out = np.empty(n)
        for side in (half, ~half):
            m = _train(d, d.x_train[side], d.y_train[side], 0, device or get_device())
            out[(~side).numpy()] = logit_confidence(m, d.x_train[~side], d.y_train[~side])
        _HARDNESS[d.name] = out
    return _HARDNESS[d.name]


class Unlearner:
    """The (model, forget, retain, seed) -> model callable of one benchmark row."""

    def __init__(self, d, method: str, calib, device):
        self.d, self.method, self.calib, self.device = d, method, calib, device
        self.seconds, self.cpu_seconds, self.runs, self.not_converged = 0.0, 0.0, 0, 0
        self.rule_passes = self.rule_runs = 0
        self.ref_cpu_seconds = 0.0

    def __call__(self, model, forget, retain, seed):
        t, c = time.perf_counter(), time.process_time()
        gap = None
        if self.method.endswith("_ref"):  # per-example gaps from reference models: an offline cost, timed apart
            c_ref = time.process_time()
            gap = reference_gap(self.d, forget, retain, seed, self.device)
            self.ref_cpu_seconds += time.process_time() - c_ref
            c = time.process_time()
        if self.method == "noop":
            out = model
        elif self.method == "retrain":
            out = _train(self.d, *retain, seed, self.device)
        else:
            fn, objective, options = METHOD_ROWS[self.method.removesuffix("_ref")]
            targets = None
            if objective == "relabel":
                g = torch.Generator().manual_seed(seed)
                targets = (forget[1] + torch.randint(1, self.d.num_classes, (len(forget[1]),), generator=g)) \
                    % self.d.num_classes
            res = get_method(fn)(model, UnlearnRequest(
                *forget, objective=objective, target_labels=targets, retain_x=retain[0], retain_y=retain[1],
                holdout_x=self.calib[0], holdout_y=self.calib[1], seed=seed, options=dict(options),
                reference_gap=gap))
            out = res.model
            self.not_converged += not bool(res.stats.get("converged", True))
        self.seconds += time.perf_counter() - t
        self.cpu_seconds += time.process_time() - c  # immune to the pauses and load of a shared machine
        self.runs += 1
        passed = stopping_rule_passes(model, out, forget, retain, self.calib, seed)
        if passed is not None:
            self.rule_runs += 1
            self.rule_passes += passed
        return out


REFERENCE_MODELS = 4


def reference_gap(d, forget, retain, seed, device) -> torch.Tensor:
    """Each forget instance's own membership gap, from REFERENCE_MODELS models trained on
    complementary halves of the model's training set (metrics.ShadowBank): what a service would
    compute once per exact model version, LiRA's offline calibration."""
    x, y = torch.cat([forget[0], retain[0]]), torch.cat([forget[1], retain[1]])
    bank = ShadowBank.train(lambda xs, ys, s: _train(d, xs, ys, s, device), x, y, REFERENCE_MODELS, seed=50_000 + seed)
    k = len(forget[0])
    return torch.from_numpy(bank.mu_in[:k] - bank.mu_out[:k]).float()


def stopping_rule_passes(original, unlearned, forget, retain, calib, seed) -> bool | None:
    """Would `retrain_like`'s stopping rule (metrics.RetrainLikeTest, calibrated on `original` as
    Lethe calibrates it) accept `unlearned`? Run on every row: the rule has power where it accepts
    `retrain` and refuses `noop` (which it refuses by construction)."""
    req = UnlearnRequest(*forget, objective="retrain_like", retain_x=retain[0], retain_y=retain[1],
                         holdout_x=calib[0], holdout_y=calib[1], seed=seed)
    sig = privacy_signal(original, unlearned, req)
    return sig["retrain_like_passes"] if sig else None


def run(datasets, scenarios, seeds, methods, n_shadows, device, emit, flip_max_k=32):
    for name in datasets:
        d = load_dataset(name)
        half = len(d.x_test) // 2
        calib, evalset = (d.x_test[:half], d.y_test[:half]), (d.x_test[half:], d.y_test[half:])
        for seed in seeds:
            for scenario in scenarios:
                ti, bi, k = target_split(d, scenario, seed, device)
                base = (torch.cat([d.x_train[bi], evalset[0]]), torch.cat([d.y_train[bi], evalset[1]]))
                targets = (d.x_train[ti], d.y_train[ti])
                c = time.process_time()
                shadows = train_shadows(lambda x, y, s: _train(d, x, y, s, device), base, targets, n_shadows, seed)
                train_s = (time.process_time() - c) / n_shadows
                print(f"[{name} {scenario} seed {seed}] {n_shadows} shadows, {train_s:.1f} s each", flush=True)
                for method in methods:
                    base_method = method.removesuffix("_ref")
                    if base_method in METHOD_ROWS and METHOD_ROWS[base_method][1] in ("misclassify", "relabel") \
                            and k > flip_max_k:
                        continue  # flipping: minutes per shadow above this k (the instance benchmark has them)
                    u = Unlearner(d, method, calib, device)
                    res = run_ulira(shadows, u)
                    emit({"dataset": name, "scenario": scenario, "k": k, "seed": seed, "method": method,
                          "objective": METHOD_ROWS[base_method][1] if base_method in METHOD_ROWS else None,
                          "shadows": n_shadows, **res, "seconds": u.seconds / max(u.runs, 1),
                          "cpu_seconds": u.cpu_seconds / max(u.runs, 1),
                          "train_seconds": train_s, "not_converged": u.not_converged,
                          "stop_rule_passes": u.rule_passes, "stop_rule_runs": u.rule_runs,
                          "reference_cpu_seconds": u.ref_cpu_seconds / max(u.runs, 1)})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="digits,adult")
    p.add_argument("--scenarios", default="1,8,32,128,10pct,hard32",
                   help="k (random k per shadow), 10pct, or hardK (k among the hardest examples)")
    p.add_argument("--seeds", default="0", help="target-set seeds")
    p.add_argument("--shadows", type=int, default=16, help="shadow models per target set (even, >= 4)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--flip-max-k", type=int, default=32, help="skip misclassify/relabel rows above this k")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", nargs="+", metavar="JSON", help="only merge result files of separate runs into --out")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "ulira.json"))
    a = p.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    if a.merge:
        docs = [json.load(open(path)) for path in a.merge]
        merged = {"machine": docs[0]["machine"], "started": min(d["started"] for d in docs),
                  "commands": [c for d in docs for c in d["commands"]], "default_method": DEFAULT_METHOD,
                  "rows": [r for d in docs for r in d["rows"]]}
        with open(a.out, "w") as f:
            json.dump(merged, f, indent=1)
        return print(f"merged {len(merged['rows'])} rows into {a.out}")
    torch.set_num_threads(a.threads)
    device = get_device()
    doc = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "commands": [" ".join(argv)], "default_method": DEFAULT_METHOD, "rows": []}

    def emit(r):
        doc["rows"].append(r)
        with open(a.out + ".partial", "w") as f:
            json.dump(doc, f, indent=1)
        print(f"{r['dataset']:8s} {r['scenario']:>6s} k={r['k']:<5d} seed={r['seed']} {r['method']:18s} "
              f"U-LiRA AUC={r['ulira_auc']:.3f} TPR@1%={r['ulira_tpr_at_1fpr']:.3f} pairs={r['pairs']} "
              f"{r['cpu_seconds']:.2f} CPU s/run (train {r['train_seconds']:.1f}) nc={r['not_converged']} rule {r['stop_rule_passes']}/{r['stop_rule_runs']}", flush=True)

    run(a.datasets.split(","), a.scenarios.split(","), [int(s) for s in a.seeds.split(",")],
        a.methods.split(","), a.shadows, device, emit, a.flip_max_k)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    os.remove(a.out + ".partial")
    print(f"wrote {a.out}; render the tables with `python -m bench.render`")


if __name__ == "__main__":
    main()
