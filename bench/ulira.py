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
from app.jobs.planner import Facts, plan
from app.settings import Settings
from models.risk import MembershipRisk, calibrate_threshold, membership_risk, spearman
from models.ulira import pair_scores, run_ulira, train_shadows, ulira_attack, unlearned_confidences
from models.unlearn import UnlearnRequest, get_method
from models.unlearn.lethe import privacy_signal

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
        self.outputs, self.run_cpu = [], []  # per shadow, kept for the planner row

    def __call__(self, model, forget, retain, seed):
        t, c = time.perf_counter(), time.process_time()
        gap = None
        if getattr(self, "gap_override", None) is not None:  # the risk job's gaps, given by the planner
            gap = self.gap_override
        elif self.method.endswith("_ref"):  # per-example gaps from reference models: an offline cost, timed apart
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
        self.run_cpu.append(time.process_time() - c)
        self.outputs.append(out)
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


def stopping_rule_signal(original, unlearned, forget, retain, calib, seed, gap=None) -> dict:
    """`retrain_like`'s stopping rule on `unlearned` (drift-corrected drop of D_f's confidence and
    the drop it requires), calibrated on `original`; with `gap`, each row's expected drop is its
    own membership gap measured by reference models (metrics.RetrainLikeTest, expected_shift)."""
    req = UnlearnRequest(*forget, objective="retrain_like", retain_x=retain[0], retain_y=retain[1],
                         holdout_x=calib[0], holdout_y=calib[1], seed=seed,
                         reference_gap=None if gap is None else torch.as_tensor(gap, dtype=torch.float32))
    return privacy_signal(original, unlearned, req)


def stopping_rule_passes(original, unlearned, forget, retain, calib, seed) -> bool | None:
    """Would `retrain_like`'s stopping rule (metrics.RetrainLikeTest, calibrated on `original` as
    Lethe calibrates it) accept `unlearned`? Run on every row: the rule has power where it accepts
    `retrain` and refuses `noop` (which it refuses by construction)."""
    req = UnlearnRequest(*forget, objective="retrain_like", retain_x=retain[0], retain_y=retain[1],
                         holdout_x=calib[0], holdout_y=calib[1], seed=seed)
    sig = privacy_signal(original, unlearned, req)
    return sig["retrain_like_passes"] if sig else None


PLANNER_COMPARED = ("noop", "retrain", DEFAULT_METHOD)
RETRAIN_METHOD = "retrain"


def shadow_risk(d, shadows, i, n_reference, device) -> tuple[MembershipRisk, float]:
    """The risk job on shadow i as the service runs it on an exact version: reference models on
    halves of the shadow's own training set (its base half and its targets). Returns the risk of
    its forget rows (first) and the job's CPU seconds."""
    c = time.process_time()
    forget, retain = shadows.forget(i), shadows.retain(i)
    x, y = torch.cat([forget[0], retain[0]]), torch.cat([forget[1], retain[1]])
    risk = membership_risk(lambda xs, ys, s: _train(d, xs, ys, s, device), x, y, n_reference,
                           seed=60_000 + 1000 * shadows.seed + i)
    return risk, time.process_time() - c


