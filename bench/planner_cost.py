"""Benchmark: what the planner's deletions cost against always-retraining, on a model slow enough
to retrain that the choice matters; and where one approximate deletion spends its time.

    python -m bench.planner_cost                                  # adult, MLP 1024-512-256, k = 1 and 8
    python -m bench.planner_cost --ks 1,8 --deletions 5 --seeds 0
    python -m bench.planner_cost --profile mnist5k                # cProfile of one approximate deletion

One exact version per seed: the model trained on every row of the training split (its training
run, CPU s), then the risk job as the worker runs it on an exact version (worker/risk.py:
LETHE_RISK_REFERENCE_MODELS reference models with the model's recipe on complementary halves of
its rows, models/risk.py). Per deletion (k training rows at random, ``--deletions`` per k):

* always-retrain: the recipe from scratch on every other row;
* the planner (``app.jobs.planner.plan``, default settings, the version's training CPU s as its
  recorded training time, each forget row's measured risk and LETHE_RISK_THRESHOLD): retraining
  (the same run as always-retrain's), or the default approximate method aimed at each row's own
  gap, run as ``worker/instance_wise.py`` runs it (a retained sample of LETHE_JOB_RETAIN_ROWS, the
  base model's test accuracy and predictions, the verification metrics, ``app.jobs.publishing``'s
  refusals) and retrained when refused.

Times are CPU seconds of this process (``time.process_time``, torch on one thread): a loaded
machine does not inflate them. The risk job's cost is per exact version: shown apart, and
amortised over the deletions the version serves (``bench.ulira.amortised_risk_jobs``).
Rows: bench/results/planner_cost.json; ``python -m bench.render`` writes the table.
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import dataclasses
import io
import json
import os
import pstats
import shlex
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "results", "planner_cost.json")
DEFAULT_HIDDEN = (1024, 512, 256)


@dataclasses.dataclass
class Version:
    """One exact version: the data it was trained on, its model, recipe and measured risk."""
    d: object
    arch: str
    arch_params: dict | None
    model: torch.nn.Module
    train_cpu: float
    calib: tuple
    risk: object = None
    risk_cpu: float | None = None

    def fit(self, x, y, seed=0):
        from models.train import train_model

        return train_model(self.arch, x, y, input_shape=self.d.input_shape, num_classes=self.d.num_classes,
                           seed=seed, arch_params=self.arch_params)


def _cpu(fn, *args, **kw):
    c = time.process_time()
    out = fn(*args, **kw)
    return out, time.process_time() - c


def train_version(dataset: str, arch: str, arch_params: dict | None) -> Version:
    from models.data import load_dataset

    d = load_dataset(dataset)
    half = len(d.x_test) // 2
    v = Version(d, arch, arch_params, None, 0.0, (d.x_test[:half], d.y_test[:half]))
    v.model, v.train_cpu = _cpu(v.fit, d.x_train, d.y_train)
    return v


def default_method() -> str:
    """The approximate method a deletion of the instance family runs by default (retained data held)."""
    from models.unlearn import get_family, resolve

    return resolve(get_family("instance").default_method, has_retained_data=True).name


def approximate(v: Version, fi: torch.Tensor, ri: torch.Tensor, settings, seed: int, gap=None) -> dict:
    """The default approximate method on one deletion as the worker runs it (worker/instance_wise.py:
    _load, _run, _measure, verification); CPU s of all of it and whether the rules refuse it."""
    from app.jobs import publishing
    from models.metrics import evaluate
    from models.train import accuracy, predict
    from models.unlearn import DEFAULT_OBJECTIVE, UnlearnRequest, get_method

    d = v.d
    c = time.process_time()
    fx, fy = d.x_train[fi], d.y_train[fi]
    sample = ri[torch.randperm(len(ri), generator=torch.Generator().manual_seed(seed))[:settings.job_retain_rows]]
    rx, ry = d.x_train[sample], d.y_train[sample]
    hx, hy = v.calib
    original_pred, base_ta = predict(v.model, fx), accuracy(v.model, hx, hy)
    method = default_method()
    res = get_method(method)(copy.deepcopy(v.model), UnlearnRequest(
        fx, fy, objective=DEFAULT_OBJECTIVE, retain_x=rx, retain_y=ry, holdout_x=hx, holdout_y=hy, seed=seed,
        reference_gap=gap))
    m = {k: float(x) for k, x in evaluate(res.model, forget=(fx, fy), retain=(rx, ry), test=(hx, hy),
                                         original_pred=original_pred).items()}
    m.update(base_ta=float(base_ta), ta_drop=float(base_ta - m["ta"]), method=method, exact=False)
    refused = publishing.refusals(DEFAULT_OBJECTIVE, m, max_test_accuracy_drop=settings.max_test_accuracy_drop)
    return {"method": method, "cpu_seconds": time.process_time() - c, "refused": refused,
            "converged": bool(res.stats.get("converged", True)), "ta_drop": m["ta_drop"]}


def deletion(v: Version, k: int, seed: int, j: int, settings) -> dict:
    """One deletion of k random rows: always-retrain's cost and the planner's choice and cost."""
    from app.jobs.planner import Facts, plan

    n = len(v.d.x_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(10_007 * (seed + 1) + 101 * k + j))
    fi, ri = perm[:k], perm[k:]
    _, retrain_cpu = _cpu(v.fit, v.d.x_train[ri], v.d.y_train[ri])
    risks = v.risk.risk[fi.numpy()].tolist() if v.risk is not None else None
    p = plan(Facts(sharded=False, method=default_method(), k=k, has_retained=True,
                   train_seconds=v.train_cpu, max_approx_instances=settings.max_approx_instances,
                   retrain_below_s=settings.retrain_below_s, risks=risks, risk_threshold=settings.risk_threshold))
    row = {"k": k, "deletion": j, "retrain_cpu": retrain_cpu, "planner_exact": p.exact, "reason": p.reason,
           "rows_at_risk": p.rows_at_risk, "max_risk": max(risks) if risks else None}
    if p.exact:
        row.update(path="exact", planner_cpu=retrain_cpu)
    else:
        gap = torch.from_numpy(v.risk.gap[fi.numpy()]).float() if v.risk is not None else None
        a = approximate(v, fi, ri, settings, seed=1000 * seed + j, gap=gap)
        fallback = bool(a["refused"])
        row.update(path="exact (fallback)" if fallback else "approximate", approx_cpu=a["cpu_seconds"],
                   refused=a["refused"], converged=a["converged"], ta_drop=a["ta_drop"],
                   planner_cpu=a["cpu_seconds"] + (retrain_cpu if fallback else 0.0))
    print(f"  k={k} #{j}: retrain {retrain_cpu:.1f} CPU s; planner {row['path']} {row['planner_cpu']:.1f} CPU s "
          f"(max risk {row['max_risk'] if row['max_risk'] is None else round(row['max_risk'], 2)})", flush=True)
    return row


def summarise(rows: list[dict], k: int, version: dict, fraction: float) -> dict:
    from bench.ulira import amortised_risk_jobs

    rs = [r for r in rows if r["k"] == k]
    exact_share = float(np.mean([r["path"] != "approximate" for r in rs]))
    planner, retrain = float(np.mean([r["planner_cpu"] for r in rs])), float(np.mean([r["retrain_cpu"] for r in rs]))
    # consolidation publishes an exact version at least every LETHE_CONSOLIDATE_AFTER_INSTANCES approximate
    # instances, so whatever share went exact, the job reruns as soon as `fraction` of the rows is gone
    jobs = amortised_risk_jobs(1.0, k, version["rows"], fraction)
    amortised = jobs * version["risk_cpu"] if version.get("risk_cpu") else 0.0
    # the same figure expected over every deletion of k random rows, from the whole risk distribution: the
    # share of deletions holding a row at or above the threshold, and the approximate runs' measured cost
    at_risk = version["risk"]["rows_above_threshold"] / version["rows"]
    approx = [r["approx_cpu"] / r["retrain_cpu"] for r in rows if "approx_cpu" in r]
    p_exact = 1 - float(np.prod([(version["rows"] - version["risk"]["rows_above_threshold"] - i) / (version["rows"] - i)
                                 for i in range(k)]))
    expected = p_exact + (1 - p_exact) * float(np.mean(approx)) if approx else None
    return {"k": k, "deletions": len(rs), "approximate": sum(r["path"] == "approximate" for r in rs),
            "expected_exact_share": p_exact, "expected_ratio": expected,
            "fallbacks": sum(r["path"] == "exact (fallback)" for r in rs),
            "planner_cpu": planner, "retrain_cpu": retrain, "risk_jobs_per_deletion": jobs,
            "risk_cpu_amortised": amortised, "ratio": planner / retrain, "ratio_with_risk": (planner + amortised) / retrain}


def run_seed(dataset, arch, arch_params, ks, n_deletions, seed, settings) -> dict:
    from models.risk import membership_risk

    torch.manual_seed(seed)
    v = train_version(dataset, arch, arch_params)
    print(f"[{dataset} {arch} {arch_params} seed {seed}] version: {v.train_cpu:.1f} CPU s", flush=True)
    v.risk, v.risk_cpu = _cpu(membership_risk, v.fit, v.d.x_train, v.d.y_train, settings.risk_reference_models,
                              seed=1000 + seed)
    summary = v.risk.summary(settings.risk_threshold)
    print(f"  risk job: {v.risk_cpu:.1f} CPU s ({v.risk_cpu / v.train_cpu:.2f} training runs); "
          f"{summary['rows_above_threshold']} of {summary['rows']} rows >= {settings.risk_threshold}", flush=True)
    version = {"rows": len(v.d.x_train), "train_cpu": v.train_cpu, "risk_cpu": v.risk_cpu,
               "risk_training_runs": v.risk_cpu / v.train_cpu, "risk": summary,
               "params": sum(p.numel() for p in v.model.parameters())}
    rows = [deletion(v, k, seed, j, settings) for k in ks for j in range(n_deletions)]
    return {"dataset": dataset, "arch": arch, "arch_params": arch_params, "seed": seed, "version": version,
            "deletions": rows,
            "by_k": [summarise(rows, k, version, settings.risk_recompute_fraction) for k in ks]}


def profile_one(dataset: str, top: int = 60, seed: int = 0) -> dict:
    """cProfile of one approximate deletion (k = 1, the default method, the worker's steps) on the
    dataset's demo model, in CPU seconds: the functions with the most own time and the most
    cumulative time."""
    from app.settings import Settings
    from models.data import DEFAULT_ARCH

    import sklearn.svm  # noqa: F401  (imported once per worker process, not per deletion)

    v = train_version(dataset, DEFAULT_ARCH[dataset], None)
    n = len(v.d.x_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    prof = cProfile.Profile(time.process_time)  # CPU seconds, as everywhere in this benchmark
    prof.enable()
    a = approximate(v, perm[:1], perm[1:], Settings(), seed)
    prof.disable()
    out = {"dataset": dataset, "train_cpu": v.train_cpu, "approx_cpu": a["cpu_seconds"], "converged": a["converged"]}
    for key in ("tottime", "cumulative"):
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s).sort_stats(key)
        entries = []
        for fn in st.fcn_list[:top]:
            cc, nc, tt, ct, _ = st.stats[fn]
            entries.append({"function": f"{os.path.relpath(fn[0], ROOT) if fn[0].startswith(ROOT) else os.path.basename(fn[0])}:{fn[1]}({fn[2]})",
                            "calls": nc, "tottime": round(tt, 3), "cumtime": round(ct, 3)})
        out[key] = entries
    return out


def main(argv=None):
    from app.settings import Settings
    from bench.instance import machine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="adult")
    p.add_argument("--arch", default="mlp")
    p.add_argument("--hidden", default=",".join(map(str, DEFAULT_HIDDEN)), help="MLP widths ('' = the demo model's)")
    p.add_argument("--ks", default="1,8")
    p.add_argument("--deletions", type=int, default=5, help="random deletions per k")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", metavar="DATASET", help="only profile one approximate deletion on DATASET")
    p.add_argument("--note", default=None, help="--profile: what the profiled code is (a profile per dataset and note)")
    p.add_argument("--summarise", action="store_true", help="only recompute every run's per-k summary in --out "
                                                             "from its stored deletions")
    p.add_argument("--out", default=OUT)
    a = p.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    torch.set_num_threads(a.threads)
    doc = json.load(open(a.out)) if os.path.exists(a.out) else {"runs": [], "profiles": []}
    if a.summarise:
        for r in doc["runs"]:
            r["by_k"] = [summarise(r["deletions"], k, r["version"], r["settings"]["risk_recompute_fraction"])
                         for k in sorted({x["k"] for x in r["deletions"]})]
    elif a.profile:
        prof = profile_one(a.profile)
        prof.update(command=shlex.join(argv), machine=machine(), started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    note=a.note)
        doc["profiles"] = [x for x in doc.get("profiles", []) if (x["dataset"], x.get("note")) != (a.profile, a.note)] \
            + [prof]
        for e in prof["cumulative"][:15]:
            print(f"{e['cumtime']:8.2f} {e['tottime']:8.2f} {e['calls']:>8} {e['function']}")
    else:
        s = Settings()
        params = {"widths": [int(w) for w in a.hidden.split(",")]} if a.hidden and a.arch == "mlp" else None
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        for seed in [int(x) for x in a.seeds.split(",")]:
            r = run_seed(a.dataset, a.arch, params, [int(k) for k in a.ks.split(",")], a.deletions, seed, s)
            r.update(command=shlex.join(argv), machine=machine(), started=started,
                     settings={"risk_threshold": s.risk_threshold, "risk_reference_models": s.risk_reference_models,
                               "risk_recompute_fraction": s.risk_recompute_fraction,
                               "max_approx_instances": s.max_approx_instances, "retrain_below_s": s.retrain_below_s,
                               "job_retain_rows": s.job_retain_rows})
            doc["runs"] = [x for x in doc["runs"] if (x["dataset"], x["arch"], x["arch_params"], x["seed"])
                           != (a.dataset, a.arch, params, seed)] + [r]
            for b in r["by_k"]:
                print(f"k={b['k']}: planner {b['planner_cpu']:.1f} CPU s vs retrain {b['retrain_cpu']:.1f} "
                      f"(ratio {b['ratio']:.2f}; with the amortised risk job {b['ratio_with_risk']:.3f}); "
                      f"{b['approximate']}/{b['deletions']} approximate", flush=True)
            with open(a.out, "w") as f:
                json.dump(doc, f, indent=1)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
