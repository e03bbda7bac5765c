"""Benchmark: where ARCANE's accuracy goes (Yan et al., IJCAI 2022; models/unlearn/arcane.py).

    python -m bench.arcane_ablation                       # adult, seed 0
    python -m bench.arcane_ablation --datasets adult,digits --seeds 0,1

ARCANE turns a k-class task into k one-class tasks (sub-model c sees only class c) and
predicts the class whose sub-model accepts x best. Three things can cost accuracy against the
monolithic model, and each is varied here alone, on the same training data, before any deletion:

- the one-class learner's capacity (``OneClassAE`` hidden/code widths, ``ExactConfig.arch_params``);
- the aggregation of the k one-class scores (computed on the same trained sub-models):
  ``mean`` (served: reconstruction error over the sub-model's mean error on its own class),
  ``raw`` (error alone), ``zscore`` (error standardised by its own class's mean and standard
  deviation) and ``pvalue`` (the share of the sub-model's own training errors at or above the
  test error: an empirical one-class p-value, still reading only the sub-model's own class),
  ``calibrated`` (a multinomial logistic regression over the k standardised scores, k x k
  weights and k biases, fitted by L-BFGS on the scores of every training row: an addition to
  the paper's aggregation, which unlike the others reads all classes, so a deletion would have
  to rescore the remaining rows and refit it) and ``test-fit`` (the same regression fitted on
  the test rows it is scored on: not a rule one can serve; it shows whether fitting on rows
  the sub-models were trained on is what limits ``calibrated``);
- representative data selection (rho: share of each class kept by k-center; 1.0 = all);
- the learner itself (``ExactConfig.learner``, models/unlearn/oneclass.py): the MLP
  autoencoder, or MADE, a density estimator whose score is a log-density (``raw`` only).

The first four variants are the configuration every ARCANE bundle had before the learner was
an option (64/16 autoencoder, ``mean`` served); the last two are the defaults since
(``oneclass.defaults``: 512/64 autoencoder, 30 epochs, ``raw`` for images; MADE for tabular
rows) and run on the data they are the default for (``--variants`` picks by label).

Every score a variant uses comes from one sub-model and its own class's data, so each keeps
ARCANE's one-deletion-one-sub-model property (except ``calibrated`` and ``test-fit``, above).
``monolithic`` is the served single network (models/train.py recipe) on the same split. Writes bench/results/arcane_ablation.json; the
table in docs/benchmarks.md is rendered from it by ``python -m bench.render``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from bench.instance import machine
from models.data import DEFAULT_ARCH, load_dataset
from models.train import DEFAULT_EPOCHS, accuracy, train_model
from models.unlearn.arcane import train_arcane
from models.unlearn.shards import ExactConfig, MemoryStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGGREGATIONS = ("mean", "raw", "zscore", "pvalue", "calibrated", "test-fit")
# (label, learner, arch_params, rho, epochs: None = the monolithic arch's, aggregation served)
VARIANTS = [("legacy (bundles before the learner option): AE 64/16, all data", "ae", None, 1.0, None, "mean"),
            ("AE 256/32, all data", "ae", {"hidden": 256, "code": 32}, 1.0, None, "mean"),
            ("AE 16/4, all data", "ae", {"hidden": 16, "code": 4}, 1.0, None, "mean"),
            ("AE 64/16, k-center 50 %", "ae", None, 0.5, None, "mean"),
            ("default (images): AE 512/64, 30 epochs, all data", "ae", {"hidden": 512, "code": 64}, 1.0, 30, "raw"),
            ("default (tabular): MADE 256x2, all data", "made",
             {"hidden": 256, "layers": 2, "min_log_std": -1.5, "mask_seed": 0}, 1.0, None, "raw")]


@torch.no_grad()
def _errors(member, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    return torch.cat([member.errors(x[i:i + batch]) for i in range(0, len(x), batch)])


def calibrator(scores: torch.Tensor, y: torch.Tensor, l2: float = 1e-4, steps: int = 200):
    """Multinomial logistic regression over the (n, k) one-class scores, standardised by their
    mean and standard deviation over ``scores``; deterministic (full-batch L-BFGS from zeros,
    float64). Returns the function mapping scores to logits."""
    mu, sd = scores.double().mean(0), scores.double().std(0).clamp_min(1e-8)
    z = (scores.double() - mu) / sd
    k = scores.shape[1]
    w = torch.zeros(k, k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda s: ((s.double() - mu) / sd) @ w + b


@torch.no_grad()
def aggregate(model, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
              test_y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per aggregation, the predicted class of every test row. Each sub-model's statistics are
    read on its own class's training rows only, except ``calibrated`` (all training rows) and
    ``test-fit`` (fitted on the test rows: a diagnostic, not a rule)."""
    errs = torch.stack([_errors(m, test_x) for m in model.members], 1)   # (n, k)
    own = [_errors(m, train_x[train_y == c]) for c, m in enumerate(model.members)]
    mean = torch.stack([e.mean() for e in own]).clamp_min(1e-8)
    std = torch.stack([e.std() if len(e) > 1 else torch.ones(()) for e in own]).clamp_min(1e-8)
    pval = torch.stack([(e[None, :] >= errs[:, c:c + 1]).float().mean(1) for c, e in enumerate(own)], 1)
    train_scores = -torch.stack([_errors(m, train_x) for m in model.members], 1)
    scores = {"mean": -errs / mean, "raw": -errs, "zscore": -(errs - mean) / std, "pvalue": pval,
              "calibrated": calibrator(train_scores, train_y)(-errs), "test-fit": calibrator(-errs, test_y)(-errs)}
    if model.config.learner == "made":  # a negative log-likelihood can be negative: no ratio to its mean
        scores.pop("mean")
    return {a: s.argmax(1) for a, s in scores.items()}


