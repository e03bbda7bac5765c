"""The publishing rules: whether a job's new model may be published. A pure function of the
job's measured metrics (no database, no clock), next to the planner whose choice it judges:
the worker refuses a result for which ``refusals`` names a problem, and an approximate
result it refuses falls back to exact retraining (``worker.instance_wise``).

The same rules for every family; whether every forget instance must reach the objective
comes from the method's catalogue entry (``models.unlearn.registry.must_reach``: methods
that remove influence cannot promise a label). An exact retrain is the reference an
approximate result is judged against: what it loses is what the remaining data supports, so
it is published whatever its test-accuracy drop (the drop is recorded).
"""
from __future__ import annotations

from models.unlearn import must_reach


def refusals(objective: str, metrics: dict, *, max_test_accuracy_drop: float) -> list[str]:
    """The reasons to refuse publishing (empty: publish). ``metrics``: the job's measured
    ``ua`` (% of forget instances misclassified), ``ta_drop`` (test-accuracy points lost
    against the base version), ``method``, and ``exact`` for a retrain."""
    m = metrics
    problems = []
    if must_reach(m["method"], objective) and m["ua"] < 100.0 - 1e-6:
        problems.append(f"only {m['ua']:.1f} % of the forget instances are misclassified (need 100 %)")
    if m["ta_drop"] > max_test_accuracy_drop and not m.get("exact"):
        problems.append(f"test accuracy fell {m['ta_drop']:.2f} pt (limit {max_test_accuracy_drop})")
    if any(v != v for v in m.values() if isinstance(v, float)):
        problems.append("a metric is NaN")
    return problems
