"""Request lifecycle over HTTP: queued -> running -> completed | failed, denied (reason
code), canceled (only before it runs), operator retry, due dates, the sweeper, and the
quality gate's refusal recorded in the audit."""
import datetime as dt

from app.db import session_scope
from app.forget.models import ForgetRequest
from app.jobs import service as jobs
from app.jobs.models import Job
from app.jobs.sweeper import sweep, sweep_and_dispatch

from .conftest import MODEL, save_net


def _post(client, **body):
    r = client.post("/v1/forget", json={"model": MODEL, **body})
    assert r.status_code == 202, r.text
    return r.json()


def _claim(settings, job_id, worker="w1"):
    with session_scope(settings.database_url) as db:
        c = jobs.claim(db, job_id, worker=worker, lease_s=settings.job_lease_s)
        return c.outcome, c.token, list(c.instance_ids)


def _actions(client, action):
    return [e for e in client.get("/v1/audit", params={"action": action, "limit": 1000}).json()["entries"]]


def test_queued_running_completed_with_due_date(client, seeded):
    a = _post(client, subject_id="alice")
    assert a["days_left"] == 30
    got = client.get(f"/v1/forget/{a['id']}").json()
    assert (got["status"], got["days_left"], got["overdue"], got["certificate_url"]) == ("queued", 30, False, None)
    outcome, token, ids = _claim(seeded, a["job_id"])
    assert outcome == "run"
    assert client.get(f"/v1/forget/{a['id']}").json()["status"] == "running"
    sha, rel = save_net(seeded, seed=2)
    with session_scope(seeded.database_url) as db:
        jobs.complete(db, job_id=a["job_id"], token=token, worker="w1", instance_ids=ids, sha256=sha,
                      storage_path=rel, metrics={"ua": 100.0}, stats={})
    got = client.get(f"/v1/forget/{a['id']}").json()
    assert got["status"] == "completed" and got["days_left"] is None and got["overdue"] is False
    assert got["certificate_url"] == f"/v1/forget/{a['id']}/certificate"