def run(names, seeds, slices, log=print, variants=None):
    rows = []
    for name in names:
        d = load_dataset(name)
        x, y, tx, ty = d.x_train, d.y_train, d.x_test, d.y_test
        arch = DEFAULT_ARCH[name]
        epochs = DEFAULT_EPOCHS[arch]
        for seed in seeds:
            c = time.process_time()
            mono = train_model(arch, x, y, input_shape=d.input_shape, num_classes=d.num_classes, seed=seed,
                               device="cpu")
            mono_acc, mono_s = accuracy(mono, tx, ty), time.process_time() - c
            log(f"[{name} seed {seed}] monolithic {arch}: {mono_acc:.2f} % ({mono_s:.1f} CPU s)")
            ids = [f"{name}-{i}" for i in range(len(y))]
            for label, learner, params, rho, ep, served_by in VARIANTS:
                if variants and not any(v in label for v in variants):
                    continue
                cfg = ExactConfig(kind="arcane", arch="ae1c", dataset=name, input_shape=d.input_shape,
                                  classes=d.classes, shards=d.num_classes, slices=slices, epochs=ep or epochs,
                                  seed=seed, rho=rho, lr=3e-3, arch_params=params, learner=learner,
                                  aggregation=served_by)
                c = time.process_time()
                model = train_arcane(cfg, ids, x, y, store=MemoryStore())
                cpu = time.process_time() - c
                served = accuracy(model, tx, ty)
                preds = aggregate(model, x, y, tx, ty)
                acc = {a: 100.0 * float((preds[a] == ty).float().mean()) if a in preds else None for a in AGGREGATIONS}
                row = dict(dataset=name, seed=seed, variant=label, learner=learner, served_aggregation=served_by,
                           arch_params=params, rho=rho, slices=slices, epochs=ep or epochs, accuracy=acc,
                           served_accuracy=served, monolithic_accuracy=mono_acc,
                           cpu_seconds=cpu, monolithic_cpu_seconds=mono_s)
                rows.append(row)
                log(f"[{name} seed {seed}] {label}: " + " ".join(f"{a} {v:.2f}" for a, v in acc.items() if v is not None)
                    + f" (served {served:.2f}; monolithic {mono_acc:.2f}; {cpu:.1f} CPU s)")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="adult")
    p.add_argument("--seeds", default="0")
    p.add_argument("--slices", type=int, default=5, help="training-state blocks per sub-model (bench.exact: 5)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default="", help="comma-separated parts of variant labels to run (default: all)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "arcane_ablation.json"))
    p.add_argument("--append", action="store_true", help="add the rows to those already in --out")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = run(a.datasets.split(","), [int(s) for s in a.seeds.split(",")], a.slices,
               variants=[v for v in a.variants.split(",") if v])
    command = " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--append")
    doc = {"machine": machine(), "started": started, "commands": [], "rows": []}
    if a.append and os.path.exists(a.out):
        with open(a.out) as f:
            doc = json.load(f)
    doc["commands"].append(command)
    doc["rows"] += rows
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {a.out}; render the table with `python -m bench.render`")


if __name__ == "__main__":
    main()
