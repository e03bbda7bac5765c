"""Benchmark: exact unlearning (ARCANE, SISA) and PUMA against full retraining, per seed.

    nice -n 10 python -m bench.exact --threads 1                        # ARCANE + SISA S=10 R=5, seeds 0-2
    python -m bench.exact --datasets adult --methods arcane --seeds 0 --deletions 1

For each dataset and seed: the monolithic model (models/train.py recipe, that seed) is
trained once; for each deletion count k a random D_f (drawn from the seed) is removed and the
monolithic model is retrained from scratch without it (``retrain``: the denominator of every
speed-up of that (seed, k)). Each ensemble (ARCANE with its default learner for the data,
``models/unlearn/oneclass.py``; SISA with S shards and R slices) is trained once per seed,
then every deletion batch is applied to that same trained ensemble (not cumulatively).
``seconds`` = wall time of the deletion batch alone (plan, retrain of the affected members,
new ensemble); PUMA's is the last-layer patch of the monolithic model. ``accuracy`` = test
accuracy after the deletion; ``monolithic_accuracy`` = the monolithic model of that seed
before any deletion; ``samples`` / ``retrain_samples`` = training examples processed (epochs x
rows), the load-independent cost.

Writes bench/results/exact.json (``--append-json`` keeps the rows of other (dataset, method,
seed) cells); the table in docs/benchmarks.md is rendered from it by ``python -m bench.render``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from models.data import DEFAULT_ARCH, load_dataset
from models.train import DEFAULT_EPOCHS, accuracy, train_model
from models.unlearn import UnlearnRequest, get_method
from models.unlearn import oneclass
from models.unlearn.arcane import train_arcane
from models.unlearn.shards import ExactConfig, MemoryStore, data_from
from models.unlearn.sisa import train_sisa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "results", "exact.json")


def forget_draw(n: int, k: int, seed: int) -> tuple[list[int], list[int]]:
    """D_f of size k and the rest, drawn from (seed, k); seed 0 draws what the single-seed runs drew."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + k + 100_000 * seed)).tolist()
    return sorted(perm[:k]), sorted(perm[k:])


