"""Registry events (app/events): recorded in the transactions that publish, move and purge,
delivered by the request webhooks' machinery to a real HTTP receiver that verifies each
signature; ids for dedupe, a gap-free sequence per model, tenant-scoped subscriptions."""
import json

import pytest
from fastapi.testclient import TestClient

from app.db import session_scope
from app.events import service as events
from app.jobs import service as jobs
from app.main import create_app
from app.registry import governance
from app.registry import service as registry
from app.webhooks import service as webhooks

from .conftest import MODEL, add_model, bearer, error_contract, make_key, save_net
from .test_webhooks import LOCAL, SECRET, receiver  # noqa: F401 - the receiver fixture

OTHER = "secret-cnn"


@pytest.fixture
def gw(seeded, dispatcher):
    s = seeded.model_copy(update={"callback_allow": LOCAL, "webhook_secret": SECRET, "webhook_backoff_s": 0.0})
    add_model(s, OTHER, seed=7)
    keys = {"serving": bearer(make_key(s, ["models:read"], "acme-serving", tenant="acme")),
            "operator": bearer(make_key(s, ["models:admin", "forget:write", "forget:read"], "ops"))}
    with TestClient(create_app(s, dispatcher=dispatcher)) as c:
        c.event_hooks["response"].append(error_contract(c.app.openapi()))
        assert c.put(f"/v1/tenants/acme/models/{MODEL}", headers=keys["operator"]).status_code == 200
        yield c, keys, s


def _new_version(s, name: str, seed: int) -> None:
    import torch

    from models.checkpoint import save_checkpoint
    from models.nets import build_model

    from .conftest import CLASSES, SHAPE

    torch.manual_seed(seed)
    tmp = registry.weights_tmp_path(registry.weights(s), name)
    sha = save_checkpoint(build_model("cnn", SHAPE, len(CLASSES)), tmp, arch="cnn", dataset="toy", input_shape=SHAPE,
                          classes=CLASSES)
    rel = registry.publish_weights(registry.weights(s), name, tmp, sha)
    with session_scope(s.database_url) as db:
        registry.add_version(db, model_name=name, sha256=sha, storage_path=rel, parent_version=1, job_id=None,
                             metrics=None)


def _complete_a_deletion(c, keys, s, subject="alice", seed=3, purge=True):
    r = c.post("/v1/forget", headers=keys["operator"], json={"model": MODEL, "subject_id": subject})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    with session_scope(s.database_url) as db:
        claim = jobs.claim(db, job_id, worker="w1", lease_s=s.job_lease_s)
    sha, rel = save_net(s, seed=seed)
    with session_scope(s.database_url) as db:
        jobs.complete(db, job_id=job_id, token=claim.token, worker="w1", instance_ids=claim.instance_ids,
                      sha256=sha, storage_path=rel, metrics={"ua": 0.1}, stats=None)
    if purge:  # what the worker does next, in a transaction of its own
        with session_scope(s.database_url) as db:
            governance.purge_superseded(db, registry.weights(s), MODEL, actor="worker:w1")
    return job_id, sha