def test_cancel_only_before_it_runs(client, seeded, dispatcher):
    a = _post(client, subject_id="alice")
    r = client.post(f"/v1/forget/{a['id']}/cancel", json={"reason": "the subject withdrew the request"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "canceled" and body["reason"] == "the subject withdrew the request"
    assert body["closed_at"] and body["days_left"] is None
    assert client.get(f"/v1/jobs/{a['job_id']}").json()["status"] == "canceled"  # no open request left
    assert _claim(seeded, a["job_id"])[0] == "done"  # a late message runs nothing
    again = client.post(f"/v1/forget/{a['id']}/cancel")
    assert again.status_code == 409 and "only a queued request" in again.json()["detail"]
    # its instances are free again: a new request for alice is accepted
    b = _post(client, subject_id="alice")
    assert _claim(seeded, b["job_id"])[0] == "run"
    r = client.post(f"/v1/forget/{b['id']}/cancel")
    assert r.status_code == 409 and "running" in r.json()["detail"]
    assert client.post("/v1/forget/nope/cancel").status_code == 404
    ev = _actions(client, "forget.canceled")
    assert len(ev) == 1 and ev[0]["payload"]["request_id"] == a["id"] and ev[0]["actor"].startswith("key:")


def test_cancel_one_of_a_coalesced_job_keeps_the_other(client, seeded):
    a = _post(client, subject_id="alice")
    b = _post(client, subject_id="bob")
    assert a["job_id"] == b["job_id"]
    assert client.post(f"/v1/forget/{a['id']}/cancel").status_code == 200
    assert client.get(f"/v1/jobs/{a['job_id']}").json()["status"] == "queued"
    outcome, _, ids = _claim(seeded, a["job_id"])
    assert outcome == "run" and ids == ["toy-00003", "toy-00004"]  # only bob's
    assert client.get(f"/v1/forget/{a['id']}").json()["status"] == "canceled"


def test_deny_with_reason_code(client, seeded):
    a = _post(client, subject_id="alice", external_id="T-1")
    bad = client.post(f"/v1/forget/{a['id']}/deny", json={"reason_code": "because", "reason": "x"})
    assert bad.status_code == 422 and "reason_code" in bad.json()["detail"]
    assert client.post(f"/v1/forget/{a['id']}/deny", json={"reason_code": "no_match"}).status_code == 422
    r = client.post(f"/v1/forget/{a['id']}/deny",
                    json={"reason_code": "legal_exemption", "reason": "Art. 17(3)(b): kept under a legal obligation"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["reason_code"]) == ("denied", "legal_exemption") and "17(3)" in body["reason"]
    assert client.post(f"/v1/forget/{a['id']}/deny", json={"reason_code": "other", "reason": "x"}).status_code == 409
    assert client.post(f"/v1/forget/{a['id']}/retry").status_code == 409
    ev = _actions(client, "forget.denied")[0]
    assert ev["payload"]["reason_code"] == "legal_exemption" and ev["subject_ref"] and "alice" not in str(ev)


def test_failed_then_operator_retry(client, seeded, dispatcher):
    a = _post(client, subject_id="alice")
    _, token, _ = _claim(seeded, a["job_id"])
    with session_scope(seeded.database_url) as db:
        assert jobs.fail(db, job_id=a["job_id"], token=token, worker="w1", error="disk full", retryable=False) == "failed"
    got = client.get(f"/v1/forget/{a['id']}").json()
    assert got["status"] == "failed" and got["error"] == "disk full"
    assert client.post(f"/v1/forget/{a['id']}/cancel").status_code == 409
    r = client.post(f"/v1/forget/{a['id']}/retry")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "queued" and body["retries"] == 1 and body["error"] is None
    assert body["job"]["id"] != a["job_id"] and dispatcher.sent[-1] == body["job"]["id"]
    assert client.post(f"/v1/forget/{a['id']}/retry").status_code == 409  # queued, not failed
    ev = _actions(client, "forget.retried")[0]["payload"]
    assert ev["previous_job_id"] == a["job_id"] and ev["previous_error"] == "disk full"
    assert _claim(seeded, body["job"]["id"])[0] == "run"


def test_retry_refused_when_another_request_covers_the_instances(client, seeded):
    a = _post(client, subject_id="alice")
    _, token, _ = _claim(seeded, a["job_id"])
    with session_scope(seeded.database_url) as db:
        jobs.fail(db, job_id=a["job_id"], token=token, worker="w1", error="boom", retryable=False)
    b = _post(client, instance_ids=["toy-00000"])
    r = client.post(f"/v1/forget/{a['id']}/retry")
    assert r.status_code == 409 and b["id"] in r.json()["detail"]


def test_list_filters_paging_and_overdue(client, seeded):
    ids = [_post(client, subject_id=s)["id"] for s in ("alice", "bob")]
    c = _post(client, instance_ids=["toy-00007"])
    client.post(f"/v1/forget/{ids[1]}/cancel")
    with session_scope(seeded.database_url) as db:  # alice's request arrived 31 days ago
        req = db.get(ForgetRequest, ids[0])
        req.received_at -= dt.timedelta(days=31)
        req.due_at -= dt.timedelta(days=31)
    page = client.get("/v1/forget", params={"limit": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["next_offset"] == 2
    assert [i["id"] for i in page["items"]] == [c["id"], ids[1]]  # newest first
    rest = client.get("/v1/forget", params={"limit": 2, "offset": 2}).json()
    assert [i["id"] for i in rest["items"]] == [ids[0]] and rest["next_offset"] is None
    late = rest["items"][0]
    assert late["overdue"] is True and late["days_left"] == -1
    assert [i["id"] for i in client.get("/v1/forget", params={"overdue": True}).json()["items"]] == [ids[0]]
    assert client.get("/v1/forget", params={"status": "canceled"}).json()["total"] == 1
    assert client.get("/v1/forget", params={"model": "other"}).json()["total"] == 0
    assert client.get("/v1/forget", params={"status": "lost"}).status_code == 422


def test_sweeper_requeues_stuck_jobs_and_counts(client, seeded, dispatcher):
    a = _post(client, subject_id="alice")
    for attempt in (1, 2, 3):
        assert _claim(seeded, a["job_id"], worker=f"w{attempt}")[0] == "run"
        with session_scope(seeded.database_url) as db:  # nothing is stuck yet
            assert sweep(db, lease_s=seeded.job_lease_s, stuck_queued_s=seeded.stuck_queued_s) == []
        with session_scope(seeded.database_url) as db:  # the worker died: heartbeat goes stale
            job = db.get(Job, a["job_id"])
            job.heartbeat_at -= dt.timedelta(seconds=seeded.job_lease_s + 5)
        sent = sweep_and_dispatch(seeded, dispatcher)
        got = client.get(f"/v1/forget/{a['id']}").json()
        job = client.get(f"/v1/jobs/{a['job_id']}").json()
        if attempt < 3:
            assert sent == [a["job_id"]] and dispatcher.sent[-1] == a["job_id"]
            assert got["status"] == "queued" and job["status"] == "queued" and job["attempts"] == attempt
            assert "lost" in job["error"]
        else:  # attempts exhausted: failed, with the reason
            assert sent == [] and got["status"] == "failed" and "gave up after 3 attempts" in got["error"]
    with session_scope(seeded.database_url) as db:
        assert db.get(Job, a["job_id"]).sweeps == 3
    assert len(_actions(client, "job.requeued")) == 2


def test_sweeper_redispatches_a_queued_job_whose_message_was_lost(client, seeded, dispatcher):
    a = _post(client, subject_id="alice")
    assert sweep_and_dispatch(seeded, dispatcher) == []
    with session_scope(seeded.database_url) as db:
        db.get(Job, a["job_id"]).created_at -= dt.timedelta(seconds=seeded.stuck_queued_s + 1)
    assert sweep_and_dispatch(seeded, dispatcher) == [a["job_id"]]
    assert sweep_and_dispatch(seeded, dispatcher) == []  # not again until another timeout passes
    with session_scope(seeded.database_url) as db:
        assert db.get(Job, a["job_id"]).sweeps == 1


def test_quality_gate_refusal_fails_the_request_and_is_audited(client, seeded, monkeypatch):
    from worker import driver, instance_wise
    from worker.job import Built

    def refused(s, spec, lease):  # the method ran; the real gate sees a 10-point drop
        def write():
            raise AssertionError("the gate let a 10-point drop through")
        return Built({"ua": 100.0, "ta": 80.0, "base_ta": 90.0, "ta_drop": 10.0, "method": "lethe"}, {}, write)

    monkeypatch.setattr(instance_wise, "build", refused)
    a = _post(client, subject_id="alice")
    assert driver.execute_job(a["job_id"], settings=seeded, worker_name="w1") == "failed"
    got = client.get(f"/v1/forget/{a['id']}").json()
    assert got["status"] == "failed" and "test accuracy fell 10.00 pt (limit 5.0)" in got["error"]
    ev = _actions(client, "quality_gate.refused")
    assert len(ev) == 1 and ev[0]["payload"]["ta_drop"] == 10.0 and ev[0]["payload"]["published"] is False
    assert ev[0]["payload"]["max_test_accuracy_drop"] == 5.0
    versions = client.get(f"/v1/models/{MODEL}/versions").json()
    assert [v["version"] for v in versions["versions"]] == [1] and versions["aliases"] == {"production": 1}


def test_a_reason_that_names_the_subject_is_refused_not_stored(client, seeded):
    """Lethe stores no subject id: a deny or cancel reason containing the request's subject id
    (alone, inside a sentence, with punctuation, or an id of several words) answers 422
    reason_names_subject and changes nothing; text without it is accepted."""
    from app.security import pseudonyms

    ref = pseudonyms.subject_ref(seeded.subject_secret, "Mary Ann Smith")
    assert pseudonyms.names_subject(seeded.subject_secret, "a duplicate of Mary  Ann Smith's.", ref) is True
    assert pseudonyms.names_subject(seeded.subject_secret, "duplicate: Mary Ann Smith.", ref) is True
    assert pseudonyms.names_subject(seeded.subject_secret, "Mary and Ann Smith", ref) is False
    a = _post(client, subject_id="alice", external_id="T-2")
    for reason in ("alice", "Requested by alice, who withdrew.", "(alice)", "ALICE is not alice's id? yes: alice"):
        r = client.post(f"/v1/forget/{a['id']}/deny", json={"reason_code": "other", "reason": reason})
        assert r.status_code == 422 and r.json()["code"] == "reason_names_subject", (reason, r.text)
        assert "alice" not in r.text
        r = client.post(f"/v1/forget/{a['id']}/cancel", json={"reason": reason})
        assert r.status_code == 422 and r.json()["code"] == "reason_names_subject", (reason, r.text)
    assert client.get(f"/v1/forget/{a['id']}").json()["status"] in ("queued", "running")
    assert _actions(client, "forget.denied") == [] and _actions(client, "forget.canceled") == []

    b = _post(client, subject_id="bob", external_id="T-3")
    r = client.post(f"/v1/forget/{b['id']}/cancel", json={"reason": "duplicate of ticket T-2 (bobby)"})
    assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
    assert r.json()["reason"] == "duplicate of ticket T-2 (bobby)"
    r = client.post(f"/v1/forget/{a['id']}/deny", json={"reason_code": "other", "reason": "aliceX is someone else"})
    assert r.status_code == 200 and r.json()["status"] == "denied", r.text
