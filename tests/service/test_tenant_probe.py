"""A foreign tenant probes every route (issue 15): tenant acme has a completed request (with
an external id and a callback URL), an open one, a no-data one and an erasure; tenant
globex's portal key (forget:write, forget:read, subjects:read, granted another model) walks
every operation of the OpenAPI schema with acme's ids in the path. Each operation that names
one of acme's objects answers 403 or 404, and no answer of any operation — body or headers —
holds acme's request, job or erasure ids, external ids, callback URL or instance ids."""
import json

import pytest
from fastapi.testclient import TestClient

from app.db import session_scope
from app.jobs import service as jobs
from app.main import create_app

from .conftest import MODEL, add_model, bearer, close_no_data, make_key, publish

OTHER = "toy-cnn-b"  # rows 0..2 (alice): granted to globex; acme's subjects are elsewhere
HOOK = "http://127.0.0.1:9/acme-hook-secret"

# a body each operation with a JSON body accepts (the rest get none: the scope check answers first)
BODIES = {("POST", "/v1/forget"): {"model": MODEL, "instance_ids": ["toy-00006"]},
          ("POST", "/v1/forget/{request_id}/deny"): {"reason_code": "duplicate", "reason": "probe"},
          ("POST", "/v1/models/{name}/predict"): {"instance_ids": ["toy-00003"]},
          ("POST", "/v1/models/{name}/train"): {"dataset": "toy", "arch": "cnn"},
          ("PUT", "/v1/models/{name}/aliases/{alias}"): {"version": 1},
          ("PUT", "/v1/tenants/{tenant}"): {"all_models": True}}


@pytest.fixture
def world(seeded, dispatcher):
    s = seeded.model_copy(update={"callback_allow": "127.0.0.0/8"})
    add_model(s, OTHER, n=3)
    acme = bearer(make_key(s, ["forget:write", "forget:read", "subjects:read"], "acme-portal", tenant="acme"))
    globex = bearer(make_key(s, ["forget:write", "forget:read", "subjects:read"], "globex-portal", tenant="globex"))
    op = bearer(make_key(s, ["models:admin", "forget:read"], "ops"))
    with TestClient(create_app(s, dispatcher=dispatcher)) as c:
        c.put(f"/v1/tenants/acme/models/{MODEL}", headers=op).raise_for_status()
        c.put(f"/v1/tenants/globex/models/{OTHER}", headers=op).raise_for_status()

        def submit(body):
            r = c.post("/v1/forget", json=body, headers=acme)
            assert r.status_code == 202, r.text
            return r.json()

        done = submit({"model": MODEL, "subject_id": "bob", "external_id": "acme-ext-77", "callback_url": HOOK})
        job = c.get(f"/v1/forget/{done['id']}", headers=op).json()["job"]["id"]
        with session_scope(s.database_url) as db:
            claim = jobs.claim(db, job, worker="w", lease_s=60)
            token, ids = claim.token, list(claim.instance_ids)
        publish(s, job, token, ids)
        assert c.get(f"/v1/forget/{done['id']}", headers=acme).json()["status"] == "completed"
        open_ = submit({"model": MODEL, "subject_id": "user-6", "external_id": "acme-ext-78"})
        empty = submit({"model": MODEL, "subject_id": "zed"})
        close_no_data(s)
        group = submit({"subject_id": "user-7"})
        reqs = [done["id"], open_["id"], empty["id"], *(m["request_id"] for m in group["requests"])]
        job_ids = {c.get(f"/v1/forget/{r}", headers=op).json()["job"]["id"] for r in (done["id"], open_["id"])}
        secrets = {*reqs, *job_ids, group["id"], "acme-ext-77", "acme-ext-78", "acme-hook-secret",
                   "toy-00003", "toy-00004", "toy-00006", "toy-00007"}
        # a serving system of acme's subscribes to its model's events (a models:read key of acme)
        serving = bearer(make_key(s, ["models:read"], "acme-serving", tenant="acme"))
        sub = c.post("/v1/subscriptions", json={"url": HOOK, "model": MODEL}, headers=serving)
        assert sub.status_code == 201, sub.text
        secrets.add(sub.json()["id"])
        fill = {"request_id": reqs, "sub_id": [sub.json()["id"]], "order_id": ["order-of-nobody"], "job_id": sorted(job_ids), "erasure_id": [group["id"]], "name": [MODEL],
                "alias": ["production"], "version": ["1"], "subject_id": ["bob", "user-6"], "tenant": ["acme"], "model": [MODEL]}
        yield c, globex, secrets, fill


def _urls(path: str, fill: dict) -> list[str]:
    import itertools
    import re

    names = re.findall(r"\{([^}]+)\}", path)
    out = []
    for values in itertools.product(*(fill[n] for n in names)):
        url = path
        for n, v in zip(names, values):
            url = url.replace("{" + n + "}", v)
        out.append(url)
    return out


def test_a_foreign_tenant_gets_nothing_of_another_anywhere(world):
    c, globex, secrets, fill = world
    schema = c.get("/openapi.json").json()
    walked = 0
    for path, item in schema["paths"].items():
        for method, op in item.items():
            method = method.upper()
            for url in _urls(path, fill):
                r = c.request(method, url, headers=globex, json=BODIES.get((method, path)))
                walked += 1
                if "{" in path and path != "/v1/keys/audit":
                    assert r.status_code in (403, 404), (method, url, r.status_code, r.text[:300])
                seen = r.text + " ".join(f"{k}: {v}" for k, v in r.headers.items())
                asked = url + json.dumps(BODIES.get((method, path)))  # an echo of what it sent is no leak
                leaked = sorted(x for x in secrets if x in seen and x not in asked)
                assert not leaked, (method, url, r.status_code, leaked, r.text[:300])
    assert walked > 50, walked
    # what globex may do still works, and shows none of acme's
    mine = c.post("/v1/forget", json={"model": OTHER, "subject_id": "alice"}, headers=globex)
    assert mine.status_code == 202
    listed = c.get("/v1/forget", headers=globex).json()
    assert [r["id"] for r in listed["items"]] == [mine.json()["id"]]


def test_a_shared_model_still_names_nothing_of_the_other_tenant(world):
    """globex granted acme's model too: it may target the same instances, and learns nothing:
    a request over instances acme has pending is accepted and follows acme's."""
    c, globex, secrets, fill = world
    op = bearer(make_key(c.app.state.settings, ["models:admin"], "ops2"))
    c.put(f"/v1/tenants/globex/models/{MODEL}", headers=op).raise_for_status()
    r = c.post("/v1/forget", json={"model": MODEL, "instance_ids": ["toy-00006"]}, headers=globex)
    assert r.status_code == 202 and r.json()["job_id"] is None, r.text
    r2 = c.post("/v1/forget", json={"model": MODEL, "subject_id": "bob"}, headers=globex)  # erased by acme: no_data
    assert r2.status_code == 202 and r2.json()["job_id"] is None
    ids_only = {x for x in secrets if not x.startswith("toy-")}
    for resp in (r, r2):
        assert not [x for x in ids_only if x in resp.text], resp.text
    for rid in fill["request_id"]:
        assert c.get(f"/v1/forget/{rid}", headers=globex).status_code == 404
