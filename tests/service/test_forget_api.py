"""POST /v1/forget like a client would: every bad input gets a 4xx saying what is wrong,
and nothing is recorded for it."""
import pytest

from app.catalogue import service as catalogue
from app.db import session_scope
from app.security.pseudonyms import subject_ref

from .conftest import MODEL, counts

OK = {"model": MODEL, "subject_id": "alice"}


def _erase(settings, ids):
    with session_scope(settings.database_url) as db:
        catalogue.mark_erased(db, MODEL, ids, job_id="earlier-job")


BAD = [
    ({"model": "nope", "subject_id": "alice"}, 404, "not registered"),
    ({"model": MODEL}, 422, "give subject_id or instance_ids"),
    ({"model": MODEL, "instance_ids": []}, 422, "empty list"),
    ({"model": MODEL, "instance_ids": ["toy-00001", "ghost-1", "ghost-2"]}, 422, "ghost-1, ghost-2"),
    ({"model": MODEL, "instance_ids": ["toy-00001", "toy-00001"]}, 422, "repeats: toy-00001"),
    ({"model": MODEL, "subject_id": "zed"}, 404, "this subject has no instances"),  # the id is not repeated
    ({"model": MODEL, "subject_id": "alice", "instance_ids": ["toy-00004"]}, 422, "do not belong to this subject"),
    ({"model": MODEL, "instance_ids": "toy-00001"}, 422, "instance_ids"),
    ({"model": MODEL, "instance_ids": [1, 2]}, 422, "instance_ids"),
    ({"model": MODEL, "subject_id": 7}, 422, "subject_id"),
    ({"model": MODEL, "subject_id": "alice", "objective": "vanish"}, 422, "objective"),
    ({"model": MODEL, "subject_id": "alice", "method": "magic"}, 422, "method"),
    ({"model": MODEL, "subject_id": "alice", "colour": "red"}, 422, "colour"),
    ({"model": MODEL, "subject_id": "alice", "target_label": 3}, 422, "only meaningful with objective 'relabel'"),
    ({"model": MODEL, "subject_id": "alice", "objective": "relabel", "target_label": 10}, 422, "out of range"),
    ({"model": MODEL, "instance_ids": ["toy-00003"], "objective": "relabel", "target_label": 3}, 422,
     "already the true label"),
    ({"model": MODEL, "subject_id": "alice", "objective": "relabel", "target_label": -1}, 422, "target_label"),
    ({"model": 5, "subject_id": "alice"}, 422, "model"),
    ({"model": "", "subject_id": "alice"}, 422, "model"),
    ([1, 2, 3], 422, "body"),
]


