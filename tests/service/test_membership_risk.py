"""The risk job and the planner that reads it: every row of an exact version gets its membership
risk (worker/risk.py, models/risk.py), the version's metrics show the summary and its cost, a
deletion holding a row at or above LETHE_RISK_THRESHOLD is retrained, the plan and the
certificate say which path served each row, and the retrained version is measured in turn.
Real training of the toy model (no mocks of the ML)."""
from sqlalchemy import select

from app.forget import certificates
from app.db import session_scope
from app.forget.models import ForgetRequest
from app.forget.schemas import ForgetCreate
from app.forget.service import submit
from app.jobs.models import Job
from app.registry import service as registry
from app.registry.models import RowRisk
from worker import driver
from worker.risk import run_risk_job

from .conftest import MODEL


def _risk_rows(s, version):
    with session_scope(s.database_url) as db:
        return {r.instance_id: r.risk for r in db.execute(select(RowRisk).where(
            RowRisk.model_name == MODEL, RowRisk.version == version)).scalars()}


def _forget(s, subject):
    with session_scope(s.database_url) as db:
        req, _, _ = submit(db, s, ForgetCreate(model=MODEL, subject_id=subject), idempotency_key=None, actor="t")
        return req.id, req.job_id


def test_risk_job_measures_every_row_and_the_planner_retrains_the_risky_ones(seeded, client):
    s = seeded.model_copy(update={"risk_reference_models": 4, "retrain_below_s": 0.0, "risk_recompute_fraction": 0.0})
    summary = run_risk_job(MODEL, 1, settings=s)
    risks = _risk_rows(s, 1)
    assert len(risks) == 12 and summary["rows"] == 12 and summary["reference_models"] == 4
    assert summary["seconds"] > 0 and "rows_above_threshold" in summary
    v1 = [v for v in client.get(f"/v1/models/{MODEL}/versions").json()["versions"] if v["version"] == 1][0]
    assert v1["metrics"]["membership_risk"]["rows"] == 12  # shown where the version is

    # a threshold below alice's highest risk: her deletion goes exact, and says why
    rid, job_id = _forget(s, "alice")
    with session_scope(s.database_url) as db:
        ids = list(db.get(ForgetRequest, rid).instance_ids)
    top = max(risks[i] for i in ids)
    assert top > 0  # being trained on a row makes the model more confident in it
    s2 = s.model_copy(update={"risk_threshold": top})
    assert driver.execute_job(job_id, settings=s2, worker_name="w1") == "completed"
    with session_scope(s.database_url) as db:
        job = db.get(Job, job_id)
        assert set(job.plan["row_risk"]) == set(ids)
        assert job.plan["inputs"]["risk_threshold"] == s2.risk_threshold
        assert job.plan["method"] == "retrain" and "membership risk" in job.plan["reason"], job.plan
        assert job.plan["path"] == "exact" and job.plan["rows_at_risk"] >= 1
        cert = certificates.build(db, db.get(ForgetRequest, rid))
        assert cert["path"]["row_risk"].keys() == set(ids)
        assert cert["path"]["served"] == "exact" and "membership risk" in cert["path"]["reason"]
        assert cert["path"]["risk_threshold"] == s2.risk_threshold
        new_version = job.result_version
    # the retrained version is an exact one: measured in turn, without alice's rows
    assert set(_risk_rows(s, new_version)) == set(risks) - set(ids)


def test_low_risk_rows_go_approximate_each_aimed_at_its_own_gap(seeded, client):
    s = seeded.model_copy(update={"risk_reference_models": 4, "retrain_below_s": 0.0, "risk_threshold": 1e6})
    summary = run_risk_job(MODEL, 1, settings=s)
    rid, job_id = _forget(s, "alice")
    assert driver.execute_job(job_id, settings=s, worker_name="w1") == "completed"
    with session_scope(s.database_url) as db:
        job = db.get(Job, job_id)
        assert "every row's risk below LETHE_RISK_THRESHOLD=1e+06" in job.plan["reason"], job.plan
        assert job.plan["rows_at_risk"] == 0 and job.plan["row_risk"]
        approx_version = job.result_version
        alice = len(db.get(ForgetRequest, rid).instance_ids)
    # the approximate version's card shows the risk of the exact version it came from, and what its
    # lineage erased of the rows measured there
    card = client.get(f"/v1/models/{MODEL}/versions/{approx_version}").json()
    assert not card["exact"]
    risk = card["membership_risk"]
    assert risk["measured_on_version"] == 1 and risk["rows"] == 12
    assert risk["cost"]["training_runs"] == summary["training_runs"]
    assert risk["recompute"]["rows_gone"] == alice == 3
    assert client.get(f"/v1/models/{MODEL}/versions/1").json()["membership_risk"]["recompute"]["rows_gone"] == 0


def test_the_model_card_shows_the_risk_summary_of_the_exact_version(seeded, client):
    assert client.get(f"/v1/models/{MODEL}/versions/1").json()["membership_risk"] is None  # not measured yet
    s = seeded.model_copy(update={"risk_reference_models": 4})
    summary = run_risk_job(MODEL, 1, settings=s)
    risks = _risk_rows(s, 1)
    card = client.get(f"/v1/models/{MODEL}/versions/1").json()["membership_risk"]
    threshold = seeded.risk_threshold  # the service's own LETHE_RISK_THRESHOLD
    assert card["measured_on_version"] == 1 and card["reference_models"] == 4 and card["rows"] == 12
    assert card["computed_at"] == summary["computed_at"]
    assert card["cost"] == {k: summary[k] for k in ("seconds", "cpu_seconds", "training_runs")}
    assert card["cost"]["cpu_seconds"] > 0
    assert card["threshold"] == threshold
    assert card["rows_above_threshold"] == sum(r >= threshold for r in risks.values())
    assert card["risk_max"] == max(risks.values())
    assert card["recompute"]["fraction"] == seeded.risk_recompute_fraction
    assert card["recompute"]["rows_gone"] == 0 and "LETHE_RISK_RECOMPUTE_FRACTION" in card["recompute"]["policy"]


def test_a_retrain_that_removed_few_rows_keeps_the_measured_risk(seeded, client):
    s = seeded.model_copy(update={"risk_reference_models": 4, "max_approx_instances": 1,
                                  "risk_recompute_fraction": 0.5})
    run_risk_job(MODEL, 1, settings=s)
    _, job_id = _forget(s, "alice")  # over the cap: retrained; 3 of 12 rows gone, under half
    assert driver.execute_job(job_id, settings=s, worker_name="w1") == "completed"
    with session_scope(s.database_url) as db:
        v = db.get(Job, job_id).result_version
        assert registry.get_version(db, MODEL, v).metrics["membership_risk"]["measured_on_version"] == 1
    assert not _risk_rows(s, v) and len(_risk_rows(s, 1)) == 12
    card = client.get(f"/v1/models/{MODEL}/versions/{v}").json()  # an exact version that kept v1's risk
    assert card["exact"] and card["membership_risk"]["measured_on_version"] == 1
    assert card["membership_risk"]["recompute"]["rows_gone"] == 3


def test_no_risk_job_for_approximate_versions_or_when_off(seeded):
    assert run_risk_job(MODEL, 1, settings=seeded) is None  # LETHE_RISK_REFERENCE_MODELS=0: off
    with session_scope(seeded.database_url) as db:
        registry.get_version(db, MODEL, 1).exact = False
    assert run_risk_job(MODEL, 1, settings=seeded.model_copy(update={"risk_reference_models": 4})) is None
