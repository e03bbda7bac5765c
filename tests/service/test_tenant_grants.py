"""Per-tenant model grants (app/tenants): a tenant's keys target, read and predict with only
the models granted to it; a model it may not target answers exactly like one that does not
exist, and the list of known models names only its own. The default tenant keeps every model.
Operators grant and revoke over HTTP (``/v1/tenants``) and with ``lethe tenants``."""
import pytest
from fastapi.testclient import TestClient

from app.main import create_app

from .conftest import MODEL, add_model, bearer, make_key

OTHER = "secret-cnn"  # a second model on the same dataset, not granted to acme
PORTAL = ["forget:write", "forget:read", "subjects:read"]


def register_other(settings, name: str = OTHER) -> None:
    add_model(settings, name, seed=7)


@pytest.fixture
def gw(seeded, dispatcher):
    register_other(seeded)
    keys = {"acme": bearer(make_key(seeded, PORTAL, "acme-portal", tenant="acme")),
            "default": bearer(make_key(seeded, PORTAL, "default-portal")),
            "operator": bearer(make_key(seeded, ["models:admin", "forget:read"], "ops")),
            "auditor": bearer(make_key(seeded, ["audit:read", "forget:read"], "audit"))}
    with TestClient(create_app(seeded, dispatcher=dispatcher)) as c:
        r = c.put(f"/v1/tenants/acme/models/{MODEL}", headers=keys["operator"])
        assert r.status_code == 200 and r.json()["models"] == [MODEL], r.text
        yield c, keys


def _same_404(c, key, path, method="GET", json=None, code="unknown_model"):
    """``path`` names OTHER; the answer must equal, word for word, the one for a model that
    does not exist."""
    mine = c.request(method, path, headers=key, json=json)
    ghost_json = {k: ("no-such-model" if v == OTHER else v) for k, v in json.items()} if json else json
    ghost = c.request(method, path.replace(OTHER, "no-such-model"), headers=key, json=ghost_json)
    assert (mine.status_code, mine.json()["code"]) == (404, code), (path, mine.text)
    assert mine.json()["detail"].replace(OTHER, "X") == ghost.json()["detail"].replace("no-such-model", "X"), path
    return mine.json()


def test_a_model_not_granted_reads_like_one_that_does_not_exist(gw):
    c, k = gw
    body = _same_404(c, k["acme"], "/v1/forget", "POST", {"model": OTHER, "subject_id": "alice"})
    assert body["detail"].endswith(f"known models: {[MODEL]}"), body  # not every registered model
    for path in (f"/v1/models/{OTHER}", f"/v1/models/{OTHER}/versions", f"/v1/models/{OTHER}/aliases/history",
                 f"/v1/models/{OTHER}/training"):
        _same_404(c, k["acme"], path)
    _same_404(c, k["acme"], f"/v1/models/{OTHER}/predict", "POST", {"instance_ids": ["toy-00000"]})
    assert [m["name"] for m in c.get("/v1/models", headers=k["acme"]).json()] == [MODEL]
    (toy,) = c.get("/v1/datasets", headers=k["acme"]).json()
    assert toy["models"] == [MODEL]
    assert c.get("/v1/datasets/toy", headers=k["acme"]).json()["models"] == [MODEL]
    held = c.get("/v1/subjects/alice/instances", headers=k["acme"]).json()["instances"]
    assert held and {i["model"] for i in held} == {MODEL}
    # erasing a subject "everywhere" means every model the tenant may target
    r = c.post("/v1/forget", json={"subject_id": "bob"}, headers=k["acme"])
    assert r.status_code == 202 and [m["model"] for m in r.json()["requests"]] == [MODEL], r.text
    # the granted model works as before
    assert c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"}, headers=k["acme"]).status_code == 202
    assert c.post(f"/v1/models/{MODEL}/predict", json={"instance_ids": ["toy-00005"]},
                  headers=k["acme"]).status_code == 200


def test_operators_auditors_and_the_default_tenant_see_every_model(gw):
    c, k = gw
    for who in ("default", "operator", "auditor"):
        assert {m["name"] for m in c.get("/v1/models", headers=k[who]).json()} == {MODEL, OTHER}, who
        assert c.get(f"/v1/models/{OTHER}", headers=k[who]).status_code == 200, who
    assert c.post("/v1/forget", json={"model": OTHER, "subject_id": "alice"}, headers=k["default"]).status_code == 202
    r = c.post("/v1/forget", json={"model": "nope", "subject_id": "alice"}, headers=k["default"])
    assert MODEL in r.json()["detail"] and OTHER in r.json()["detail"]


