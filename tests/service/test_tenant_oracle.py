"""No oracle (docs/service.md, *No oracle*): to a tenant's key, ``POST /v1/forget`` answers
the same whether or not the model holds what it names — an existing or unknown subject, an
instance of the subject or of another, an unknown or already erased one — and the request's
selection and job stay hidden until it has run, so submitting and cancelling probes nothing.
A request that selected nothing closes later as ``completed`` with ``reason_code: no_data``
(audit entry, certificate saying nothing was held). Operators keep the precise errors; subject
reads need ``subjects:read``."""
import pytest
from fastapi.testclient import TestClient

from app.audit import signing
from app.db import session_scope
from app.forget import nodata
from app.main import create_app

from .conftest import MODEL, add_model, bearer, close_no_data, complete_request, make_key

PORTAL = ["forget:write", "forget:read"]
OTHER = "toy-cnn-b"  # trained on rows 0..2 only: alice's, not bob's


@pytest.fixture
def gw(seeded, dispatcher):
    add_model(seeded, OTHER, n=3)
    complete_request(seeded, "user-5")  # toy-00005 is erased from MODEL
    keys = {"acme": bearer(make_key(seeded, PORTAL, "acme-portal", tenant="acme")),
            "operator": bearer(make_key(seeded, ["models:admin", "forget:read", "forget:write"], "ops"))}
    with TestClient(create_app(seeded, dispatcher=dispatcher)) as c:
        for m in (MODEL, OTHER):
            c.put(f"/v1/tenants/acme/models/{m}", headers=keys["operator"]).raise_for_status()
        yield c, keys


HIT = {"model": MODEL, "subject_id": "alice"}
MISSES = [{"model": MODEL, "subject_id": "zed"},  # no such subject
          {"model": MODEL, "instance_ids": ["ghost-1"]},  # no such instance
          {"model": MODEL, "subject_id": "alice", "instance_ids": ["toy-00004"]},  # bob's, not alice's
          {"model": MODEL, "instance_ids": ["toy-00005"]}]  # erased already


def _shape(answer: dict) -> dict:
    """An answer without what differs between any two requests (ids, times)."""
    return {k: v for k, v in answer.items() if k not in ("id", "due_at", "received_at")}


def test_a_portal_cannot_tell_what_the_catalogue_holds(gw):
    c, k = gw
    hit = c.post("/v1/forget", json=HIT, headers=k["acme"])
    assert hit.status_code == 202 and hit.json()["job_id"] is None, hit.text
    seen = c.get(f"/v1/forget/{hit.json()['id']}", headers=k["acme"]).json()
    assert seen["instance_ids"] is None and seen["job"] is None and seen["status"] == "queued"
    for body in MISSES:
        miss = c.post("/v1/forget", json=body, headers=k["acme"])
        assert miss.status_code == 202, (body, miss.text)
        assert _shape(miss.json()) == _shape(hit.json()), body
        read = c.get(f"/v1/forget/{miss.json()['id']}", headers=k["acme"]).json()
        assert {**_shape(read), "external_id": None} == {**_shape(seen), "external_id": None}, body
    # the list says no more than the reads
    assert all(r["instance_ids"] is None and r["job"] is None
               for r in c.get("/v1/forget", headers=k["acme"]).json()["items"])
    # submit-and-cancel learns nothing either: a hit and a miss cancel alike
    miss_id = c.post("/v1/forget", json={"model": OTHER, "subject_id": "bob"}, headers=k["acme"]).json()["id"]
    for rid in (hit.json()["id"], miss_id):
        r = c.post(f"/v1/forget/{rid}/cancel", headers=k["acme"]).json()
        assert r["status"] == "canceled" and r["instance_ids"] is None and r["job"] is None
    # operators see the selection, and keep the precise errors
    assert c.get(f"/v1/forget/{hit.json()['id']}", headers=k["operator"]).json()["instance_ids"] == \
        ["toy-00000", "toy-00001", "toy-00002"]
    for body, code in zip(MISSES, ("unknown_subject", "unknown_instances", "instances_not_of_subject",
                                   "already_erased")):
        assert c.post("/v1/forget", json=body, headers=k["operator"]).json()["code"] == code, body


