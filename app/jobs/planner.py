"""The planner: which way one job forgets, and why. A pure function of recorded facts
(no database, no clock), so a table of cases tests it and the job row shows what it saw.

The choices, in order:

1. a sharded model (SISA, ARCANE) retrains the affected shards: exact, and cheap by design;
2. no retained data: only a data-free approximate method can run;
3. a method the catalogue marks as not an unlearning method on its own
   (``MethodInfo.serves_deletions`` False: full U-LiRA shows its result is no closer to
   retraining than the unchanged model, e.g. PUMA, docs/unlearning.md): exact retraining;
   the method never serves a deletion;
4. more instances than ``LETHE_MAX_APPROX_INSTANCES``: exact retraining from scratch with the
   model's recipe (flipping a large share of the data is label noise an approximate method
   cannot absorb; the instance-wise benchmark shows the quality loss at k = 128);
5. (not for the label objectives) a row whose membership risk (``models/risk.py``: the effect
   size of being trained on it, measured once per exact version by reference models on halves
   of its training data) is at or above ``LETHE_RISK_THRESHOLD``: retrain now. The threshold is
   calibrated by full U-LiRA (Hayes et al., SaTML 2025): above it the approximate method's
   per-example attack AUC exceeds retraining's by more than 0.05 (``bench/ulira.py --calibrate``),
   so an approximate edit would publish a model an attacker tells apart from retraining on
   exactly the rows a model memorised. Retraining without the whole forget set serves every
   row of the job exactly;
6. (not for the label objectives misclassify/relabel, whose promise retraining cannot keep)
   a model whose recorded training time is at most ``LETHE_RETRAIN_BELOW_S``: retrain — exact,
   and no slower than the approximate method (on ``adult`` the default ran at 0.5-3.4x the
   speed of a 2.4-3.7 s retrain);
7. this model's past approximate jobs predict a cost at least that of retraining: retrain;
8. otherwise the requested (or default) approximate method -- each row aimed at its own
   membership gap when the version's risk is known -- with exact retraining as the fallback
   when its result is refused by the publishing rules (``app.jobs.publishing``;
   ``worker.instance_wise`` runs both).

The plan records each row's risk, the threshold and the reason; ``path`` says per row which
path served it ("exact" or "approximate").
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

RETRAIN = "retrain"  # the catalogue's exact method: train from scratch on D_r with the stored recipe


@dataclass(frozen=True)
class Facts:
    sharded: bool                   # the model's family retrains shards (its own method is exact)
    method: str                     # the approximate method the request resolves to
    k: int                          # instances this job forgets
    has_retained: bool              # the catalogue still holds data to retrain on
    train_seconds: float | None     # the model's recorded training time (None: not known)
    approx_history: list = field(default_factory=list)  # [k, seconds] of this model's approximate jobs
    max_approx_instances: int = 64
    label_objective: bool = False   # misclassify/relabel: a promise about labels retraining cannot keep,
                                    # so cost alone never trades it for retraining (the cap and the
                                    # fallback still do: the erasure itself comes first)
    retrain_below_s: float = 10.0
    risks: list | None = None       # per forget row, its membership risk (None: not measured for this version)
    risk_threshold: float | None = None  # LETHE_RISK_THRESHOLD: rows at or above it go exact
    serves_deletions: bool = True   # the catalogue's MethodInfo.serves_deletions of ``method``
    retrains_here: bool = True      # False: the model's own pipeline retrains it (trainer ``external``,
                                    # app/registry/orders.py), so no job of Lethe's can retrain it


@dataclass(frozen=True)
class Plan:
    method: str
    exact: bool
    reason: str
    predicted_approx_s: float | None
    predicted_retrain_s: float | None
    rows_at_risk: int = 0           # forget rows whose risk is at or above the threshold

    def to_json(self, facts: Facts) -> dict:
        doc = {**asdict(self), "inputs": asdict(facts)}
        doc["path"] = "exact" if self.exact else "approximate"  # the path that serves every row of the job
        return doc


def rows_at_risk(f: Facts) -> list[int]:
    """Indices of the forget rows whose risk is at or above the threshold (empty when unknown)."""
    if f.risks is None or f.risk_threshold is None:
        return []
    return [i for i, r in enumerate(f.risks) if r is not None and float(r) >= f.risk_threshold]


def predict_approx_seconds(history: list, k: int) -> float | None:
    """Seconds per instance of this model's past approximate jobs (median), times k, and never
    less than the cheapest past job (a job has a fixed cost: loading, evaluation)."""
    usable = [(int(hk), float(s)) for hk, s in history if int(hk) > 0 and float(s) > 0]
    if not usable:
        return None
    per_instance = statistics.median(s / hk for hk, s in usable)
    return max(per_instance * k, min(s for _, s in usable))


def plan(f: Facts) -> Plan:
    retrain_s = f.train_seconds
    if f.sharded:
        return Plan(f.method, True, "sharded model: only the shards holding the instances are retrained (exact)",
                    None, retrain_s)
    approx_s = predict_approx_seconds(f.approx_history, f.k)
    if not f.has_retained:
        return Plan(f.method, False, "no retained data in the catalogue: only a data-free method can run",
                    approx_s, None)
    if not f.retrains_here:  # its exact version comes from a retrain order, whatever the rules below say
        return Plan(f.method, False, "the model is retrained by its own pipeline (trainer 'external'): approximate "
                                     "now; its exact version comes from a retrain order (GET /v1/retrain-orders)",
                    approx_s, None)
    if not f.serves_deletions:
        return Plan(RETRAIN, True, f"{f.method} is not an unlearning method on its own (full U-LiRA: its result is "
                                   f"told apart from retraining; docs/unlearning.md): exact retraining", approx_s, retrain_s)
    if f.k > f.max_approx_instances:
        return Plan(RETRAIN, True, f"{f.k} instances exceed the approximate cap "
                                   f"(LETHE_MAX_APPROX_INSTANCES={f.max_approx_instances}): exact retraining",
                    approx_s, retrain_s)
    hot = rows_at_risk(f)
    if hot and not f.label_objective:
        top = max(float(f.risks[i]) for i in hot)
        return Plan(RETRAIN, True, f"{len(hot)} of {f.k} row(s) carry membership risk >= LETHE_RISK_THRESHOLD="
                                   f"{f.risk_threshold:g} (highest {top:.2f}): the approximate method cannot make "
                                   f"them indistinguishable from retraining; exact retraining", approx_s, retrain_s,
                    len(hot))
    if retrain_s is not None and retrain_s <= f.retrain_below_s and not f.label_objective:
        return Plan(RETRAIN, True, f"retraining takes {retrain_s:.1f} s (<= LETHE_RETRAIN_BELOW_S="
                                   f"{f.retrain_below_s:g}): exact and as cheap", approx_s, retrain_s)
    if retrain_s is not None and approx_s is not None and approx_s >= retrain_s and not f.label_objective:
        return Plan(RETRAIN, True, f"predicted {approx_s:.1f} s approximate >= {retrain_s:.1f} s retraining "
                                   f"(from {len(f.approx_history)} past job(s) of this model)", approx_s, retrain_s)
    why = ("no retraining time recorded" if retrain_s is None else
           f"no approximate history yet; retraining takes {retrain_s:.1f} s" if approx_s is None else
           f"predicted {approx_s:.1f} s approximate < {retrain_s:.1f} s retraining")
    if f.risks is not None and f.risk_threshold is not None:
        why += f"; every row's risk below LETHE_RISK_THRESHOLD={f.risk_threshold:g} (highest " \
               f"{max((float(r) for r in f.risks if r is not None), default=float('nan')):.2f}), each aimed at its own " \
               f"membership gap"
    return Plan(f.method, False, f"approximate ({why}); exact retraining if verification refuses it",
                approx_s, retrain_s, len(hot))
