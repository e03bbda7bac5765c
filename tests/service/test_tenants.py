"""Tenants: two portals (forget:write + forget:read keys of tenants acme and globex) share
one gateway. Neither reads, lists, cancels nor replays the other's requests; a 409 names
no request of the other; operators and auditors see both (app/security/tenants.py)."""
import pytest
from fastapi.testclient import TestClient

from app.main import create_app

from .conftest import MODEL, bearer, make_key

PORTAL = ["forget:write", "forget:read"]


@pytest.fixture
def gw(seeded, dispatcher):
    keys = {"acme": bearer(make_key(seeded, PORTAL, "acme-portal", tenant="acme")),
            "globex": bearer(make_key(seeded, PORTAL, "globex-portal", tenant="globex")),
            "operator": bearer(make_key(seeded, ["models:admin", "forget:read"], "ops")),
            "auditor": bearer(make_key(seeded, ["audit:read", "forget:read"], "audit"))}
    with TestClient(create_app(seeded, dispatcher=dispatcher)) as c:
        for tenant in ("acme", "globex"):  # a new tenant may target no model until granted
            assert c.put(f"/v1/tenants/{tenant}/models/{MODEL}", headers=keys["operator"]).status_code == 200
        yield c, keys


def _submit(c, key, body, idem=None):
    headers = {**key, **({"Idempotency-Key": idem} if idem else {})}
    r = c.post("/v1/forget", json=body, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()


def test_another_tenants_request_reads_like_an_unknown_one(gw):
    c, k = gw
    mine = _submit(c, k["acme"], {"model": MODEL, "subject_id": "alice"})
    assert c.get(f"/v1/forget/{mine['id']}", headers=k["acme"]).status_code == 200
    unknown = c.get("/v1/forget/00000000-0000-0000-0000-000000000000", headers=k["globex"])
    for path in (f"/v1/forget/{mine['id']}", f"/v1/forget/{mine['id']}/webhooks"):
        r = c.get(path, headers=k["globex"])
        assert (r.status_code, r.json()["code"]) == (404, "unknown_request"), (path, r.text)
    assert c.get(f"/v1/forget/{mine['id']}", headers=k["globex"]).json()["detail"].replace(
        mine["id"], "X") == unknown.json()["detail"].replace("00000000-0000-0000-0000-000000000000", "X")
    r = c.post(f"/v1/forget/{mine['id']}/cancel", headers=k["globex"])
    assert (r.status_code, r.json()["code"]) == (404, "unknown_request")
    assert c.get(f"/v1/forget/{mine['id']}", headers=k["acme"]).json()["status"] == "queued"  # not canceled
    # the job is the tenant's only while it serves one of its requests (a portal learns the
    # job id once the request has run: test_tenant_oracle.py; an operator sees it at once)
    assert mine["job_id"] is None
    job_id = c.get(f"/v1/forget/{mine['id']}", headers=k["operator"]).json()["job"]["id"]
    assert c.get(f"/v1/jobs/{job_id}", headers=k["globex"]).status_code == 404
    job = c.get(f"/v1/jobs/{job_id}", headers=k["acme"])
    assert job.status_code == 200 and job.json()["request_ids"] == [mine["id"]]
    assert c.post(f"/v1/forget/{mine['id']}/cancel", headers=k["acme"]).json()["status"] == "canceled"


def test_lists_hold_only_the_tenants_requests_operators_and_auditors_see_all(gw):
    c, k = gw
    a = _submit(c, k["acme"], {"model": MODEL, "subject_id": "alice"})
    b = _submit(c, k["globex"], {"model": MODEL, "subject_id": "bob"})
    for who, want in (("acme", {a["id"]}), ("globex", {b["id"]}), ("operator", {a["id"], b["id"]}),
                      ("auditor", {a["id"], b["id"]})):
        page = c.get("/v1/forget", headers=k[who]).json()
        assert {r["id"] for r in page["items"]} == want and page["total"] == len(want), who
    for who in ("operator", "auditor"):
        assert c.get(f"/v1/forget/{a['id']}", headers=k[who]).status_code == 200
        assert c.get(f"/v1/forget/{b['id']}", headers=k[who]).status_code == 200
    # both requests wait on the same job: each portal sees only its own request in it
    job_a, job_b = (c.get(f"/v1/forget/{r['id']}", headers=k["operator"]).json()["job"]["id"] for r in (a, b))
    assert job_a == job_b
    assert c.get(f"/v1/jobs/{job_a}", headers=k["globex"]).json()["request_ids"] == [b["id"]]
    assert set(c.get(f"/v1/jobs/{job_a}", headers=k["operator"]).json()["request_ids"]) == {a["id"], b["id"]}


def test_idempotency_keys_are_namespaced_by_tenant(gw):
    c, k = gw
    body = {"model": MODEL, "subject_id": "alice"}
    a = _submit(c, k["acme"], body, idem="order-1")
    again = c.post("/v1/forget", json=body, headers={**k["acme"], "Idempotency-Key": "order-1"})
    assert again.json()["id"] == a["id"] and again.headers.get("Idempotent-Replayed") == "true"
    # globex replaying acme's key (with another body) gets its own request, not acme's nor a 409
    b = c.post("/v1/forget", json={"model": MODEL, "subject_id": "bob"},
               headers={**k["globex"], "Idempotency-Key": "order-1"})
    assert b.status_code == 202 and b.json()["id"] != a["id"] and "Idempotent-Replayed" not in b.headers
    assert c.get(f"/v1/forget/{b.json()['id']}", headers=k["globex"]).status_code == 200
    assert c.get(f"/v1/forget/{a['id']}", headers=k["globex"]).status_code == 404


def test_a_pending_instance_answers_no_409_to_a_tenant(gw):
    """No ``already_pending`` oracle (app/forget/follow.py): another tenant's request, or the
    same tenant's, for instances a request has pending is accepted and follows it; only an
    operator hears the precise 409."""
    c, k = gw
    a = _submit(c, k["acme"], {"model": MODEL, "subject_id": "alice"})
    ids = c.get(f"/v1/forget/{a['id']}", headers=k["operator"]).json()["instance_ids"]
    for key in (k["globex"], k["acme"]):
        r = c.post("/v1/forget", json={"model": MODEL, "instance_ids": ids[:1]}, headers=key)
        assert r.status_code == 202 and a["id"] not in r.text and ids[0] not in r.text, r.text
    ops = bearer(make_key(c.app.state.settings, ["models:admin", "forget:write"], "ops-writer"))
    r = c.post("/v1/forget", json={"model": MODEL, "instance_ids": ids[:1]}, headers=ops)
    assert r.status_code == 409 and r.json()["code"] == "already_pending"


