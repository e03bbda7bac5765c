"""The planner-cost benchmark's arithmetic (bench/planner_cost.py): the risk job amortised over the
deletions a version serves, and the exact share expected from the rows' risk."""
import math

import pytest

from bench.planner_cost import summarise
from bench.ulira import amortised_risk_jobs


def test_the_risk_job_reruns_once_the_recompute_fraction_of_rows_is_gone():
    # 10 % of 1,000 rows = 100 rows: deletions of 8 rows rerun it every 12.5 deletions
    assert amortised_risk_jobs(1.0, 8, 1000, 0.1) == pytest.approx(8 / 100)
    # ...but never more often than an exact version is published
    assert amortised_risk_jobs(0.05, 8, 1000, 0.1) == 0.05
    assert amortised_risk_jobs(0.3, 8, 1000, 0.0) == 0.3  # fraction 0: on every exact version


def _row(k, path, retrain, planner, approx=None):
    r = {"k": k, "path": path, "retrain_cpu": retrain, "planner_cpu": planner}
    if approx is not None:
        r["approx_cpu"] = approx
    return r


def test_summary_of_a_k_separates_the_risk_job_and_expects_from_the_whole_risk_distribution():
    version = {"rows": 100, "risk_cpu": 50.0, "risk": {"rows_above_threshold": 20}}
    rows = [_row(1, "approximate", 20.0, 2.0, 2.0), _row(1, "exact", 20.0, 20.0),
            _row(8, "exact (fallback)", 20.0, 22.0, 2.0), _row(8, "exact", 20.0, 20.0)]
    one, eight = summarise(rows, 1, version, 0.1), summarise(rows, 8, version, 0.1)
    assert one["ratio"] == pytest.approx(11 / 20) and one["approximate"] == 1 and one["fallbacks"] == 0
    assert one["risk_jobs_per_deletion"] == pytest.approx(1 / 10) and one["risk_cpu_amortised"] == pytest.approx(5.0)
    assert one["ratio_with_risk"] == pytest.approx((11 + 5) / 20)
    assert eight["fallbacks"] == 1 and eight["approximate"] == 0
    # P(a deletion of k rows drawn without replacement holds a row at or above the threshold)
    assert one["expected_exact_share"] == pytest.approx(0.2)
    assert eight["expected_exact_share"] == pytest.approx(1 - math.comb(80, 8) / math.comb(100, 8))
    p = eight["expected_exact_share"]
    assert eight["expected_ratio"] == pytest.approx(p + (1 - p) * 0.1)  # approximate runs: 2 of 20 CPU s