def risk_cell(d, shadows, calib, device, k, n_reference, max_approx=64) -> dict:
    """The measurements the `planner` row is made of, on one cell's shadows (method `risk`):
    `noop`, `retrain` and the default run on every shadow; where the planner could go approximate
    (k <= LETHE_MAX_APPROX_INSTANCES), the risk job on each shadow -- reference models on halves of
    the shadow's own training set, as the service runs it on an exact version -- and the default
    given each forget row's own gap (what the planner runs for low-risk rows), with the stopping
    rule's verdict (drift-corrected drop of D_f's confidence and the drop each row's gap predicts)
    on every result. `plan_rows` turns it into the planner's row for a threshold, so a threshold
    calibrated on other target-set seeds is applied to shadows it never saw."""
    n, tm = len(shadows.models), shadows.target_member
    comp, phis = {}, {}
    for m in PLANNER_COMPARED:
        u = Unlearner(d, m, calib, device)
        phis[m] = unlearned_confidences(shadows, u)
        comp[m] = u
    row = {"same_shadows": {m: {**ulira_attack(phis[m], tm), "cpu_seconds": comp[m].cpu_seconds / n,
                                "stop_rule_passes": comp[m].rule_passes, "stop_rule_runs": comp[m].rule_runs}
                            for m in PLANNER_COMPARED},
           "retrain_cpu": comp["retrain"].run_cpu, "max_approx": max_approx, "risk_reference_models": 0,
           "shadow_rows": int(len(shadows.retain(0)[0]) + k)}
    if k > max_approx:  # the cap decides, whatever the risk: no risk job needed to plan this cell
        return row
    risk, gaps = np.full(tm.shape, np.nan), np.full(tm.shape, np.nan)
    risk_cpu, approx_cpu, approx_phi, rules = [], [], [], {m: [] for m in PLANNER_COMPARED + ("approx_gap",)}
    for i in range(n):
        forget, retain = shadows.forget(i), shadows.retain(i)
        seed = shadows.seed * 1000 + i
        mr, rc = shadow_risk(d, shadows, i, n_reference, device)
        risk_cpu.append(rc)
        r_i, g_i = mr.risk[:k], mr.gap[:k]
        risk[i, tm[i]], gaps[i, tm[i]] = r_i, g_i
        u = Unlearner(d, DEFAULT_METHOD, calib, device)
        u.gap_override = torch.from_numpy(g_i).float()
        out = u(shadows.models[i], forget, retain, seed)
        approx_cpu.append(u.cpu_seconds)
        approx_phi.append(logit_confidence(out, *shadows.targets))
        for m, o in [*((m, comp[m].outputs[i]) for m in PLANNER_COMPARED), ("approx_gap", out)]:
            sig = stopping_rule_signal(shadows.models[i], o, forget, retain, calib, seed, g_i)
            change = sig.get("df_confidence_change", sig.get("df_confidence_drop"))
            rules[m].append([change, sig.get("df_drop_expected"), sig.get("df_confidence_change_raw", change)])
    approx_phi = np.stack(approx_phi)
    # per example: its mean risk over the shadows that trained on it; checked against the gap of the
    # n shadows themselves (n models on halves of the base pool and T: a larger reference set)
    rx = np.nanmean(risk, 0)
    ph = phis["noop"]
    g_sh = np.where(tm, ph, 0).sum(0) / tm.sum(0) - np.where(~tm, ph, 0).sum(0) / (~tm).sum(0)
    lr = {m: pair_scores(p, tm) for m, p in [("retrain", phis["retrain"]), (DEFAULT_METHOD, phis[DEFAULT_METHOD]),
                                              ("approx_gap", approx_phi)]}
    row["same_shadows"]["approx_gap"] = {**ulira_attack(approx_phi, tm), "cpu_seconds": float(np.mean(approx_cpu))}
    row.update({
        "risk_reference_models": n_reference, "risk_cpu_seconds": float(np.mean(risk_cpu)),
        "risk_train_runs": float(np.mean(risk_cpu)) / max(row.get("train_seconds", 0) or 1e-9, 1e-9),
        "risk_vs_shadow_gap_spearman": spearman(rx, g_sh),
        "approx_cpu": approx_cpu, "rules": rules,
        "shadow_risk": [risk[i, tm[i]].round(4).tolist() for i in range(n)],
        "per_example_risk": rx.round(4).tolist(), "target_member": tm.tolist(), "pair_ok": lr["retrain"][1].tolist(),
        "pair_scores": {m: v[0].round(4).tolist() for m, v in lr.items()},
        "phi": {"retrain": phis["retrain"].round(4).tolist(), "approx_gap": approx_phi.round(4).tolist()}})
    return row