@pytest.mark.parametrize("body,status,message", BAD)
def test_bad_input_is_refused_and_nothing_recorded(client, seeded, dispatcher, body, status, message):
    before = counts(seeded)
    r = client.post("/v1/forget", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert counts(seeded) == before and dispatcher.sent == []


def test_not_json_and_oversized_bodies(client, seeded, dispatcher):
    before = counts(seeded)
    r = client.post("/v1/forget", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    big = {"model": MODEL, "instance_ids": ["x" * 100] * 20_000}  # ~2 MB > 1 MB limit
    r = client.post("/v1/forget", json=big)
    assert r.status_code == 413 and "exceeds" in r.json()["detail"]
    assert counts(seeded) == before and dispatcher.sent == []


def test_chunked_oversized_body_is_refused(tmp_path, dispatcher):
    from fastapi.testclient import TestClient

    from app.cli import migrate
    from app.main import create_app

    from .conftest import make_settings

    s = make_settings(tmp_path, max_body_bytes=100)
    migrate(s)

    def chunks():
        yield b'{"model": "toy-cnn", "instance_ids": ['
        for _ in range(20):
            yield b'"aaaaaaaaaa",'
        yield b'"b"]}'

    with TestClient(create_app(s, dispatcher=dispatcher)) as c:
        r = c.post("/v1/forget", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_too_many_instances(tmp_path, dispatcher, seeded):
    from fastapi.testclient import TestClient

    from app.main import create_app

    from .conftest import bearer, make_key

    s = seeded.model_copy(update={"max_instances_per_request": 3})
    with TestClient(create_app(s, dispatcher=dispatcher), headers=bearer(make_key(s))) as c:
        r = c.post("/v1/forget", json={"model": MODEL, "instance_ids": [f"toy-{i:05d}" for i in range(5)]})
    assert r.status_code == 422 and "at most 3" in r.json()["detail"]


def test_already_erased_and_already_pending(client, seeded, dispatcher):
    _erase(seeded, ["toy-00000"])
    r = client.post("/v1/forget", json=OK)
    assert r.status_code == 409 and "already erased" in r.json()["detail"] and "toy-00000" in r.json()["detail"]
    first = client.post("/v1/forget", json={"model": MODEL, "subject_id": "bob"})
    assert first.status_code == 202
    before = counts(seeded)
    r = client.post("/v1/forget", json={"model": MODEL, "instance_ids": ["toy-00004", "toy-00005"]})
    assert r.status_code == 409 and first.json()["id"] in r.json()["detail"] and "toy-00004" in r.json()["detail"]
    assert counts(seeded) == before


def test_accepted_request_is_recorded_with_due_date_and_audit(client, seeded, dispatcher):
    r = client.post("/v1/forget", json={**OK, "external_id": "TICKET-7"})
    assert r.status_code == 202
    body = r.json()
    assert r.headers["location"] == f"/v1/forget/{body['id']}"
    assert body["status"] == "queued" and dispatcher.sent == [body["job_id"]]
    got = client.get(f"/v1/forget/{body['id']}").json()
    assert got["instance_ids"] == ["toy-00000", "toy-00001", "toy-00002"]
    assert got["external_id"] == "TICKET-7" and got["job"]["status"] == "queued"
    import datetime as dt

    received, due = dt.datetime.fromisoformat(got["received_at"]), dt.datetime.fromisoformat(got["due_at"])
    assert due - received == dt.timedelta(days=30)
    events = client.get("/v1/audit", params={"action": "forget.received"}).json()["entries"]
    assert len(events) == 1 and events[0]["payload"]["request_id"] == body["id"]
    # the audit log keeps the keyed hash, never the raw subject id
    assert events[0]["subject_ref"] == subject_ref("test-secret", "alice")
    assert "alice" not in str(events[0])
    job = client.get(f"/v1/jobs/{body['job_id']}").json()
    assert job["request_ids"] == [body["id"]] and job["attempts"] == 0


def test_idempotency_key_returns_the_same_request(client, seeded, dispatcher):
    h = {"Idempotency-Key": "retry-123"}
    a = client.post("/v1/forget", json=OK, headers=h)
    before = counts(seeded)
    b = client.post("/v1/forget", json=OK, headers=h)
    assert a.status_code == b.status_code == 202
    assert a.json() == b.json() and b.headers.get("idempotent-replayed") == "true"
    assert counts(seeded) == before and len(dispatcher.sent) == 1
    c = client.post("/v1/forget", json={**OK, "objective": "misclassify"}, headers=h)  # not the default
    assert c.status_code == 409 and a.json()["id"] in c.json()["detail"]
    d = client.post("/v1/forget", json=OK, headers={"Idempotency-Key": "k" * 201})
    assert d.status_code == 422 and "Idempotency-Key" in d.json()["detail"]


def test_requests_are_coalesced_into_the_queued_job(client, seeded, dispatcher):
    a = client.post("/v1/forget", json=OK).json()
    b = client.post("/v1/forget", json={"model": MODEL, "instance_ids": ["toy-00007"]}).json()
    assert a["job_id"] == b["job_id"] and dispatcher.sent == [a["job_id"]]
    c = client.post("/v1/forget", json={"model": MODEL, "subject_id": "bob", "objective": "misclassify"}).json()
    assert c["job_id"] != a["job_id"] and dispatcher.sent == [a["job_id"], c["job_id"]]
    job = client.get(f"/v1/jobs/{a['job_id']}").json()
    assert sorted(job["request_ids"]) == sorted([a["id"], b["id"]])


def test_unknown_ids_on_read_routes(client):
    assert client.get("/v1/forget/nope").status_code == 404
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.get("/v1/models/nope/versions").status_code == 404
    r = client.get("/v1/subjects/zed/instances")
    assert r.status_code == 404 and "this subject" in r.json()["detail"] and "zed" not in r.json()["detail"]


def test_subject_instances(client, seeded):
    r = client.get("/v1/subjects/alice/instances").json()
    assert [i["instance_id"] for i in r["instances"]] == ["toy-00000", "toy-00001", "toy-00002"]
    assert all(i["model"] == MODEL and not i["erased"] for i in r["instances"])
    assert client.get("/v1/subjects/alice/instances", params={"model": "other"}).status_code == 404


def test_health(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "registry": "ok", "worker": "ok"}


def test_readyz_reports_an_unreachable_broker(seeded):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from worker.celery_app import CeleryDispatcher

    import secrets

    s = seeded.model_copy(update={"broker_url": "redis://127.0.0.1:1/0", "subject_secret": secrets.token_hex(32),
                                  "webhook_secret": secrets.token_hex(32)})
    from .conftest import bearer, make_key

    with TestClient(create_app(s, dispatcher=CeleryDispatcher(s))) as c:
        assert c.get("/readyz").json() == {"status": "not ready"}  # no details without an operator's key
        r = c.get("/readyz", headers=bearer(make_key(s, ["models:admin"], name="operator")))
    assert r.status_code == 503 and r.json()["checks"]["broker"].startswith("error")
    assert r.json()["checks"]["database"] == "ok"
