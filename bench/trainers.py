"""Benchmark: retraining by the model's own trainer vs by Lethe's default loop.

    python -m bench.trainers                         # both models, seeds 0-2
    python -m bench.trainers --models cancer-mlp --seeds 0

A team's model is trained by its own code (here the example trainer plug-in
``tests/plugins/lethe_augtrain``: AdamW, cosine schedule with warm-up, label smoothing, input
noise). For each model and seed: the served ("original") model is trained by that trainer on
the whole training split; a random 1 % of the training rows (seeded) is deleted; the model is
retrained from scratch on the rest (a) by its own trainer with its stored parameters, as
Lethe's ``retrain`` does for a model registered with that trainer, and (b) by Lethe's
built-in loop with the architecture's default recipe, as it did before trainers were
plug-ins. ``accuracy`` is the retrained model's test accuracy, ``original_accuracy`` the
served model's, ``seconds`` the retrain's wall time (CPU, this machine, shared).

Models: the bring-your-own example's data (scikit-learn's breast-cancer table, standardised,
the walkthrough's 80/20 split, an MLP) and an image model (scikit-learn digits, 8x8, the
zoo's CNN).

Writes bench/results/trainers.json and the table between ``<!-- render:trainers -->``
markers in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "trainers.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
FORGET_SHARE = 0.01

MODELS = {
    "cancer-mlp": {"data": "breast-cancer", "arch": "mlp", "arch_params": {"widths": [32]},
                   "params": {"epochs": 40, "batch_size": 32, "lr": 0.003, "weight_decay": 1e-4,
                              "warmup_epochs": 2, "label_smoothing": 0.1, "augment": "noise", "noise_std": 0.1}},
    "digits-cnn": {"data": "digits", "arch": "cnn", "arch_params": None,
                   "params": {"epochs": 20, "batch_size": 64, "lr": 0.003, "weight_decay": 1e-4,
                              "warmup_epochs": 1, "label_smoothing": 0.1, "augment": "noise", "noise_std": 0.1}},
}


def install_example_trainer() -> None:
    """Make the example plug-in visible to importlib.metadata, as ``pip install`` would."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lethe_tests_conftest", os.path.join(ROOT, "tests", "conftest.py"))
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    site = conftest.install_plugin(tempfile.mkdtemp(prefix="lethe-trainers-"), plugin_dir=conftest.TRAINER_PLUGIN_DIR,
                                   group="lethe.trainers")
    sys.path.insert(0, site)
    from models import trainers

    trainers.reload()


def load(name: str):
    """(x_train, y_train, x_test, y_test) as tensors."""
    if name == "breast-cancer":
        from sklearn.datasets import load_breast_cancer

        d = load_breast_cancer()
        x = ((d.data - d.data.mean(0)) / d.data.std(0)).astype(np.float32)
        test = np.random.default_rng(42).random(len(x)) < 0.2  # the walkthrough's split
        y = d.target.astype(np.int64)
        return (torch.from_numpy(x[~test]), torch.from_numpy(y[~test]), torch.from_numpy(x[test]),
                torch.from_numpy(y[test]))
    from models.data import load_dataset

    d = load_dataset(name)
    return d.x_train, d.y_train, d.x_test, d.y_test


def run(models: list[str], seeds: list[int], log=print) -> list[dict]:
    from models.train import Recipe, accuracy, default_recipe, train_model

    torch.set_num_threads(1)
    rows = []
    for name in models:
        spec = MODELS[name]
        x, y, xt, yt = load(spec["data"])
        shape, classes = tuple(x.shape[1:]), int(y.max()) + 1
        for seed in seeds:
            own = Recipe.from_dict({"trainer": "augmented", "trainer_params": spec["params"], "seed": seed})

            def train(recipe, xs, ys):
                t = time.perf_counter()
                m = train_model(spec["arch"], xs, ys, input_shape=shape, num_classes=classes, recipe=recipe,
                                arch_params=spec["arch_params"], device=torch.device("cpu"))
                return m, time.perf_counter() - t

            original, orig_s = train(own, x, y)
            original_acc = accuracy(original, xt, yt)
            g = torch.Generator().manual_seed(1000 + seed)
            keep = torch.randperm(len(x), generator=g)[max(1, round(FORGET_SHARE * len(x))):].sort().values
            for trainer, recipe in (("augmented", own), ("lethe", default_recipe(spec["arch"], seed=seed))):
                m, secs = train(recipe, x[keep], y[keep])
                row = {"model": name, "trainer": trainer, "seed": seed, "accuracy": round(accuracy(m, xt, yt), 3),
                       "original_accuracy": round(original_acc, 3), "seconds": round(secs, 2),
                       "original_seconds": round(orig_s, 2), "train_rows": len(keep),
                       "forget_rows": len(x) - len(keep), "test_rows": len(yt)}
                rows.append(row)
                log(json.dumps(row))
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | trainer | seeds | original accuracy (%) | retrained accuracy (%) | retrained - original (pt) "
           "| retrain seconds |", "|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["trainer"]), []).append(r)

    def ms(v):
        return f"{statistics.mean(v):.2f} ± {statistics.pstdev(v):.2f}"

    for (model, trainer), rs in groups.items():
        label = {"augmented": "own (augmented)", "lethe": "Lethe's default loop",
                 "external": "own pipeline via a retrain order (round trip)"}.get(trainer, trainer)
        out.append(f"| {model} | {label} | {len(rs)} | {ms([r['original_accuracy'] for r in rs])} | "
                   f"{ms([r['accuracy'] for r in rs])} | "
                   f"{ms([r['accuracy'] - r['original_accuracy'] for r in rs])} | "
                   f"{statistics.mean(r['seconds'] for r in rs):.1f} |")
    return "\n".join(out) + "\n"


def render(rows: list[dict]) -> None:
    text = open(DOC).read()
    pattern = re.compile(r"(<!-- render:trainers -->\n).*?(<!-- /render:trainers -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit("docs/benchmarks.md has no <!-- render:trainers --> block")
    open(DOC, "w").write(pattern.sub(lambda m: m.group(1) + table(rows) + m.group(2), text))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--no-write", action="store_true", help="print the rows only")
    a = ap.parse_args(argv)
    install_example_trainer()
    rows = run(a.models, a.seeds)
    if not a.no_write:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            json.dump({"machine": {"platform": platform.platform(), "torch": torch.__version__,
                                   "threads": torch.get_num_threads()},
                       "forget_share": FORGET_SHARE, "rows": rows}, f, indent=1)
        render(rows)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
