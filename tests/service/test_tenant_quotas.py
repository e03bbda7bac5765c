"""Per-tenant methods and quotas (app/tenants/service.py): a tenant limited to cheap methods
is refused the others (403 tenant_method_refused, and a default that fits its list); at most N
open requests and N submissions a day (429 tenant_quota_exceeded with Retry-After naming
the limit). Other tenants and operators are not counted against them."""
import datetime as dt

import pytest
from fastapi.testclient import TestClient

from app.db import session_scope
from app.forget.models import ForgetRequest
from app.main import create_app

from .conftest import MODEL, bearer, make_key

PORTAL = ["forget:write", "forget:read"]


@pytest.fixture
def gw(seeded, dispatcher):
    keys = {"acme": bearer(make_key(seeded, PORTAL, "acme-portal", tenant="acme")),
            "globex": bearer(make_key(seeded, PORTAL, "globex-portal", tenant="globex")),
            "operator": bearer(make_key(seeded, ["models:admin", "forget:read", "forget:write"], "ops"))}
    with TestClient(create_app(seeded, dispatcher=dispatcher)) as c:
        for t in ("acme", "globex"):
            c.put(f"/v1/tenants/{t}/models/{MODEL}", headers=keys["operator"]).raise_for_status()
        yield c, keys


def test_a_tenant_limited_to_cheap_methods(gw):
    c, k = gw
    r = c.put("/v1/tenants/acme", json={"methods": ["finetune", "lethe"]}, headers=k["operator"])
    assert r.status_code == 200 and r.json()["methods"] == ["finetune", "lethe"], r.text
    for method in ("retrain", "paper_full"):
        r = c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice", "method": method}, headers=k["acme"])
        assert (r.status_code, r.json()["code"]) == (403, "tenant_method_refused"), r.text
        assert f"may not use method {method!r}" in r.json()["detail"] and "['finetune', 'lethe']" in r.json()["detail"]
    # no method named: the family's first method the tenant may use, not the family default ("instance")
    r = c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"}, headers=k["acme"])
    assert r.status_code == 202, r.text
    assert c.get(f"/v1/forget/{r.json()['id']}", headers=k["acme"]).json()["method"] == "lethe"
    # another tenant, and operators, are not limited
    r = c.post("/v1/forget", json={"model": MODEL, "subject_id": "bob", "method": "retrain"}, headers=k["globex"])
    assert r.status_code == 202, r.text
    # the list is checked, and null clears it
    r = c.put("/v1/tenants/acme", json={"methods": ["magic"]}, headers=k["operator"])
    assert (r.status_code, r.json()["code"]) == (422, "unknown_method")
    assert c.put("/v1/tenants/acme", json={"methods": None}, headers=k["operator"]).json()["methods"] is None


def test_open_request_quota(gw):
    c, k = gw
    assert c.put("/v1/tenants/acme", json={"max_open_requests": 2}, headers=k["operator"]).json()["limits"] == \
        {"max_open_requests": 2, "max_requests_per_day": 0}
    ids = [c.post("/v1/forget", json={"model": MODEL, "instance_ids": [f"toy-{i:05d}"]},
                  headers={**k["acme"], "Idempotency-Key": f"a-{i}"}) for i in (0, 1)]
    assert [r.status_code for r in ids] == [202, 202]
    r = c.post("/v1/forget", json={"model": MODEL, "instance_ids": ["toy-00002"]}, headers=k["acme"])
    assert (r.status_code, r.json()["code"]) == (429, "tenant_quota_exceeded"), r.text
    assert "max_open_requests" in r.json()["detail"] and int(r.headers["Retry-After"]) >= 1
    # globex is not counted against acme
    assert c.post("/v1/forget", json={"model": MODEL, "instance_ids": ["toy-00002"]},
                  headers=k["globex"]).status_code == 202
    # a replay of an accepted request is not a new submission
    again = c.post("/v1/forget", json={"model": MODEL, "instance_ids": ["toy-00000"]},
                   headers={**k["acme"], "Idempotency-Key": "a-0"})
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    # closing one frees a slot
    assert c.post(f"/v1/forget/{ids[0].json()['id']}/cancel", headers=k["acme"]).status_code == 200
    assert c.post("/v1/forget", json={"model": MODEL, "instance_ids": ["toy-00004"]}, headers=k["acme"]).status_code == 202
    view = c.get("/v1/tenants/acme", headers=k["operator"]).json()
    assert view["usage"]["open_requests"] == 2 and view["usage"]["requests_last_24h"] == 3


def test_daily_quota_and_the_setting_default(seeded, dispatcher):
    s = seeded.model_copy(update={"tenant_max_requests_per_day": 2})
    acme = bearer(make_key(s, PORTAL, "acme-portal", tenant="acme"))
    op = bearer(make_key(s, ["models:admin", "forget:write"], "ops"))
    with TestClient(create_app(s, dispatcher=dispatcher)) as c:
        c.put(f"/v1/tenants/acme/models/{MODEL}", headers=op).raise_for_status()
        for i in (0, 1):
            r = c.post("/v1/forget", json={"model": MODEL, "instance_ids": [f"toy-{i:05d}"]}, headers=acme)
            assert r.status_code == 202
            c.post(f"/v1/forget/{r.json()['id']}/cancel", headers=acme).raise_for_status()  # closed still counts
        # the oldest submission of the window was 23 h ago: a slot frees in about an hour
        with session_scope(s.database_url) as db:
            oldest = db.query(ForgetRequest).filter_by(tenant="acme").order_by(ForgetRequest.received_at).first()
            oldest.received_at -= dt.timedelta(hours=23)
        r = c.post("/v1/forget", json={"model": MODEL, "instance_ids": ["toy-00002"]}, headers=acme)
        assert (r.status_code, r.json()["code"]) == (429, "tenant_quota_exceeded") and \
            "max_requests_per_day" in r.json()["detail"], r.text
        assert 3000 <= int(r.headers["Retry-After"]) <= 3600
        # operators are not held to a tenant's quota
        assert c.post("/v1/forget", json={"model": MODEL, "instance_ids": ["toy-00002"]}, headers=op).status_code == 202
        # the tenant's own limit wins over the setting (0: unlimited)
        c.put("/v1/tenants/acme", json={"max_requests_per_day": 0}, headers=op).raise_for_status()
        assert c.post("/v1/forget", json={"model": MODEL, "instance_ids": ["toy-00003"]}, headers=acme).status_code == 202