def test_grant_and_revoke_over_http_take_effect_at_once_and_are_audited(gw):
    c, k = gw
    assert c.put(f"/v1/tenants/acme/models/{OTHER}", headers=k["acme"]).status_code == 403  # a portal cannot
    r = c.put(f"/v1/tenants/acme/models/{OTHER}", headers=k["operator"])
    assert r.status_code == 200 and r.json()["models"] == sorted([MODEL, OTHER])
    assert c.get(f"/v1/models/{OTHER}", headers=k["acme"]).status_code == 200
    assert c.put(f"/v1/tenants/acme/models/{OTHER}", headers=k["operator"]).json()["models"] == sorted([MODEL, OTHER])
    r = c.delete(f"/v1/tenants/acme/models/{MODEL}", headers=k["operator"])
    assert r.status_code == 200 and r.json()["models"] == [OTHER]
    body = c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"}, headers=k["acme"]).json()
    assert body["code"] == "unknown_model" and body["detail"].endswith(f"known models: {[OTHER]}"), body
    view = c.get("/v1/tenants/acme", headers=k["auditor"]).json()
    assert view["models"] == [OTHER] and view["all_models"] is False and view["usage"]["active_keys"] == 1
    assert {t["name"] for t in c.get("/v1/tenants", headers=k["operator"]).json()} >= {"acme", "default"}
    assert c.get("/v1/tenants/default", headers=k["operator"]).json()["all_models"] is True
    # refusals
    assert c.put("/v1/tenants/acme/models/no-such-model", headers=k["operator"]).json()["code"] == "unknown_model"
    assert c.delete(f"/v1/tenants/nobody/models/{MODEL}", headers=k["operator"]).json()["code"] == "unknown_tenant"
    assert c.get("/v1/tenants/nobody", headers=k["operator"]).status_code == 404
    r = c.put(f"/v1/tenants/Acme%20Corp/models/{MODEL}", headers=k["operator"])
    assert (r.status_code, r.json()["code"]) == (422, "bad_tenant_name")
    actions = [e["action"] for e in c.get("/v1/audit", params={"limit": 500}, headers=k["auditor"]).json()["entries"]]
    assert actions.count("tenant.model_granted") == 2 and actions.count("tenant.model_revoked") == 1


def test_a_new_tenant_starts_with_no_models(gw):
    c, k = gw
    newbie = bearer(make_key(c.app.state.settings, PORTAL, "newbie", tenant="initech"))
    assert c.get("/v1/models", headers=newbie).json() == []
    r = c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"}, headers=newbie)
    assert (r.status_code, r.json()["code"]) == (404, "unknown_model") and r.json()["detail"].endswith("known models: []")
    assert c.get("/v1/tenants/initech", headers=k["operator"]).json()["models"] == []  # keys create made the tenant
    # all_models: every model, present and future
    r = c.put("/v1/tenants/initech", json={"all_models": True}, headers=k["operator"])
    assert r.status_code == 200 and r.json()["all_models"] is True
    assert {m["name"] for m in c.get("/v1/models", headers=newbie).json()} == {MODEL, OTHER}


def test_lethe_tenants_command_line(seeded, monkeypatch, capsys):
    import json

    from app import cli
    from app.settings import get_settings

    register_other(seeded)
    for var, value in (("LETHE_DATABASE_URL", seeded.database_url), ("LETHE_REGISTRY_DIR", seeded.registry_dir),
                       ("LETHE_DATA_DIR", seeded.data_dir)):
        monkeypatch.setenv(var, value)
    get_settings.cache_clear()
    try:
        def run(*args):
            code = cli.main(["tenants", *args])
            out = capsys.readouterr()
            return code, out.out, out.err

        code, out, _ = run("grant", "acme", MODEL)
        assert code == 0 and f"models: {MODEL}" in out, out
        code, out, _ = run("show", "acme", "--json")
        assert code == 0 and json.loads(out)["models"] == [MODEL]
        code, out, _ = run("set", "acme", "--methods", "lethe,finetune", "--max-open", "3")
        assert code == 0 and "methods: finetune, lethe" in out and "open 0/3" in out, out
        code, out, _ = run("revoke", "acme", MODEL)
        assert code == 0 and "models: none" in out
        code, _, err = run("grant", "acme", "no-such-model")
        assert code == 2 and "not registered" in err
        code, _, err = run("set", "acme", "--methods", "magic")
        assert code == 2 and "unknown methods ['magic']" in err
        code, out, _ = run("list")
        assert code == 0 and out.startswith("acme\t") and "default\tmodels: every model" in out, out
    finally:
        get_settings.cache_clear()