def test_a_request_that_selects_nothing_completes_with_no_data(gw):
    c, k = gw
    s = c.app.state.settings
    hit = c.post("/v1/forget", json={"model": MODEL, "subject_id": "bob"}, headers=k["acme"]).json()
    miss = c.post("/v1/forget", json={"model": MODEL, "subject_id": "zed", "external_id": "t-9"},
                  headers=k["acme"]).json()
    with session_scope(s.database_url) as db:  # not before LETHE_NO_DATA_HOLD_S
        assert nodata.resolve(db, hold_s=30) == []
    assert close_no_data(s) == 1
    done = c.get(f"/v1/forget/{miss['id']}", headers=k["acme"]).json()
    assert (done["status"], done["reason_code"], done["instance_ids"]) == ("completed", "no_data", []), done
    assert done["version_before"] is None and done["version_after"] is None and done["job"] is None
    assert c.get(f"/v1/forget/{hit['id']}", headers=k["acme"]).json()["status"] == "queued"  # the worker's
    cert = c.get(f"/v1/forget/{miss['id']}/certificate", headers=k["acme"])
    assert cert.status_code == 200, cert.text
    body = cert.json()["certificate"]
    assert (body["outcome"], body["instances"], body["external_id"]) == ("no_data", 0, "t-9")
    ok, why = signing.verify_certificate(cert.json(), signing.private_key(s).public_key())
    assert ok, why
    audit = c.get("/v1/audit", params={"limit": 500}, headers=bearer(make_key(s, ["audit:read"], "aud"))).json()
    (done_event,) = [e for e in audit["entries"] if e["action"] == "forget.completed"
                     and e["payload"]["request_id"] == miss["id"]]
    assert done_event["payload"]["outcome"] == "no_data"


def test_erasing_a_subject_everywhere_spans_every_granted_model(gw):
    c, k = gw
    s = c.app.state.settings
    bob = c.post("/v1/forget", json={"subject_id": "bob"}, headers=k["acme"])  # held by MODEL only
    zed = c.post("/v1/forget", json={"subject_id": "zed"}, headers=k["acme"])  # held nowhere
    for r in (bob, zed):
        assert r.status_code == 202, r.text
        assert [(m["model"], m["status"], m["job_id"]) for m in r.json()["requests"]] == \
            [(MODEL, "queued", None), (OTHER, "queued", None)]
    assert close_no_data(s) == 3
    after = c.get(f"/v1/erasures/{bob.json()['id']}", headers=k["acme"]).json()
    assert [m["status"] for m in after["requests"]] == ["queued", "completed"]
    assert c.get(f"/v1/erasures/{zed.json()['id']}", headers=k["acme"]).json()["status"] == "completed"
    # an operator's erasure names only the models that hold the subject, and 404s for nobody
    assert [m["model"] for m in c.post("/v1/forget", json={"subject_id": "alice"},
                                       headers=k["operator"]).json()["requests"]] == sorted([MODEL, OTHER])
    assert c.post("/v1/forget", json={"subject_id": "zed"}, headers=k["operator"]).json()["code"] == "unknown_subject"


def test_subject_reads_need_their_own_scope(gw):
    c, k = gw
    s = c.app.state.settings
    r = c.get("/v1/subjects/alice/instances", headers=k["acme"])
    assert (r.status_code, r.json()["code"]) == (403, "missing_scope") and "subjects:read" in r.json()["detail"]
    reader = bearer(make_key(s, ["subjects:read"], "acme-access", tenant="acme"))
    c.delete(f"/v1/tenants/acme/models/{OTHER}", headers=k["operator"]).raise_for_status()
    assert {i["model"] for i in c.get("/v1/subjects/alice/instances", headers=reader).json()["instances"]} == {MODEL}
    assert {i["model"] for i in c.get("/v1/subjects/alice/instances", headers=k["operator"]).json()["instances"]} \
        == {MODEL, OTHER}


def test_migration_gives_forget_read_keys_subjects_read(tmp_path):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from app.cli import ROOT

    from .conftest import make_settings

    s = make_settings(tmp_path)
    cfg = Config(f"{ROOT}/alembic.ini")
    cfg.attributes["url"] = s.database_url
    command.upgrade(cfg, "0012")
    engine = create_engine(s.database_url)
    with engine.begin() as conn:
        for key_id, scopes in (("k_portal", '["forget:write", "forget:read"]'), ("k_audit", '["audit:read"]')):
            conn.execute(text("INSERT INTO api_keys (id, name, key_hash, prefix, scopes, created_at, tenant) "
                              "VALUES (:i, :i, :i, 'x', :s, '2026-12-01', 'default')"), {"i": key_id, "s": scopes})
    command.upgrade(cfg, "head")
    with engine.connect() as conn:
        got = dict(conn.execute(text("SELECT id, scopes FROM api_keys")).all())
    assert got == {"k_portal": '["forget:write", "forget:read", "subjects:read"]', "k_audit": '["audit:read"]'}
    command.downgrade(cfg, "0012")
    with engine.connect() as conn:
        assert "subjects" not in conn.execute(text("SELECT scopes FROM api_keys WHERE id = 'k_portal'")).scalar()
    engine.dispose()