def test_publish_move_purge_are_delivered_signed_in_sequence(gw, receiver):
    c, keys, s = gw
    mine = c.post("/v1/subscriptions", headers=keys["serving"], json={"url": receiver["url"] + "/serving",
                                                                       "model": MODEL})
    assert mine.status_code == 201, mine.text
    assert mine.json()["tenant"] == "acme" and mine.json()["events"] == list(events.MODEL_EVENTS)
    ops = c.post("/v1/subscriptions", headers=keys["operator"],
                 json={"url": receiver["url"] + "/ops", "events": ["model.version_purged", "forget.completed"]})
    assert ops.status_code == 201 and ops.json()["tenant"] is None
    job_id, sha = _complete_a_deletion(c, keys, s)
    for _ in range(3):
        webhooks.deliver_due(s)
    got = receiver["got"]
    assert got and receiver["bad_signatures"] == 0
    by_event = {}
    for g in got:
        b = json.loads(g["body"])
        assert g["headers"]["Lethe-Event"] == b["event"]
        by_event.setdefault(b["event"], []).append(b)
    published, moved, purged = (by_event["model.version_published"][0], by_event["model.alias_moved"][0],
                                by_event["model.version_purged"])
    assert published["data"]["version"] == 2 and published["data"]["sha256"] == sha
    assert published["data"]["weights_url"] == f"/v1/models/{MODEL}/versions/2/weights"
    assert moved["data"]["alias"] == "production" and (moved["data"]["from_version"], moved["data"]["to_version"]) \
        == (1, 2) and moved["data"]["job_id"] == job_id
    # the purged v1 went to both subscriptions: the same event id (dedupe), different deliveries
    assert len(purged) == 2 and purged[0]["id"] == purged[1]["id"] and purged[0]["data"]["version"] == 1
    assert [published["sequence"], moved["sequence"], purged[0]["sequence"]] == [1, 2, 3]
    done = by_event["forget.completed"]
    assert len(done) == 1 and done[0]["sequence"] is None and done[0]["data"]["version_after"] == 2
    assert "alice" not in json.dumps([json.loads(g["body"]) for g in got])
    assert len(got) == 5  # 3 to the serving system, 2 to the operator

    # the delivery log and counts; the resync API answers the same events
    sub = c.get(f"/v1/subscriptions/{mine.json()['id']}", headers=keys["serving"]).json()
    assert sub["deliveries"] == {"delivered": 3}
    log = c.get(f"/v1/subscriptions/{mine.json()['id']}/deliveries", headers=keys["serving"]).json()
    assert len(log) == 3 and all(d["status"] == "delivered" and d["log"][0]["status_code"] == 200 for d in log)
    ev = c.get("/v1/events", headers=keys["serving"], params={"model": MODEL, "after": 1}).json()
    assert [(e["sequence"], e["event"]) for e in ev] == [(2, "model.alias_moved"), (3, "model.version_purged")]
    assert all(e["event"].startswith("model.") for e in c.get("/v1/events", headers=keys["serving"]).json())
    # the serving key cannot see the operator's subscription, nor delete it
    assert [x["id"] for x in c.get("/v1/subscriptions", headers=keys["serving"]).json()] == [mine.json()["id"]]
    assert c.delete(f"/v1/subscriptions/{ops.json()['id']}", headers=keys["serving"]).status_code == 404
    gone = c.delete(f"/v1/subscriptions/{mine.json()['id']}", headers=keys["serving"]).json()
    assert gone["deleted_at"] is not None


def test_an_operator_alias_move_and_a_tenants_scope(gw, receiver):
    c, keys, s = gw
    wide = c.post("/v1/subscriptions", headers=keys["serving"], json={"url": receiver["url"]}).json()
    assert wide["model"] is None
    # acme may not subscribe to a model it was not granted, nor to the operators' events
    r = c.post("/v1/subscriptions", headers=keys["serving"], json={"url": receiver["url"], "model": OTHER})
    assert (r.status_code, r.json()["code"]) == (404, "unknown_model")
    r = c.post("/v1/subscriptions", headers=keys["serving"], json={"url": receiver["url"], "events": ["forget.failed"]})
    assert (r.status_code, r.json()["code"]) == (403, "operator_event")
    r = c.post("/v1/subscriptions", headers=keys["serving"], json={"url": receiver["url"], "events": ["model.nope"]})
    assert (r.status_code, r.json()["code"]) == (422, "unknown_event")
    # outbound rules of the request webhooks: no credentials, no non-public address unless allowed
    r = c.post("/v1/subscriptions", headers=keys["serving"], json={"url": "http://u:p@127.0.0.1/x"})
    assert (r.status_code, r.json()["code"]) == (422, "subscription_url_refused")
    strict = s.model_copy(update={"callback_allow": ""})
    with TestClient(create_app(strict)) as c2:
        r = c2.post("/v1/subscriptions", headers=keys["serving"], json={"url": receiver["url"]})
        assert (r.status_code, r.json()["code"]) == (422, "subscription_url_refused")
    # a version of each model, and an operator moves both production aliases
    for name, seed in ((MODEL, 11), (OTHER, 12)):
        _new_version(s, name, seed)
        r = c.put(f"/v1/models/{name}/aliases/production", headers=keys["operator"],
                  json={"version": 2, "reason": "roll forward"})
        assert r.status_code == 200, r.text
    webhooks.deliver_due(s)
    bodies = [json.loads(g["body"]) for g in receiver["got"]]
    assert [(b["model"], b["event"], b["data"]["to_version"], b["data"]["reason"]) for b in bodies] == [
        (MODEL, "model.alias_moved", 2, "roll forward")]  # OTHER is not granted to acme: nothing
    # a grant revoked later stops the deliveries at the next event
    assert c.delete(f"/v1/tenants/acme/models/{MODEL}", headers=keys["operator"]).status_code == 200
    with session_scope(s.database_url) as db:
        assert events.receivers(db, MODEL, events.ALIAS_MOVED) == []
