"""The planner as a table of cases: each row is the facts a job records and the way it must go."""
import pytest

from app.jobs.planner import RETRAIN, Facts, plan, predict_approx_seconds


def facts(**kw):
    base = dict(sharded=False, method="lethe", k=8, has_retained=True, train_seconds=60.0, approx_history=[],
                max_approx_instances=64, retrain_below_s=10.0)
    return Facts(**{**base, **kw})


@pytest.mark.parametrize("kw, method, exact, why", [
    (dict(sharded=True, method="sisa"), "sisa", True, "sharded"),
    (dict(has_retained=False, method="paper_full"), "paper_full", False, "no retained data"),
    (dict(k=65), RETRAIN, True, "exceed the approximate cap"),
    (dict(k=1000, label_objective=True), RETRAIN, True, "exceed the approximate cap"),  # erasure first
    (dict(train_seconds=3.0), RETRAIN, True, "retraining takes 3.0 s"),             # adult: retrain
    (dict(train_seconds=3.0, label_objective=True), "lethe", False, "approximate"),  # a label promise
    (dict(approx_history=[[8, 70.0]]), RETRAIN, True, "predicted 70.0 s approximate >= 60.0 s"),
    (dict(approx_history=[[8, 4.0], [32, 12.0]]), "lethe", False, "predicted"),
    (dict(train_seconds=None), "lethe", False, "no retraining time recorded"),
    (dict(), "lethe", False, "no approximate history yet"),
    # a method full U-LiRA shows does not remove (PUMA): never serves a deletion, even when cheap
    (dict(method="puma", serves_deletions=False), RETRAIN, True, "not an unlearning method on its own"),
    (dict(method="puma", serves_deletions=False, train_seconds=None, label_objective=True), RETRAIN, True,
     "not an unlearning method on its own"),
    # a model its own pipeline retrains: approximate now, whatever would send it to retraining here
    (dict(retrains_here=False, k=65), "lethe", False, "retrained by its own pipeline"),
    (dict(retrains_here=False, train_seconds=3.0, risks=[0.9] * 8, risk_threshold=0.47), "lethe", False,
     "retrain order"),
])
def test_plan_table(kw, method, exact, why):
    p = plan(facts(**kw))
    assert (p.method, p.exact) == (method, exact) and why in p.reason, p


def test_plan_records_its_inputs():
    f = facts(k=3)
    doc = plan(f).to_json(f)
    assert doc["inputs"]["k"] == 3 and doc["inputs"]["train_seconds"] == 60.0 and doc["method"] == "lethe"


def test_approximate_cost_scales_with_k_and_keeps_the_fixed_cost():
    assert predict_approx_seconds([], 8) is None
    assert predict_approx_seconds([[8, 8.0], [16, 16.0]], 32) == pytest.approx(32.0)
    assert predict_approx_seconds([[8, 8.0]], 1) == pytest.approx(8.0)  # never below the cheapest job


def test_rows_at_risk_go_exact_and_the_plan_says_which_and_why():
    p = plan(facts(k=3, risks=[0.2, 1.7, 0.4], risk_threshold=1.0))
    assert (p.method, p.exact, p.rows_at_risk) == (RETRAIN, True, 1)
    assert "1 of 3 row(s) carry membership risk >= LETHE_RISK_THRESHOLD=1" in p.reason and "1.70" in p.reason
    f = facts(k=3, risks=[0.2, 0.3, 0.4], risk_threshold=1.0)
    low = plan(f)
    assert (low.method, low.exact, low.rows_at_risk) == ("lethe", False, 0)
    assert "every row's risk below" in low.reason and "own membership gap" in low.reason
    doc = low.to_json(f)
    assert doc["path"] == "approximate" and doc["inputs"]["risks"] == [0.2, 0.3, 0.4]
    assert doc["inputs"]["risk_threshold"] == 1.0


def test_risk_rule_order():
    # the cap and the erasure come first; a label promise is never traded for retraining by risk
    assert "exceed the approximate cap" in plan(facts(k=65, risks=[0.0] * 65, risk_threshold=1.0)).reason
    assert plan(facts(risks=[5.0] * 8, risk_threshold=1.0, label_objective=True)).method == "lethe"
    # unknown risk (no risk job for this version): the rule does not apply
    assert plan(facts(risks=None, risk_threshold=1.0)).method == "lethe"
