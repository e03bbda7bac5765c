"""Benchmark: exact unlearning (SISA, ARCANE) and PUMA vs full retraining, in one run.

    python -m bench.exact                                   # the issue's grid (adult, mnist5k)
    python -m bench.exact --datasets adult --shards 10 --slices 1 --deletions 1

For each dataset: the monolithic model (models/train.py recipe) is trained once; for each
deletion count k a random D_f (seeded) is drawn and the monolithic model is retrained from
scratch without it (``retrain``: the denominator of every speed-up in that k block). Each
SISA (S, R) ensemble and the ARCANE ensemble is trained once, then every deletion batch
is applied to that same trained ensemble (not cumulatively). ``seconds`` = wall time of
the deletion batch alone (plan, retrain of the affected shards, new ensemble); PUMA's is
the last-layer patch of the monolithic model. ``accuracy`` = test accuracy of the model
after the deletion; ``monolithic_accuracy`` = the monolithic model before any deletion.

Writes bench/results/exact.json and appends a markdown section to docs/benchmarks.md.
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
from models.unlearn.arcane import train_arcane
from models.unlearn.shards import ExactConfig, MemoryStore, data_from
from models.unlearn.sisa import train_sisa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows_for(d, x, y, ids, test, ks, shards_list, slices_list, arcane_rho, arcane_slices, log):
    arch, epochs = DEFAULT_ARCH[d.name], DEFAULT_EPOCHS[DEFAULT_ARCH[d.name]]
    rows = []
    t = time.perf_counter()
    mono = train_model(arch, x, y, input_shape=d.input_shape, num_classes=d.num_classes, seed=0, device="cpu")
    mono_s = time.perf_counter() - t
    mono_acc = accuracy(mono, *test)
    log(f"[{d.name}] monolithic {arch}: {mono_acc:.2f} % in {mono_s:.1f}s ({len(y)} rows)")
    forgets, retrain = {}, {}
    for k in ks:
        perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(1000 + k)).tolist()
        f = sorted(perm[:k])
        keep = sorted(perm[k:])
        forgets[k] = ([ids[i] for i in f], torch.tensor(f), torch.tensor(keep))
        t = time.perf_counter()
        m = train_model(arch, x[keep], y[keep], input_shape=d.input_shape, num_classes=d.num_classes, seed=0,
                        device="cpu")
        retrain[k] = time.perf_counter() - t
        row = dict(dataset=d.name, method="retrain", shards=1, slices=1, deletions=k, seconds=retrain[k],
                   retrain_seconds=retrain[k], accuracy=accuracy(m, *test), monolithic_accuracy=mono_acc,
                   samples=epochs * len(keep), retrain_samples=epochs * len(keep))
        rows.append(row)
        log(row)
    data = data_from(ids, x, y)

    def deletions(kind, model, shards, slices, train_s):
        for k in ks:
            fids = forgets[k][0]
            t = time.perf_counter()
            new, st = get_method(kind).unlearn(model, fids, data, store=model.store)
            sec = time.perf_counter() - t
            row = dict(dataset=d.name, method=kind, shards=shards, slices=slices, deletions=k, seconds=sec,
                       retrain_seconds=retrain[k], accuracy=accuracy(new, *test), monolithic_accuracy=mono_acc,
                       train_seconds=train_s, retrained_members=st["retrained_members"],
                       retrained_slices=st["retrained_slices"], reused_slices=st["reused_slices"],
                       samples=st["samples"], retrain_samples=epochs * (len(ids) - k),
                       accuracy_before=accuracy(model, *test))
            rows.append(row)
            log(row)

    for S in shards_list:
        for R in slices_list:
            cfg = ExactConfig(kind="sisa", arch=arch, dataset=d.name, input_shape=d.input_shape, classes=d.classes,
                              shards=S, slices=R, epochs=epochs, seed=0)
            t = time.perf_counter()
            model = train_sisa(cfg, ids, x, y, store=MemoryStore())
            deletions("sisa", model, S, R, time.perf_counter() - t)
    cfg = ExactConfig(kind="arcane", arch="ae1c", dataset=d.name, input_shape=d.input_shape, classes=d.classes,
                      shards=d.num_classes, slices=arcane_slices, epochs=epochs, seed=0, rho=arcane_rho, lr=3e-3)
    t = time.perf_counter()
    model = train_arcane(cfg, ids, x, y, store=MemoryStore())
    deletions("arcane", model, d.num_classes, arcane_slices, time.perf_counter() - t)
    for k in ks:
        fids, f, keep = forgets[k]
        req = UnlearnRequest(forget_x=x[f], forget_y=y[f], retain_x=x[keep], retain_y=y[keep])
        t = time.perf_counter()
        out = get_method("puma")(mono, req)
        sec = time.perf_counter() - t
        row = dict(dataset=d.name, method="puma", shards=1, slices=1, deletions=k, seconds=sec,
                   retrain_seconds=retrain[k], accuracy=accuracy(out.model, *test), monolithic_accuracy=mono_acc,
                   forget_accuracy=accuracy(out.model, x[f], y[f]), forget_accuracy_before=accuracy(mono, x[f], y[f]))
        rows.append(row)
        log(row)
    return rows


def _table(rows) -> str:
    out = ["| dataset | method | S | R | deletions | s | retrain s | speed-up | work speed-up | retrained slices | "
           "acc. | monolithic acc. | gap (pt) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = r["retrain_seconds"] / r["seconds"] if r["seconds"] else float("inf")
        work = (f"{r['retrain_samples'] / r['samples']:.1f}x" if r.get("samples") else
                ("no retraining" if "samples" in r else "n/a"))
        sl = r.get("retrained_slices", "")
        out.append(f"| {r['dataset']} | {r['method']} | {r['shards']} | {r['slices']} | {r['deletions']} | "
                   f"{r['seconds']:.2f} | {r['retrain_seconds']:.2f} | {sp:.1f}x | {work} | {sl} | {r['accuracy']:.2f} | "
                   f"{r['monolithic_accuracy']:.2f} | {r['accuracy'] - r['monolithic_accuracy']:+.2f} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", default="adult,mnist5k")
    p.add_argument("--shards", default="1,5,10,20")
    p.add_argument("--slices", default="1,5")
    p.add_argument("--deletions", default="1,10,100")
    p.add_argument("--subsample", type=int, default=0, help="use only the first N training rows (0 = all)")
    p.add_argument("--arcane-slices", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave the default)")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--append-json", action="store_true",
                   help="keep the rows of other datasets already in bench/results/exact.json")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    ks = [int(v) for v in a.deletions.split(",")]
    shards = [int(v) for v in a.shards.split(",")]
    slices = [int(v) for v in a.slices.split(",")]
    rows = []
    t0 = time.perf_counter()
    for name in a.datasets.split(","):
        d = load_dataset(name)
        n = a.subsample or len(d.y_train)
        x, y, ids = d.x_train[:n], d.y_train[:n], d.ids_train[:n]
        rho = 1.0 if name == "adult" else 0.5  # k-center on 30k adult rows per class would dominate; see docs
        rows += _rows_for(d, x, y, ids, (d.x_test, d.y_test), ks, shards, slices, rho, a.arcane_slices,
                          lambda m: print(m, flush=True))
    out = os.path.join(ROOT, "bench", "results", "exact.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    kept = []
    if a.append_json and os.path.exists(out):
        done = {r["dataset"] for r in rows}
        with open(out) as f:
            kept = [r for r in json.load(f) if r["dataset"] not in done]
    with open(out, "w") as f:
        json.dump(kept + rows, f, indent=1)
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, cpu, "
               f"{torch.get_num_threads()} torch threads")
    cmd = "python -m bench.exact " + " ".join(argv if argv is not None else os.sys.argv[1:])
    section = (f"\n## Exact unlearning — run of {time.strftime('%Y-%m-%d')}\n\nMachine: {machine}. Command: "
               f"`{cmd.strip()}`. Total wall time {time.perf_counter() - t0:.0f} s.\n\n{_table(rows)}\n")
    print(section)
    if not a.no_docs:
        with open(os.path.join(ROOT, "docs", "benchmarks.md"), "a") as f:
            f.write(section)


if __name__ == "__main__":
    main()
