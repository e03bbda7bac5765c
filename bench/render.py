"""Render the instance-wise benchmark tables from bench/results/instance.json (and the full
U-LiRA tables from bench/results/ulira.json) into README.md
and docs/benchmarks.md, so no figure can drift from its row.

    python -m bench.render            # rewrite the marked blocks in place
    python -m bench.render --check    # exit 1 when a marked block differs from the JSON (a test runs this)

Each block sits between `<!-- render:NAME -->` and `<!-- /render:NAME -->`; only those lines
change. Every figure names the seeds it covers; a cell over fewer seeds than asked says so.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics as st
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "instance.json")
ULIRA_RESULTS = os.path.join(ROOT, "bench", "results", "ulira.json")
RISK_CALIBRATION = os.path.join(ROOT, "bench", "results", "risk_calibration.json")
ARCANE_ABLATION = os.path.join(ROOT, "bench", "results", "arcane_ablation.json")
PLANNER_COST = os.path.join(ROOT, "bench", "results", "planner_cost.json")
EXACT = os.path.join(ROOT, "bench", "results", "exact.json")
EXACT_GAP_TARGET = 2.0  # issue 28: within 2 points of the monolithic model, mean of 3 seeds
TARGETS = {"readme": os.path.join(ROOT, "README.md"), "docs": os.path.join(ROOT, "docs", "benchmarks.md")}
SCENARIO_ORDER = ["1", "8", "32", "128", "10pct", "class", "hard8", "hard32"]
AUC_TOL, GAP_TARGET, SPEED_TARGET = 0.05, 1.0, 10.0


def _scenario_label(s: str) -> str:
    if s.startswith("hard"):
        return f"hardest, k = {s[4:]}"
    return {"10pct": "10 %", "class": "class"}.get(s, f"k = {s}")


def _groups(rows):
    """(dataset, scenario, method) -> rows, one per forget-set seed (retrain: training seed 0)."""
    g = defaultdict(list)
    for r in rows:
        if r["method"] == "retrain" and r.get("train_seed", 0) != 0:
            continue
        g[(r["dataset"], str(r["scenario"]), r["method"])].append(r)
    return g


def _seeds(rs) -> str:
    return ",".join(str(s) for s in sorted({r["seed"] for r in rs}))


def _fmt(x, spec):
    return "–" if x is None or x != x else format(x, spec)


def default_table(doc) -> str:
    """The service default against the targets of issue 14, every (dataset, scenario)."""
    rows, default = doc["rows"], doc["default_method"]
    g = _groups(rows)
    out = [f"Default deletion method: `{default}`. Per cell: mean over the forget-set seeds listed "
           f"(worst seed in brackets). Targets: |uAUC − retrained uAUC| ≤ {AUC_TOL} on every seed, "
           f"Avg.Gap ≤ {GAP_TARGET}, ≥ {SPEED_TARGET:.0f}x at k ≤ 8 where retraining takes ≥ 10 s.", "",
           "| dataset | scenario | k | seeds | uAUC − retrained (worst) | met | TPR@1%FPR (retrained) | "
           "Avg.Gap (worst) | noop Avg.Gap | speed-up (min) | retrain s | converged |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    retrain_tpr = defaultdict(list)
    for r in rows:
        if r["method"] == "retrain":
            retrain_tpr[(r["dataset"], str(r["scenario"]))].append(r["ulira_tpr_at_1fpr"])
    for (ds, sc, m), rs in sorted(g.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]))):
        if m != default:
            continue
        d_auc = [r["ulira_auc"] - r["retrain_ulira_auc"] for r in rs]
        worst = max(d_auc, key=abs)
        gaps = [r["avg_gap"] for r in rs]
        noop = g.get((ds, sc, "noop"), [])
        sp = [r["speedup"] for r in rs if r["speedup"]]
        conv = sum(bool(r["converged"]) for r in rs)
        out.append(f"| {ds} | {_scenario_label(sc)} | {rs[0]['k']} | {_seeds(rs)} | {st.mean(d_auc):+.3f} ({worst:+.3f}) | "
                   f"{'yes' if all(abs(x) <= AUC_TOL for x in d_auc) else 'no'} | "
                   f"{st.mean(r['ulira_tpr_at_1fpr'] for r in rs):.3f} ({st.mean(retrain_tpr[(ds, sc)]):.3f}) | "
                   f"{st.mean(gaps):.2f} ({max(gaps):.2f}) | "
                   f"{_fmt(st.mean([r['avg_gap'] for r in noop]) if noop else None, '.2f')} | "
                   f"{_fmt(st.mean(sp) if sp else None, '.1f')}x ({_fmt(min(sp) if sp else None, '.1f')}x) | "
                   f"{st.mean(r['retrain_seconds'] for r in rs):.1f} | {conv}/{len(rs)} |")
    return "\n".join(out)


def _order(sc):
    return SCENARIO_ORDER.index(sc) if sc in SCENARIO_ORDER else len(SCENARIO_ORDER)


def methods_table(doc) -> str:
    """Every method, every scenario, per dataset: uAUC − retrained, Avg.Gap, speed-up, non-converged."""
    g = _groups(doc["rows"])
    out = ["Per cell: uAUC − retrained uAUC (mean over seeds) / Avg.Gap (mean) / speed-up over retraining "
           "(mean); `n/N✗` marks runs that did not converge (their figures are included). Seeds per "
           "cell are in the rows of `bench/results/instance.json`; the default table above lists them."]
    for ds in sorted({k[0] for k in g}):
        scs = sorted({k[1] for k in g if k[0] == ds}, key=_order)
        methods = [m for m in _method_order(doc) if any((ds, sc, m) in g for sc in scs)]
        out += ["", f"**{ds}**", "", "| method | " + " | ".join(_scenario_label(s) for s in scs) + " |",
                "|---|" + "---|" * len(scs)]
        for m in methods:
            cells = []
            for sc in scs:
                rs = g.get((ds, sc, m))
                if not rs:
                    cells.append("–")
                    continue
                d_auc = st.mean(r["ulira_auc"] - r["retrain_ulira_auc"] for r in rs)
                sp = [r["speedup"] for r in rs if r["speedup"]]
                bad = sum(not r["converged"] for r in rs) if m not in ("noop", "retrain") else 0
                speed = f"{st.mean(sp):.1f}x" if sp else "–"
                cells.append(f"{d_auc:+.3f} / {st.mean(r['avg_gap'] for r in rs):.2f} / {speed}"
                             + (f" {bad}/{len(rs)}✗" if bad else ""))
            out.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _method_order(doc):
    seen = []
    for r in doc["rows"]:
        if r["method"] not in seen:
            seen.append(r["method"])
    return seen


def header(doc) -> str:
    rows = doc["rows"]
    per = defaultdict(set)
    for r in rows:
        per[r["dataset"]].add(r["seed"])
    seeds = "; ".join(f"{ds}: seeds {','.join(map(str, sorted(s)))}" for ds, s in sorted(per.items()))
    partial = " **Partial run** (stopped early; only the rows listed were measured)." if doc.get("partial") else ""
    return (f"Run of {doc.get('started', '?')} on {doc['machine']}. Command: "
            f"`python -m bench.instance {' '.join(doc.get('argv', []))}`. Forget-set seeds per dataset: {seeds}."
            f"{partial} Rendered by `python -m bench.render` from `bench/results/instance.json` ({len(rows)} rows).")


def _ulira_cells(udoc):
    """(dataset, scenario, method) -> {seed: row} of the full U-LiRA benchmark."""
    cells = defaultdict(dict)
    for r in udoc["rows"]:
        cells[(r["dataset"], str(r["scenario"]), r["method"])][r["seed"]] = r
    return cells


def ulira_default_table(udoc) -> str:
    """The default deletion method under full U-LiRA, against retraining on the same shadows."""
    cells = _ulira_cells(udoc)
    default = udoc.get("default_method", "lethe_retrain_like")
    out = [f"Full U-LiRA (the method run inside every shadow; `models/ulira.py`): AUC of telling "
           f"\"unlearned\" from \"never trained on\" per example, leave one shadow out. Per cell: the "
           f"default (`{default}`) minus `retrain` on the same shadows, per target-set seed; met = within "
           f"{AUC_TOL} on every seed. `noop` and `lethe` (misclassify) bracket it; the last column is the default given each "
           f"example's membership gap measured by 4 reference models (`UnlearnRequest.reference_gap`). Run(s): "
           + "; ".join(f"`python -m bench.ulira {c}`" for c in udoc.get("commands", [])) + f" ({udoc['machine']}).",
           "", "| dataset | scenario | k | shadows | seeds | default AUC | retrain AUC | default − retrain (worst) | met "
           "| noop AUC | `lethe` (misclassify) AUC | stopping rule accepts retrain / default / noop | default CPU s | retrain CPU s "
           "| with reference gaps (`_ref`) − retrain (worst) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(ds, sc) for ds, sc, m in cells if m == default}, key=lambda k: (k[0], _order(k[1])))
    for ds, sc in keys:
        dflt, rt = cells[(ds, sc, default)], cells.get((ds, sc, "retrain"), {})
        seeds = sorted(set(dflt) & set(rt))
        if not seeds:
            continue
        diff = [dflt[s]["ulira_auc"] - rt[s]["ulira_auc"] for s in seeds]
        worst = max(diff, key=abs)

        def mean_auc(m):
            rs = cells.get((ds, sc, m), {})
            return st.mean(r["ulira_auc"] for r in rs.values()) if rs else None
        def rule(m):
            rs = cells.get((ds, sc, m), {}).values()
            runs = sum(r.get("stop_rule_runs", 0) for r in rs)
            return f"{sum(r.get('stop_rule_passes', 0) for r in rs)}/{runs}" if runs else "–"
        r0 = dflt[seeds[0]]
        out.append(f"| {ds} | {_scenario_label(sc)} | {r0['k']} | {r0['shadows']} | {','.join(map(str, seeds))} | "
                   f"{st.mean(dflt[s]['ulira_auc'] for s in seeds):.3f} | {st.mean(rt[s]['ulira_auc'] for s in seeds):.3f} | "
                   f"{st.mean(diff):+.3f} ({worst:+.3f}) | {'yes' if all(abs(x) <= AUC_TOL for x in diff) else 'no'} | "
                   f"{_fmt(mean_auc('noop'), '.3f')} | {_fmt(mean_auc('lethe'), '.3f')} | "
                   f"{rule('retrain')} / {rule(default)} / {rule('noop')} | "
                   f"{st.mean(dflt[s]['cpu_seconds'] for s in seeds):.2f} | {st.mean(rt[s]['cpu_seconds'] for s in seeds):.2f} | "
                   f"{_vs_retrain(cells.get((ds, sc, default + '_ref'), {}), rt)} |")
    return "\n".join(out)


def _vs_retrain(rows_by_seed: dict, retrain_by_seed: dict) -> str:
    """Mean (worst) AUC difference to retraining over the seeds both have, with those seeds."""
    seeds = sorted(set(rows_by_seed) & set(retrain_by_seed))
    if not seeds:
        return "–"
    diff = [rows_by_seed[s]["ulira_auc"] - retrain_by_seed[s]["ulira_auc"] for s in seeds]
    return f"{st.mean(diff):+.3f} ({max(diff, key=abs):+.3f}; seeds {','.join(map(str, seeds))})"


def ulira_methods_table(udoc) -> str:
    """Every method under full U-LiRA: AUC (mean over seeds) / TPR at 1 % FPR, per dataset."""
    cells = _ulira_cells(udoc)
    out = ["Per cell: U-LiRA AUC / TPR at 1 % FPR, mean over the target-set seeds "
           "(0.5 / 0.01: unlearned examples look like never-seen ones); `n✗` = runs whose own stopping "
           "rule did not hold. Last column: mean over every (scenario, seed) of |AUC − retrain's AUC on "
           "the same shadows| — the ranking the default is chosen by. Rows: `bench/results/ulira.json`."]
    order = []
    for r in udoc["rows"]:
        if r["method"] not in order and r["method"] != "planner":  # its own table, on its own shadows
            order.append(r["method"])
    for ds in sorted({k[0] for k in cells}):
        scs = sorted({k[1] for k in cells if k[0] == ds}, key=_order)
        out += ["", f"**{ds}**", "", "| method | " + " | ".join(_scenario_label(s) for s in scs) + " | mean abs. Δ to retrain |",
                "|---|" + "---|" * (len(scs) + 1)]
        for m in order:
            row = []
            deltas = [abs(r["ulira_auc"] - cells[(ds, sc, "retrain")][seed]["ulira_auc"])
                      for sc in scs for seed, r in cells.get((ds, sc, m), {}).items()
                      if seed in cells.get((ds, sc, "retrain"), {})]
            for sc in scs:
                rs = list(cells.get((ds, sc, m), {}).values())
                if not rs:
                    row.append("–")
                    continue
                nc = sum(r.get("not_converged", 0) for r in rs)
                row.append(f"{st.mean(r['ulira_auc'] for r in rs):.3f} / {st.mean(r['ulira_tpr_at_1fpr'] for r in rs):.3f}"
                           + (f" {nc}✗" if nc else ""))
            if any(c != "–" for c in row):
                out.append(f"| `{m}` | " + " | ".join(row) + f" | {_fmt(st.mean(deltas) if deltas else None, '.3f')} |")
    return "\n".join(out)


BLOCKS = {"instance-header": header, "instance-default": default_table, "instance-methods": methods_table}
def _band(rs, band, m):
    runs = [r["rule_by_band"][band][m] for r in rs if "rule_by_band" in r and m in r["rule_by_band"][band]]
    n = sum(b for _, b in runs)
    return f"{sum(a for a, _ in runs)}/{n}" if n else "–"


def ulira_planner_table(udoc) -> str:
    """The service's planner under full U-LiRA: what it would choose for each shadow's deletion
    (risk measured on that shadow), beside noop, retrain and the default on the same shadows."""
    rows = [r for r in udoc["rows"] if r["method"] == "planner"]
    if not rows:
        return "(no planner rows yet)"
    cells = defaultdict(dict)
    for r in rows:
        cells[(r["dataset"], str(r["scenario"]))][r["seed"]] = r
    r0 = rows[0]
    out = [f"The planner (`app/jobs/planner.py`) under full U-LiRA: for each shadow's deletion, the risk job runs on "
           f"that shadow ({r0['risk_reference_models'] or 4} reference models on halves of its training set), the plan "
           f"is made with LETHE_RISK_THRESHOLD = {r0['threshold']:.3g} (calibrated on target-set seeds 3-4, never "
           f"scored here) and LETHE_RETRAIN_BELOW_S = 0 (as for a model too slow to retrain by default), and what it "
           f"chose runs: retraining, or the default aimed at each row's own gap, retrained when its rows lost less than "
           f"τ = {r0['tau_gap']:g} of their gap (the worker's fallback). `noop`, `retrain` and the default run on the "
           f"same shadows. met = planner within {AUC_TOL} of retraining on every seed. CPU s per deletion "
           f"(one torch thread); the risk job's cost is per exact version: apart, and amortised over the deletions "
           f"a version serves (it "
           f"runs again only once LETHE_RISK_RECOMPUTE_FRACTION = {r0.get('risk_recompute_fraction', 0.1):g} of the rows it "
           f"measured is gone, and only on an exact version: per deletion min(share that went exact, "
           f"k / (fraction × rows)) risk jobs). Stopping rule with each row's own gap "
           f"(τ = {r0['tau_gap']:g}): accepted / shadows, on shadows holding a row at or above the threshold "
           f"(high) and the others (low). Rows: `bench/results/ulira.json` (`method: planner`).", "",
           "| dataset | scenario | k | shadows | seeds | planner AUC | retrain AUC | planner − retrain (worst) | met "
           "| noop AUC | default AUC | default with gaps AUC | went exact | planner CPU s | retrain CPU s "
           "| planner / retrain | risk job CPU s (training runs) | + amortised risk | rule high: noop / retrain / default "
           "| rule low: noop / retrain / default |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (ds, sc) in sorted(cells, key=lambda k: (k[0], _order(k[1]))):
        by = cells[(ds, sc)]
        seeds = sorted(by)
        rs = [by[s] for s in seeds]
        diff = [r["ulira_auc"] - r["same_shadows"]["retrain"]["ulira_auc"] for r in rs]
        worst = max(diff, key=abs)

        def same(m, key="ulira_auc"):
            v = [r["same_shadows"][m][key] for r in rs if m in r["same_shadows"]]
            return st.mean(v) if v else None
        cpu, rcpu = st.mean(r["cpu_seconds"] for r in rs), same("retrain", "cpu_seconds")
        risk = [r["risk_cpu_seconds"] for r in rs if r.get("risk_cpu_seconds")]
        runs = [r["risk_cpu_seconds"] / r["train_seconds"] for r in rs if r.get("risk_cpu_seconds")]
        amort = st.mean(r.get("risk_cpu_amortised") or 0.0 for r in rs)
        n_sh = sum(len(r["plans"]) for r in rs)
        n_ex = sum(sum(p["exact"] or p["fallback"] for p in r["plans"]) for r in rs)
        n_fb = sum(r["fallbacks"] for r in rs)
        d = udoc.get("default_method", "lethe_retrain_like")
        out.append(f"| {ds} | {_scenario_label(sc)} | {rs[0]['k']} | {rs[0]['shadows']} | {','.join(map(str, seeds))} | "
                   f"{st.mean(r['ulira_auc'] for r in rs):.3f} | {same('retrain'):.3f} | {st.mean(diff):+.3f} ({worst:+.3f}) | "
                   f"{'yes' if all(abs(x) <= AUC_TOL for x in diff) else 'no'} | {_fmt(same('noop'), '.3f')} | "
                   f"{_fmt(same(d), '.3f')} | {_fmt(same('approx_gap'), '.3f')} | {n_ex}/{n_sh}"
                   f"{f' ({n_fb} fallback)' if n_fb else ''} | {cpu:.2f} | {rcpu:.2f} | {cpu / rcpu:.2f} | "
                   f"{_fmt(st.mean(risk) if risk else None, '.2f')} ({_fmt(st.mean(runs) if runs else None, '.1f')}) | "
                   f"{cpu + amort:.2f} | "
                   f"{_band(rs, 'high', 'noop')} / {_band(rs, 'high', 'retrain')} / {_band(rs, 'high', d)} | "
                   f"{_band(rs, 'low', 'noop')} / {_band(rs, 'low', 'retrain')} / {_band(rs, 'low', d)} |")
    return "\n".join(out)


ULIRA_BLOCKS = {"ulira-default": ulira_default_table, "ulira-methods": ulira_methods_table,
                "ulira-planner": ulira_planner_table}


def _sub(text, name, body):
    pattern = re.compile(rf"(<!-- render:{name} -->\n).*?(<!-- /render:{name} -->)", re.DOTALL)
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def risk_calibration_table(cdoc) -> str:
    """The threshold fit (``python -m bench.ulira --fit``): per dataset and over all, the excess of
    the default-with-gaps over retraining per risk band, and how well the risk job ranks rows."""
    fits = cdoc.get("fit", {})
    out = ["Threshold calibration (`python -m bench.ulira --fit`; runs: "
           + "; ".join(f"`python -m bench.ulira {c}`" for c in cdoc.get("commands", []) if c) + f"; {cdoc['machine']}). "
           "Per risk band (quantiles of the examples' risk, each example's risk the mean over the shadows that "
           "trained on it): U-LiRA AUC of the default given each row's gap and of retraining, pairs pooled over the "
           "cells. Threshold: the lower edge of the lowest band from which every band up exceeds retraining's AUC "
           "by more than 0.05; the service's LETHE_RISK_THRESHOLD is the fit over all datasets. Spearman: the risk job's per-example risk (4 reference models per shadow) "
           "against the gap of the cell's own shadows (more models).", "",
           "| fit on | threshold | band (risk) | examples | default with gaps AUC | retrain AUC | excess |",
           "|---|---|---|---|---|---|---|"]
    for ds, f in fits.items():
        for i, b in enumerate(f["bands"]):
            out.append(f"| {ds if i == 0 else ''} | {_fmt(f['threshold'], '.3f') if i == 0 else ''} | "
                       f"{b['lo']:.2f} – {b['hi']:.2f} | {b['examples']} | {_fmt(b['approx_auc'], '.3f')} | "
                       f"{_fmt(b['exact_auc'], '.3f')} | {_fmt(b['excess'], '+.3f')} |")
    out += ["", "Risk job: " + "; ".join(
        f"{ds}: {f['risk_train_runs']:.1f} training runs (CPU), Spearman with the shadows' gap "
        + ", ".join(f"{x:.2f}" for x in f["spearman_vs_shadow_gap"]) for ds, f in fits.items() if ds != "all") + "."]
    return "\n".join(out)


def arcane_ablation_table(adoc) -> str:
    """Where ARCANE's accuracy goes (``python -m bench.arcane_ablation``): test accuracy per
    one-class learner / selection variant and per aggregation of the one-class scores."""
    aggregations = list(dict.fromkeys(a for r in adoc["rows"] for a in r["accuracy"]))
    out = ["ARCANE ablation (" + "; ".join(f"`python -m bench.arcane_ablation {c}`" for c in adoc["commands"])
           + f"; {adoc['machine']}; {adoc['started']}). Test accuracy (%) before any deletion, mean over the seeds listed; "
           "each aggregation's statistics are over the class's whole training data; `served model` is the ensemble "
           "as served, with the rule named beside it (its statistics over the selected rows: `mean` differs from "
           "its column only under selection). Every rule but the last two reads each sub-model's own class only; "
           "`calibrated`: a logistic regression over the k scores fitted on all training rows (not the paper's "
           "rule); `test-fit`: the same fitted on the test rows it is scored on (a diagnostic, not a rule); "
           "– : the rule does not apply to the learner (a negative log-likelihood has no ratio to its mean) "
           "or was not measured in that run.", "",
           "| dataset | seeds | learner / selection | " + " | ".join(f"`{a}`" for a in aggregations)
           + " | served model (rule) | monolithic | CPU s (ensemble) |", "|---|---|---|" + "---|" * (len(aggregations) + 3)]
    groups = defaultdict(list)
    for r in adoc["rows"]:
        groups[(r["dataset"], r["variant"])].append(r)
    for (ds, variant), rs in groups.items():
        out.append(f"| {ds} | {_seeds(rs)} | {variant} | "
                   + " | ".join(_fmt(None if any(r['accuracy'].get(a) is None for r in rs)
                                     else st.mean(r['accuracy'][a] for r in rs), ".2f") for a in aggregations)
                   + f" | {st.mean(r['served_accuracy'] for r in rs):.2f} (`{rs[0].get('served_aggregation', 'mean')}`)"
                     f" | {st.mean(r['monolithic_accuracy'] for r in rs):.2f} "
                     f"| {st.mean(r['cpu_seconds'] for r in rs):.1f} |")
    return "\n".join(out)


def exact_table(rows, runs=()) -> str:
    """Exact unlearning against retraining (``python -m bench.exact``): per dataset, method,
    S x R and deletion count, test accuracy after the deletions (mean over the seeds listed,
    their range in brackets) against the monolithic model of the same seeds, and the speed-up
    of the deletion batch against retraining without the same D_f (wall clock, and training
    examples processed: load-independent)."""
    groups = defaultdict(list)
    for r in rows:
        if r["method"] in ("retrain", "puma"):
            continue
        groups[(r["dataset"], r["method"], r["shards"], r["slices"], r["deletions"])].append(r)
    out = ["Runs: " + "; ".join(f"`{r['command']}` ({r['machine']}; {r['started']}; {r['wall_seconds']} s)"
                                for r in runs) + ". Rows without a run were measured before runs were recorded "
           "(one seed, 0). Accuracy: mean over the seeds listed (range in brackets); gap = mean accuracy minus the mean "
           f"monolithic accuracy of the same seeds (target: within {EXACT_GAP_TARGET:g} points); speed-ups: mean over "
           "the seeds of retrain / deletion batch (`*`: one retrain per seed, without the largest D_f, timed for "
           "every k).", "",
           "| dataset | method | S | R | deletions | seeds | accuracy (%) | monolithic (%) | gap (pt) | within 2 pt | "
           "speed-up (wall) | speed-up (work) | retrained members |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (ds, method, S, R, k), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "arcane", kv[0][1:])):
        acc = [r["accuracy"] for r in rs]
        mono = st.mean(r["monolithic_accuracy"] for r in rs)
        gap = st.mean(acc) - mono
        wall = st.mean(r["retrain_seconds"] / r["seconds"] for r in rs if r["seconds"])
        work = [r["retrain_samples"] / r["samples"] for r in rs if r.get("samples")]
        once = "*" if any(r.get("retrain_timed_without", k) != k for r in rs) else ""
        out.append(f"| {ds} | {method} | {S} | {R} | {k} | {_seeds(rs)} | {st.mean(acc):.2f} "
                   f"({min(acc):.2f}–{max(acc):.2f}) | {mono:.2f} | {gap:+.2f} | "
                   f"{'yes' if gap >= -EXACT_GAP_TARGET else 'no'} | {wall:.1f}x{once} | "
                   f"{_fmt(st.mean(work) if work else None, '.1f')}{'x' if work else ''} | "
                   f"{st.mean(r.get('retrained_members', 0) for r in rs):.1f} |")
    return "\n".join(out)


def planner_cost_table(pdoc) -> str:
    """What the planner's deletions cost against always-retraining (``python -m bench.planner_cost``):
    per model and k, CPU s per deletion, the risk job apart and amortised; then the profile of one
    approximate deletion."""
    out = []
    for r in pdoc.get("runs", []):
        v = r["version"]
        out += [f"`python -m bench.planner_cost {r['command']}` ({r['machine']}; {r['started']}): {r['dataset']}, "
                f"`{r['arch']}` {json.dumps(r['arch_params']) if r['arch_params'] else ''} ({v['params']:,} parameters), all {v['rows']:,} training rows, "
                f"seed {r['seed']}. One training run: {v['train_cpu']:.1f} CPU s. Risk job "
                f"({r['settings']['risk_reference_models']} reference models): {v['risk_cpu']:.1f} CPU s = "
                f"{v['risk_training_runs']:.2f} training runs; {v['risk']['rows_above_threshold']:,} of "
                f"{v['risk']['rows']:,} rows ({v['risk']['rows_above_threshold'] / v['risk']['rows']:.0%}) at or above "
                f"LETHE_RISK_THRESHOLD = {r['settings']['risk_threshold']:g}. Amortised: it runs again once "
                f"LETHE_RISK_RECOMPUTE_FRACTION = {r['settings']['risk_recompute_fraction']:g} of the rows is gone, "
                "i.e. k / (fraction x rows) risk jobs per deletion of k rows.", "",
                "| k | deletions | approximate / fallback | planner CPU s | always-retrain CPU s | planner / retrain "
                "| risk jobs per deletion | + amortised risk CPU s | (planner + risk) / retrain | ≤ 1/5 "
                "| expected exact share | expected planner / retrain |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for b in r["by_k"]:
            out.append(f"| {b['k']} | {b['deletions']} | {b['approximate']} / {b['fallbacks']} | {b['planner_cpu']:.1f} | "
                       f"{b['retrain_cpu']:.1f} | {b['ratio']:.2f} | {b['risk_jobs_per_deletion']:.5f} | "
                       f"{b['risk_cpu_amortised']:.3f} | {b['ratio_with_risk']:.3f} | "
                       f"{'yes' if b['ratio_with_risk'] <= 0.2 else 'no'} | {_fmt(b.get('expected_exact_share'), '.2f')} | "
                       f"{_fmt(b.get('expected_ratio'), '.2f')} |")
        dels = r["deletions"]
        plan, retr = st.mean(x["planner_cpu"] for x in dels), st.mean(x["retrain_cpu"] for x in dels)
        amort = st.mean(b["risk_cpu_amortised"] for b in r["by_k"])
        ratio = (plan + amort) / retr
        out += [f"| all k ≤ 8 | {len(dels)} | {sum(x['path'] == 'approximate' for x in dels)} / "
                f"{sum(x['path'] == 'exact (fallback)' for x in dels)} | {plan:.1f} | {retr:.1f} | {plan / retr:.2f} | – | "
                f"{amort:.3f} | {ratio:.3f} | {'yes' if ratio <= 0.2 else 'no'} | – | – |", "",
                "Expected: over every deletion of k random rows, from the risk of all rows (the share of deletions "
                "holding a row at or above the threshold) and the approximate runs' measured cost relative to "
                "retraining (no fallback, as measured; without the amortised risk job).", ""]
        approx = [x for x in dels if "approx_cpu" in x]
        if approx:
            out += [f"The approximate runs alone (the default method aimed at each row's gap, the worker's "
                    f"verification included): {st.mean(x['approx_cpu'] for x in approx):.1f} CPU s on average "
                    f"({min(x['approx_cpu'] for x in approx):.1f}–{max(x['approx_cpu'] for x in approx):.1f}), "
                    f"{sum(x['converged'] for x in approx)} of {len(approx)} converged "
                    "(the method's stopping rule with the rows' gaps).", ""]
    for pr in pdoc.get("profiles", []):
        out += [f"Profile of one approximate deletion{' (' + pr['note'] + ')' if pr.get('note') else ''} "
                f"(`python -m bench.planner_cost {pr['command']}`; cProfile in CPU seconds; {pr['machine']}; "
                f"{pr['started']}): {pr['dataset']}, k = 1, the default method as the worker runs it: "
                f"{pr['approx_cpu']:.2f} CPU s (training the model: {pr['train_cpu']:.1f} CPU s). "
                "Top functions by own time, then the project's functions by cumulative time:", "",
                "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
        top = pr["tottime"][:5]
        top += [e for e in pr["cumulative"] if e["function"].startswith(("models/", "app/")) and e not in top][:14]
        out += [f"| `{e['function']}` | {e['calls']} | {e['tottime']:.2f} | {e['cumtime']:.2f} |" for e in top]
        out.append("")
    return "\n".join(out).rstrip()


def render_text(text: str, doc, udoc=None, cdoc=None, adoc=None, pdoc=None, edoc=None) -> str:
    for name, fn in BLOCKS.items():
        if f"<!-- render:{name} -->" in text:
            text = _sub(text, name, fn(doc))
    for name, fn in ULIRA_BLOCKS.items():
        if udoc is not None and f"<!-- render:{name} -->" in text:
            text = _sub(text, name, fn(udoc))
    if cdoc is not None and "<!-- render:risk-calibration -->" in text:
        text = _sub(text, "risk-calibration", risk_calibration_table(cdoc))
    if adoc is not None and "<!-- render:arcane-ablation -->" in text:
        text = _sub(text, "arcane-ablation", arcane_ablation_table(adoc))
    if pdoc is not None and "<!-- render:planner-cost -->" in text:
        text = _sub(text, "planner-cost", planner_cost_table(pdoc))
    if edoc is not None and "<!-- render:exact -->" in text:
        text = _sub(text, "exact", exact_table(*edoc))
    return text


def _load_optional(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    p.add_argument("--results", default=RESULTS)
    p.add_argument("--ulira-results", default=ULIRA_RESULTS)
    a = p.parse_args(argv)
    with open(a.results) as f:
        doc = json.load(f)
    udoc = None
    if os.path.exists(a.ulira_results):
        with open(a.ulira_results) as f:
            udoc = json.load(f)
    cdoc, adoc, pdoc = (_load_optional(path) for path in (RISK_CALIBRATION, ARCANE_ABLATION, PLANNER_COST))
    edoc = None
    rows = _load_optional(EXACT)
    if rows is not None:
        runs = _load_optional(EXACT.replace(".json", "_runs.json")) or []
        used = {r.get("run") for r in rows}
        edoc = (rows, [r for r in runs if r["started"] in used])
    stale = []
    for path in TARGETS.values():
        with open(path) as f:
            text = f.read()
        new = render_text(text, doc, udoc, cdoc, adoc, pdoc, edoc)
        if new != text:
            stale.append(path)
            if not a.check:
                with open(path, "w") as f:
                    f.write(new)
    if a.check and stale:
        print("out of date with bench/results/instance.json / ulira.json (run `python -m bench.render`): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