def _rows_for(d, x, y, ids, test, ks, seed, methods, shards, slices, arcane_slices, arcane_rho, log,
              retrain_once=False):
    arch, epochs = DEFAULT_ARCH[d.name], DEFAULT_EPOCHS[DEFAULT_ARCH[d.name]]
    base = dict(dataset=d.name, seed=seed)
    rows = []
    t = time.perf_counter()
    mono = train_model(arch, x, y, input_shape=d.input_shape, num_classes=d.num_classes, seed=seed, device="cpu")
    mono_s = time.perf_counter() - t
    mono_acc = accuracy(mono, *test)
    log(f"[{d.name} seed {seed}] monolithic {arch}: {mono_acc:.2f} % in {mono_s:.1f}s ({len(y)} rows)")
    forgets, retrain = {}, {}
    for k in sorted(ks, reverse=True):
        f, keep = forget_draw(len(ids), k, seed)
        forgets[k] = ([ids[i] for i in f], torch.tensor(f), torch.tensor(keep))
        if retrain_once and retrain:  # the retrain without the largest D_f stands for every k (rows say so)
            retrain[k] = retrain[max(ks)]
            continue
        t = time.perf_counter()
        m = train_model(arch, x[keep], y[keep], input_shape=d.input_shape, num_classes=d.num_classes, seed=seed,
                        device="cpu")
        retrain[k] = time.perf_counter() - t
        row = dict(base, method="retrain", shards=1, slices=1, deletions=k, seconds=retrain[k],
                   retrain_seconds=retrain[k], accuracy=accuracy(m, *test), monolithic_accuracy=mono_acc,
                   samples=epochs * len(keep), retrain_samples=epochs * len(keep))
        rows.append(row)
        log(row)
    data = data_from(ids, x, y)

    def deletions(kind, model, n_members, n_slices, train_s, extra):
        before = accuracy(model, *test)
        for k in ks:
            t = time.perf_counter()
            new, st = get_method(kind).unlearn(model, forgets[k][0], data, store=model.store)
            sec = time.perf_counter() - t
            row = dict(base, method=kind, shards=n_members, slices=n_slices, deletions=k, seconds=sec,
                       retrain_seconds=retrain[k], accuracy=accuracy(new, *test), monolithic_accuracy=mono_acc,
                       retrain_timed_without=max(ks) if retrain_once else k, train_seconds=train_s, retrained_members=st["retrained_members"],
                       retrained_slices=st["retrained_slices"], reused_slices=st["reused_slices"],
                       samples=st["samples"], retrain_samples=epochs * (len(ids) - k), accuracy_before=before,
                       **extra)
            rows.append(row)
            log(row)

    if "sisa" in methods:
        cfg = ExactConfig(kind="sisa", arch=arch, dataset=d.name, input_shape=d.input_shape, classes=d.classes,
                          shards=shards, slices=slices, epochs=epochs, seed=seed)
        t = time.perf_counter()
        model = train_sisa(cfg, ids, x, y, store=MemoryStore())
        deletions("sisa", model, shards, slices, time.perf_counter() - t, {})
    if "arcane" in methods:
        default = oneclass.defaults(d.input_shape)
        cfg = ExactConfig(kind="arcane", arch="ae1c", dataset=d.name, input_shape=d.input_shape, classes=d.classes,
                          shards=d.num_classes, slices=arcane_slices, epochs=default["epochs"], seed=seed,
                          rho=arcane_rho, lr=default["lr"])
        t = time.perf_counter()
        model = train_arcane(cfg, ids, x, y, store=MemoryStore())  # fills in the default learner
        deletions("arcane", model, d.num_classes, arcane_slices, time.perf_counter() - t,
                  dict(learner=cfg.learner, aggregation=cfg.aggregation, arch_params=cfg.arch_params, rho=cfg.rho,
                       epochs=cfg.epochs))
    if "puma" in methods:
        for k in ks:
            fids, f, keep = forgets[k]
            req = UnlearnRequest(forget_x=x[f], forget_y=y[f], retain_x=x[keep], retain_y=y[keep])
            t = time.perf_counter()
            out = get_method("puma")(mono, req)
            sec = time.perf_counter() - t
            row = dict(base, method="puma", shards=1, slices=1, deletions=k, seconds=sec,
                       retrain_seconds=retrain[k], accuracy=accuracy(out.model, *test), monolithic_accuracy=mono_acc,
                       forget_accuracy=accuracy(out.model, x[f], y[f]),
                       forget_accuracy_before=accuracy(mono, x[f], y[f]))
            rows.append(row)
            log(row)
    return rows


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` without the (dataset, method, S, R, seed) cells ``new`` measures, then ``new``. An
    old row with no ``seed`` was measured before the key existed, with seed 0 (the only one
    that benchmark used): it is tagged so. The retrain rows of a (dataset, seed) go with any
    new row of it, since the new rows' speed-ups are against the new retrains."""
    def cell(r):
        return r["dataset"], r["method"], r["shards"], r["slices"], r["seed"]

    done = {cell(r) for r in new}
    fresh = {(r["dataset"], r["seed"]) for r in new}
    kept = []
    for r in old:
        r = {**r, "seed": r.get("seed", 0)}
        if cell(r) in done:
            continue
        if r["method"] == "retrain" and (r["dataset"], r["seed"]) in fresh:
            continue
        kept.append(r)
    return kept + new


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="mnist5k,adult")
    p.add_argument("--methods", default="arcane,sisa", help="of arcane, sisa, puma")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--shards", type=int, default=10, help="SISA S")
    p.add_argument("--slices", type=int, default=5, help="SISA R")
    p.add_argument("--deletions", default="1,10,100")
    p.add_argument("--subsample", type=int, default=0, help="use only the first N training rows (0 = all)")
    p.add_argument("--arcane-slices", type=int, default=5)
    p.add_argument("--arcane-rho", type=float, default=1.0,
                   help="ARCANE representative selection: share of each class kept (1.0, the served default: all)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave the default)")
    p.add_argument("--retrain-once", action="store_true",
                   help="time one retrain per (dataset, seed), without the largest D_f, as every k's denominator "
                        "(k <= 100 rows of thousands: the same cost to within a few per cent)")
    p.add_argument("--append-json", action="store_true",
                   help="keep the rows of bench/results/exact.json this run does not measure")
    p.add_argument("--out", default=OUT)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    ks = [int(v) for v in a.deletions.split(",")]
    methods = set(a.methods.split(","))
    rows = []
    t0, started = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name in a.datasets.split(","):
        d = load_dataset(name)
        n = a.subsample or len(d.y_train)
        x, y, ids = d.x_train[:n], d.y_train[:n], d.ids_train[:n]
        for seed in (int(s) for s in a.seeds.split(",")):
            rows += _rows_for(d, x, y, ids, (d.x_test, d.y_test), ks, seed, methods, a.shards, a.slices,
                              a.arcane_slices, a.arcane_rho, lambda m: print(m, flush=True), a.retrain_once)
    machine = (f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, torch {torch.__version__}, "
               f"cpu, {torch.get_num_threads()} torch threads")
    cmd = "python -m bench.exact " + " ".join(argv if argv is not None else os.sys.argv[1:])
    run = {"command": cmd.strip(), "machine": machine, "started": started, "wall_seconds": round(time.perf_counter() - t0)}
    for r in rows:
        r["run"] = run["started"]
    old = []
    if a.append_json and os.path.exists(a.out):
        with open(a.out) as f:
            old = json.load(f)
    out = merge(old, rows)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    runs_path = os.path.splitext(a.out)[0] + "_runs.json"
    runs = []
    if os.path.exists(runs_path):
        with open(runs_path) as f:
            runs = json.load(f)
    with open(runs_path, "w") as f:
        json.dump(runs + [run], f, indent=1)
    print(f"wrote {a.out} ({len(rows)} new rows, {run['wall_seconds']} s); render with `python -m bench.render`")


if __name__ == "__main__":
    main()
