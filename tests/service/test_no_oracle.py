"""The no-oracle rule (docs/service.md, *No oracle*), path by path: to a tenant's key, a
subject the catalogue holds and one it does not get the same answers, field by field, until
the request has run and erased. Paths: a relabel whose fixed target is some instance's own
label, a second request for a subject another request (of this tenant or another) has
pending, a pooled job's figures, and the status while it runs."""
import pytest
import torch
from fastapi.testclient import TestClient

from app.db import session_scope
from app.forget.models import ForgetRequest
from app.main import create_app
from models.unlearn.registry import fixed_relabel_targets
from worker import driver

from .conftest import MODEL, bearer, make_key

PORTAL = ["forget:write", "forget:read"]
VOLATILE = ("id", "due_at", "received_at", "days_left")  # differ between any two requests


@pytest.fixture
def gw(seeded_on, dispatcher):
    seeded = seeded_on
    keys = {t: bearer(make_key(seeded, PORTAL, f"{t}-portal", tenant=t)) for t in ("acme", "beta")}
    ops = bearer(make_key(seeded, ["models:admin", "forget:read", "forget:write"], "ops"))
    with TestClient(create_app(seeded, dispatcher=dispatcher)) as c:
        for t in ("acme", "beta"):
            c.put(f"/v1/tenants/{t}/models/{MODEL}", headers=ops).raise_for_status()
        yield seeded, c, keys


def _same(a: dict, b: dict) -> None:
    """Field by field, leaving out what differs between any two requests."""
    a = {k: v for k, v in a.items() if k not in VOLATILE}
    b = {k: v for k, v in b.items() if k not in VOLATILE}
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k], (k, a[k], b[k])


def _job_of(settings, rid: str) -> str | None:
    with session_scope(settings.database_url) as db:
        return db.get(ForgetRequest, rid).job_id


def test_fixed_relabel_target_equal_to_an_own_label_teaches_the_runner_up():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 5)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 2, 3, 4])
    t = fixed_relabel_targets(net, x, y, 2)
    assert bool((t != y).all())  # no instance is taught its own label
    assert t.tolist()[:2] == [2, 2] and t.tolist()[4:] == [2, 2]
    logits = net(x[2:4]).detach()
    logits[:, 2] = float("-inf")
    assert t[2:4].tolist() == logits.argmax(1).tolist()


def test_a_relabel_to_an_instances_own_label_erases_like_any_other(gw):
    """Finding 1: the request used to fail ("relabel target equals the instance's own
    label") and then show the subject's instance ids; an unknown subject ends no_data. Now
    the answers match while open, and the known subject's request erases."""
    s, c, k = gw
    body = {"model": MODEL, "objective": "relabel", "target_label": 0}  # toy-00000 (alice's) has label 0
    hit = c.post("/v1/forget", json={**body, "subject_id": "alice"}, headers=k["acme"])
    miss = c.post("/v1/forget", json={**body, "subject_id": "nobody-here"}, headers=k["acme"])
    assert hit.status_code == miss.status_code == 202, (hit.text, miss.text)
    _same(hit.json(), miss.json())
    _same(c.get(f"/v1/forget/{hit.json()['id']}", headers=k["acme"]).json(),
          c.get(f"/v1/forget/{miss.json()['id']}", headers=k["acme"]).json())
    job_id = _job_of(s, hit.json()["id"])
    assert driver.execute_job(job_id, settings=s, worker_name="w1") == "completed"
    done = c.get(f"/v1/forget/{hit.json()['id']}", headers=k["acme"]).json()
    assert done["status"] == "completed" and done["error"] is None and done["version_after"] == 2


def test_a_second_request_for_a_pending_subject_follows_the_first(gw, dispatcher):
    """Finding 2: a known subject pending elsewhere answered 409 naming its instance ids (to
    another tenant too), an unknown one 202, and cancelling the first erased nothing. Now the
    second request is accepted like any other, follows the first, and erases once it is
    canceled."""
    from app.forget import follow

    s, c, k = gw
    first = c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"}, headers=k["acme"])
    assert first.status_code == 202
    for tenant in ("beta", "acme"):  # another tenant, and the same one
        hit = c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"}, headers=k[tenant])
        miss = c.post("/v1/forget", json={"model": MODEL, "subject_id": "nobody-here"}, headers=k[tenant])
        assert hit.status_code == miss.status_code == 202, (hit.text, miss.text)
        assert "toy-" not in hit.text and first.json()["id"] not in hit.text
        _same(hit.json(), miss.json())
        _same(c.get(f"/v1/forget/{hit.json()['id']}", headers=k[tenant]).json(),
              c.get(f"/v1/forget/{miss.json()['id']}", headers=k[tenant]).json())
        if tenant == "beta":
            follower = hit.json()["id"]
    assert _job_of(s, follower) is None and follow.resume(s) == []  # still held by the first
    # the first is canceled: the follower takes the instances over and erases them
    assert c.post(f"/v1/forget/{first.json()['id']}/cancel", json={"reason": "changed my mind"},
                  headers=k["acme"]).status_code == 200
    started = follow.resume(s)
    job_id = _job_of(s, follower)
    # on a job a worker is told of: a new one, or the first's (a tenant's cancel leaves it queued
    # for its claim: docs/service.md, No oracle), dispatched when the first was accepted
    assert job_id is not None and (job_id in started or job_id in dispatcher.sent)
    assert driver.execute_job(job_id, settings=s, worker_name="w1") == "completed"
    done = c.get(f"/v1/forget/{follower}", headers=k["beta"]).json()
    assert done["status"] == "completed" and sorted(done["instance_ids"]) == ["toy-00000", "toy-00001", "toy-00002"]


def test_a_follower_whose_data_the_first_erased_closes_as_no_data(gw):
    from app.forget import follow, nodata

    s, c, k = gw
    first = c.post("/v1/forget", json={"model": MODEL, "subject_id": "bob"}, headers=k["acme"]).json()["id"]
    second = c.post("/v1/forget", json={"model": MODEL, "subject_id": "bob"}, headers=k["beta"]).json()["id"]
    assert driver.execute_job(_job_of(s, first), settings=s, worker_name="w1") == "completed"
    assert follow.resume(s) == []
    with session_scope(s.database_url) as db:
        assert nodata.resolve(db, hold_s=0) == [second]
    done = c.get(f"/v1/forget/{second}", headers=k["beta"]).json()
    assert done["status"] == "completed" and done["reason_code"] == "no_data" and done["instance_ids"] == []


def test_a_pooled_job_shows_a_tenant_its_own_figures_only(gw):
    """Finding 8: a pooled job showed one tenant the other's erasure volume (k, forget_size),
    the plan's history and the worker host."""
    s, c, k = gw
    mine = c.post("/v1/forget", json={"model": MODEL, "subject_id": "bob"}, headers=k["acme"]).json()["id"]
    theirs = c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"}, headers=k["beta"]).json()["id"]
    job_id = _job_of(s, mine)
    assert job_id == _job_of(s, theirs)  # one pooled job
    assert driver.execute_job(job_id, settings=s, worker_name="host-7") == "completed"
    read = c.get(f"/v1/forget/{mine}", headers=k["acme"]).json()
    assert read["metrics"]["k"] == 2 and not {"forget_size", "train_rows"} & set(read["metrics"])
    job = c.get(f"/v1/jobs/{job_id}", headers=k["acme"]).json()
    assert job["worker"] is None and job["plan"] is None and job["stats"] is None
    assert "k" not in job["metrics"] and "host-7" not in str(job) and job["request_ids"] == [mine]