def _gap_rule(sig, tau: float) -> bool:
    """The stopping rule with each row's own gap: D_f's drift-corrected confidence dropped by at least
    `tau` x the mean gap, and its own (uncorrected) confidence did not rise."""
    change, expected = sig[0], sig[1]
    raw = sig[2] if len(sig) > 2 else change
    return change is not None and change <= -tau * expected and raw <= 0


def _shadow_rows(r: dict) -> int:
    """Training rows of one shadow (rows recorded before `shadow_rows` was: from the split sizes)."""
    if "shadow_rows" in r:
        return r["shadow_rows"]
    d = load_dataset(r["dataset"])
    n_test = len(d.x_test)
    return (len(d.x_train) - 2 * r["k"] + n_test - n_test // 2) // 2 + r["k"]


def amortised_risk_jobs(exact_share: float, k: int, rows: int, recompute_fraction: float) -> float:
    """Risk jobs per deletion of k rows: the job runs only on an exact version (at most
    `exact_share` of the deletions make one) and only once `recompute_fraction` of the `rows` it
    measured is gone (every ``recompute_fraction x rows / k`` deletions at most)."""
    if not recompute_fraction:
        return exact_share
    return min(exact_share, k / (recompute_fraction * rows))


def plan_rows(risk_row: dict, threshold: float, tau: float, recompute_fraction: float = 0.1) -> dict:
    """The `planner` row of one cell from its `risk` row: per shadow, the service's plan
    (app.jobs.planner.plan, with LETHE_RETRAIN_BELOW_S = 0: as for a model too slow to retrain by
    default) given the shadow's forget rows' risk; rows at or above `threshold` -> retraining,
    else the default aimed at each row's own gap, accepted when its rows lost at least `tau` of
    their gap and otherwise refused and retrained (the worker's fallback). CPU per deletion:
    the method(s) run; the risk job apart (`risk_cpu_seconds`, once per exact version it measures)
    and amortised: it runs again once `recompute_fraction` of the rows it measured is gone, and
    only on an exact version, so per deletion it costs min(share that went exact,
    k / (fraction x rows)) risk jobs."""
    r = risk_row
    ss = r["same_shadows"]
    n, k = len(r["retrain_cpu"]), r["k"]
    plans, cpu, exact = [], [], []
    for i in range(n):
        risks = r["shadow_risk"][i] if "shadow_risk" in r else None
        p = plan(Facts(sharded=False, method="lethe", k=k, has_retained=True, train_seconds=r["train_seconds"],
                       max_approx_instances=r["max_approx"], retrain_below_s=0.0, risks=risks,
                       risk_threshold=threshold))
        fallback = False
        c = r["retrain_cpu"][i]
        if not p.exact:
            fallback = not _gap_rule(r["rules"]["approx_gap"][i], tau)
            c = r["approx_cpu"][i] + (r["retrain_cpu"][i] if fallback else 0.0)
        plans.append({"method": RETRAIN_METHOD if (p.exact or fallback) else DEFAULT_METHOD, "exact": p.exact,
                      "fallback": fallback, "rows_at_risk": p.rows_at_risk,
                      "max_risk": max(risks) if risks else None, "reason": p.reason})
        cpu.append(c)
        exact.append(p.exact or fallback)
    if "phi" in r:
        phi = np.array([r["phi"]["retrain"][i] if exact[i] else r["phi"]["approx_gap"][i] for i in range(n)])
        res = ulira_attack(phi, np.array(r["target_member"]))
    else:  # every shadow retrained (the cap): the same models as `retrain`
        res = {key: ss["retrain"][key] for key in ("ulira_auc", "ulira_tpr_at_1fpr", "pairs")}
    out = {key: r[key] for key in ("dataset", "scenario", "k", "seed", "shadows", "train_seconds")}
    out.update(method="planner", objective="retrain_like", **res, cpu_seconds=float(np.mean(cpu)),
               threshold=threshold, tau_gap=tau, exact_share=float(np.mean(exact)),
               fallbacks=int(sum(p["fallback"] for p in plans)), plans=plans,
               same_shadows=ss, not_converged=0, stop_rule_passes=0, stop_rule_runs=0,
               risk_reference_models=r.get("risk_reference_models", 0),
               risk_cpu_seconds=r.get("risk_cpu_seconds"), risk_vs_shadow_gap_spearman=r.get("risk_vs_shadow_gap_spearman"),
               shadow_rows=_shadow_rows(r), risk_recompute_fraction=recompute_fraction)
    if r.get("risk_cpu_seconds"):
        out["risk_cpu_amortised"] = amortised_risk_jobs(out["exact_share"], k, out["shadow_rows"],
                                                        recompute_fraction) * r["risk_cpu_seconds"]
    if "rules" in r:  # the stopping rule with each row's own gap, per risk band (a shadow is high-risk when any row is)
        band = {"high": [max(x) >= threshold for x in r["shadow_risk"]]}
        band["low"] = [not h for h in band["high"]]
        out["rule_by_band"] = {b: {m: [int(sum(1 for i, sig in enumerate(v) if sel[i] and _gap_rule(sig, tau))),
                                       int(sum(sel))]
                                   for m, v in r["rules"].items()} for b, sel in band.items()}
    return out


def run(datasets, scenarios, seeds, methods, n_shadows, device, emit, flip_max_k=32, planner=None):
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
                    if method == "risk":
                        row = risk_cell(d, shadows, calib, device, k, planner["reference_models"],
                                        planner["max_approx"])
                        if row.get("risk_cpu_seconds"):
                            row["risk_train_runs"] = row["risk_cpu_seconds"] / train_s
                        emit({"dataset": name, "scenario": scenario, "k": k, "seed": seed, "method": method,
                              "objective": "retrain_like", "shadows": n_shadows, "train_seconds": train_s, **row})
                        continue
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


def fit_threshold(path: str) -> dict:
    """LETHE_RISK_THRESHOLD from the `risk` rows of a run (models.risk.calibrate_threshold),
    per dataset and over all of them (the smallest: one setting must hold for every model), with
    the risk bands' excess and the stopping rule's acceptance per band."""
    doc = json.load(open(path))
    rows = [r for r in doc["rows"] if r["method"] == "risk" and "pair_scores" in r]
    fits = {}
    for ds in sorted({r["dataset"] for r in rows}) + ["all"]:
        rs = [r for r in rows if ds in ("all", r["dataset"])]
        risk = np.concatenate([r["per_example_risk"] for r in rs])
        # pairs of different cells never compare: pad each cell's shadows into one block-diagonal matrix
        blocks = [(np.array(r["pair_scores"]["retrain"]), np.array(r["pair_scores"]["approx_gap"]),
                   np.array(r["target_member"]), np.array(r["pair_ok"])) for r in rs]
        n_sh = sum(b[0].shape[0] for b in blocks)
        n_x = sum(b[0].shape[1] for b in blocks)
        lr_e, lr_a = np.zeros((n_sh, n_x)), np.zeros((n_sh, n_x))
        mem, ok = np.zeros((n_sh, n_x), bool), np.zeros((n_sh, n_x), bool)
        i = j = 0
        for e, ap, m, o in blocks:
            lr_e[i:i + len(e), j:j + e.shape[1]], lr_a[i:i + len(e), j:j + e.shape[1]] = e, ap
            mem[i:i + len(e), j:j + e.shape[1]], ok[i:i + len(e), j:j + e.shape[1]] = m, o
            i, j = i + len(e), j + e.shape[1]
        fit = calibrate_threshold(risk, lr_a, lr_e, mem, ok)
        fit["spearman_vs_shadow_gap"] = [r["risk_vs_shadow_gap_spearman"] for r in rs]
        fit["risk_train_runs"] = float(np.mean([r["risk_train_runs"] for r in rs]))
        fits[ds] = fit
    doc["fit"] = fits
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    return fits


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
    p.add_argument("--threshold", type=float, default=None,
                   help="planner row: LETHE_RISK_THRESHOLD (default: the setting's value)")
    p.add_argument("--risk-reference-models", type=int, default=None,
                   help="planner/calibrate rows: reference models of the risk job (default: LETHE_RISK_REFERENCE_MODELS)")
    p.add_argument("--tau-gap", type=float, default=None,
                   help="planner row: share of each row's gap the approximate result must drop (default: LETHE_RISK_TAU)")
    p.add_argument("--fit", metavar="JSON", help="only fit the risk threshold from the `risk` rows of JSON "
                                                 "(written back into it) and print it")
    p.add_argument("--plan", nargs="+", metavar="JSON", help="only turn the `risk` rows of JSON files into "
                                                            "`planner` rows (--threshold, --tau-gap) in --out")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="only merge result files of separate runs into --out")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "ulira.json"))
    a = p.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    if a.fit:
        return print(json.dumps(fit_threshold(a.fit), indent=1))
    if a.plan:
        st = Settings()
        threshold = st.risk_threshold if a.threshold is None else a.threshold
        tau = st.risk_tau if a.tau_gap is None else a.tau_gap
        docs = [json.load(open(path)) for path in a.plan]
        doc = {"machine": docs[0]["machine"], "started": min(d["started"] for d in docs),
               "commands": [c for d in docs for c in d["commands"]] + [" ".join(argv)],
               "default_method": DEFAULT_METHOD,
               "rows": [plan_rows(r, threshold, tau, st.risk_recompute_fraction)
                        for d in docs for r in d["rows"] if r["method"] == "risk"]}
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)
        for r in doc["rows"]:
            print(f"{r['dataset']:8s} {r['scenario']:>6s} seed={r['seed']} planner AUC={r['ulira_auc']:.3f} "
                  f"retrain {r['same_shadows']['retrain']['ulira_auc']:.3f} exact {r['exact_share']:.2f} "
                  f"cpu {r['cpu_seconds']:.2f} (retrain {r['same_shadows']['retrain']['cpu_seconds']:.2f})")
        return print(f"wrote {len(doc['rows'])} planner rows to {a.out}")
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
        if r["method"] == "risk":
            return print(f"{r['dataset']:8s} {r['scenario']:>6s} k={r['k']:<5d} seed={r['seed']} risk: job "
                         f"{r.get('risk_cpu_seconds') or 0:.1f} CPU s = {r.get('risk_train_runs') or 0:.2f} trainings; "
                         f"spearman with the shadows' gap {r.get('risk_vs_shadow_gap_spearman', float('nan')):.2f}; "
                         + " ".join(f"{m} {v['ulira_auc']:.3f}" for m, v in r["same_shadows"].items()), flush=True)
        print(f"{r['dataset']:8s} {r['scenario']:>6s} k={r['k']:<5d} seed={r['seed']} {r['method']:18s} "
              f"U-LiRA AUC={r['ulira_auc']:.3f} TPR@1%={r['ulira_tpr_at_1fpr']:.3f} pairs={r['pairs']} "
              f"{r['cpu_seconds']:.2f} CPU s/run (train {r['train_seconds']:.1f}) nc={r['not_converged']} rule {r['stop_rule_passes']}/{r['stop_rule_runs']}", flush=True)

    st = Settings()
    planner = {"threshold": st.risk_threshold if a.threshold is None else a.threshold,
               "reference_models": a.risk_reference_models or st.risk_reference_models,
               "tau_gap": st.risk_tau if a.tau_gap is None else a.tau_gap, "max_approx": st.max_approx_instances}
    run(a.datasets.split(","), a.scenarios.split(","), [int(s) for s in a.seeds.split(",")],
        a.methods.split(","), a.shadows, device, emit, a.flip_max_k, planner)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    os.remove(a.out + ".partial")
    print(f"wrote {a.out}; render the tables with `python -m bench.render`")


if __name__ == "__main__":
    main()
