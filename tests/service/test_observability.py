"""JSON logs with request and job ids and no personal data; Prometheus /metrics."""
from __future__ import annotations

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.security.pseudonyms import subject_ref
from app.observability import JsonFormatter
from worker.driver import execute_job

from .conftest import MODEL, SECRET, complete_request


class Lines(logging.Handler):
    """Formats at emit time, as a real handler does (the ids live in context variables)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def logs():
    h = Lines()
    root = logging.getLogger()
    old = root.level
    root.addHandler(h)
    root.setLevel(logging.DEBUG)
    try:
        yield h
    finally:
        root.removeHandler(h)
        root.setLevel(old)


def test_request_logs_are_json_with_request_ids_and_no_subject_ids(client, seeded, logs):
    r = client.get("/v1/subjects/alice/instances", headers={"X-Request-ID": "req-abc-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-abc-123"
    r = client.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"})
    assert r.status_code == 202
    generated = r.headers["x-request-id"]
    assert len(generated) == 32
    # an unsafe caller-supplied id is replaced, not echoed into the logs
    r = client.get("/v1/subjects/mallory-xyz/instances", headers={"X-Request-ID": "bad id\nwith newline"})
    assert r.status_code == 404 and r.headers["x-request-id"] != "bad id\nwith newline"
    client.get("/v1/nothing-here/bob")
    client.get("/healthz")  # polled routes: DEBUG, not INFO

    records = [json.loads(line) for line in logs.lines]  # every line is one JSON object
    server = [line for line, rec in zip(logs.lines, records) if rec["logger"] != "httpx"]  # httpx: the test's client
    access = [rec for rec in records if rec["logger"] == "lethe.access" and rec["route"] != "/healthz"]
    assert [(a["method"], a["route"], a["status"]) for a in access] == [
        ("GET", "/v1/subjects/{subject_id}/instances", 200), ("POST", "/v1/forget", 202),
        ("GET", "/v1/subjects/{subject_id}/instances", 404), ("GET", "<unmatched>", 404)]
    assert access[0]["request_id"] == "req-abc-123" and access[1]["request_id"] == generated
    assert all(isinstance(a["duration_ms"], float) for a in access)
    assert [a["level"] for a in access] == ["INFO"] * 4
    assert [r["level"] for r in records if r["logger"] == "lethe.access" and r["route"] == "/healthz"] == ["DEBUG"]
    text = "\n".join(server)
    for personal in ("alice", "mallory", "bob", subject_ref(SECRET, "alice")):
        assert personal not in text


def test_worker_logs_carry_the_job_id(seeded, logs):
    _, job_id = complete_request(seeded, "alice")
    assert execute_job(job_id, settings=seeded) == "done"  # a redelivery: logged, no-op
    mine = [json.loads(line) for line in logs.lines if job_id in line]
    assert mine and all(rec.get("job_id") == job_id for rec in mine)
    assert any(rec["logger"] == "lethe.worker" and "done" in rec["msg"] for rec in mine)


def _scrape(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics(client, seeded):
    m = _scrape(client)
    assert m[("lethe_state_up", ())] == 1
    assert m[("lethe_queue_depth", ())] == 0
    assert m[("lethe_model_latest_version", (("model", MODEL),))] == 1

    complete_request(seeded, "alice", metrics={"ua": 100.0, "ra": 97.5, "ta": 91.25, "mia_efficacy": 12.5,
                                               "method": "lethe"})
    r = client.post("/v1/forget", json={"model": MODEL, "subject_id": "bob"})
    assert r.status_code == 202
    m = _scrape(client)
    assert m[("lethe_forget_requests", (("status", "completed"),))] == 1
    assert m[("lethe_forget_requests", (("status", "queued"),))] == 1
    assert m[("lethe_forget_requests_overdue", ())] == 0
    assert m[("lethe_queue_depth", ())] == 1
    assert m[("lethe_jobs", (("status", "completed"),))] == 1
    assert m[("lethe_job_duration_seconds_count", (("method", "instance"), ("status", "completed")))] == 1
    assert m[("lethe_job_duration_seconds_bucket", (("le", "1.0"), ("method", "instance"), ("status", "completed")))] == 1
    assert m[("lethe_forget_time_to_completion_seconds_count", (("model", MODEL),))] == 1
    # completed within seconds of a 30-day deadline: far below 0.1 % of the allowed time
    assert m[("lethe_forget_deadline_used_ratio_bucket", (("le", "0.001"), ("model", MODEL)))] == 1
    assert m[("lethe_model_latest_version", (("model", MODEL),))] == 2
    assert m[("lethe_model_quality", (("metric", "ta"), ("model", MODEL)))] == 91.25
    assert m[("lethe_model_quality", (("metric", "mia_efficacy"), ("model", MODEL)))] == 12.5
    assert ("lethe_model_quality", (("metric", "method"), ("model", MODEL))) not in m
    assert m[("lethe_http_requests_total", (("method", "POST"), ("route", "/v1/forget"), ("status", "202")))] == 1
    assert m[("lethe_http_requests_total", (("method", "GET"), ("route", "/metrics"), ("status", "200")))] >= 1


def test_overdue_requests_are_counted(client, seeded):
    import datetime as dt

    from app.db import session_scope
    from app.forget.models import ForgetRequest

    rid = client.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"}).json()["id"]
    with session_scope(seeded.database_url) as db:
        db.get(ForgetRequest, rid).due_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    assert _scrape(client)[("lethe_forget_requests_overdue", ())] == 1
