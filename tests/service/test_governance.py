"""Registry governance: alias history, rollback refused onto a tainted version and allowed
onto a clean one, purge of superseded weights holding erased data (file gone, row kept),
and registering a user's own model (safetensors yes, pickles no)."""
import io
import json
import os

import pytest
import torch

from app.db import session_scope
from app.registry import governance
from app.registry import service as registry

from .conftest import MODEL, bearer, make_key, save_net


def _new_version(settings, seed, parent):
    sha, rel = save_net(settings, seed=seed)
    with session_scope(settings.database_url) as db:
        v = registry.add_version(db, model_name=MODEL, sha256=sha, storage_path=rel, parent_version=parent,
                                 job_id=None, metrics={"note": "retrained by hand"})
        registry.move_alias(db, model_name=MODEL, alias="production", to_version=v.version, actor="test")
        return v.version


def _erase_alice(client, settings, *, through_worker=False, monkeypatch=None):
    """A real deletion: submit, claim, publish (optionally through worker.driver.execute_job
    with the ML replaced by a fresh network) -> a new production version."""
    from app.jobs import service as jobs

    r = client.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"}).json()
    sha, rel = save_net(settings, seed=11)
    if through_worker:
        from worker import driver, instance_wise
        from worker.job import Built

        metrics = {"ua": 100.0, "ta_drop": 0.0, "method": "lethe"}
        monkeypatch.setattr(instance_wise, "build", lambda *a, **k: Built(metrics, {}, lambda: (sha, rel)))
        assert driver.execute_job(r["job_id"], settings=settings, worker_name="w1") == "completed"
    else:
        with session_scope(settings.database_url) as db:
            c = jobs.claim(db, r["job_id"], worker="w1", lease_s=settings.job_lease_s)
        with session_scope(settings.database_url) as db:
            jobs.complete(db, job_id=r["job_id"], token=c.token, worker="w1", instance_ids=c.instance_ids,
                          sha256=sha, storage_path=rel, metrics={"ua": 100.0}, stats={})
    return r["id"]


def test_rollback_allowed_onto_a_clean_version_and_history_is_queryable(client, seeded):
    assert _new_version(seeded, 5, parent=1) == 2
    admin = bearer(make_key(seeded, ["models:admin"], name="ops"))
    r = client.put(f"/v1/models/{MODEL}/aliases/production", json={"version": 1, "reason": "v2 regressed"},
                   headers=admin)
    assert r.status_code == 200, r.text
    assert r.json() == {"model": MODEL, "alias": "production", "version": 1, "moved": True,
                        "aliases": {"production": 1}}
    assert client.put(f"/v1/models/{MODEL}/aliases/production", json={"version": 1}).json()["moved"] is False
    hist = client.get(f"/v1/models/{MODEL}/aliases/history").json()
    assert [(h["from_version"], h["to_version"]) for h in hist] == [(None, 1), (1, 2), (2, 1)]
    assert hist[-1]["reason"] == "v2 regressed" and hist[-1]["actor"].endswith(":ops")
    assert client.get(f"/v1/models/{MODEL}/aliases/history", params={"alias": "staging"}).json() == []
    ev = client.get("/v1/audit", params={"action": "alias.moved"}).json()["entries"][-1]["payload"]
    assert ev == {"model": MODEL, "alias": "production", "from_version": 2, "to_version": 1,
                  "reason": "v2 regressed", "operator": True}
    # served at once
    pred = client.post(f"/v1/models/{MODEL}/predict", json={"inputs": [[0.0] * 64]}).json()
    assert pred["version"] == 1
    assert client.put(f"/v1/models/{MODEL}/aliases/production", json={"version": 9}).status_code == 404
    assert client.put(f"/v1/models/nope/aliases/production", json={"version": 1}).status_code == 404
    assert client.put(f"/v1/models/{MODEL}/aliases/Bad Alias!", json={"version": 1}).status_code == 422
    assert client.put(f"/v1/models/{MODEL}/aliases/staging", json={"version": 2}).json()["aliases"] == \
        {"production": 1, "staging": 2}


def test_rollback_refused_onto_a_version_trained_on_erased_data(client, seeded):
    _erase_alice(client, seeded)
    with session_scope(seeded.database_url) as db:  # keep v1's weights to show the refusal is about taint
        assert registry.aliases(db, MODEL) == {"production": 2}
    r = client.put(f"/v1/models/{MODEL}/aliases/production", json={"version": 1, "reason": "oops"})
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["code"] in ("version_tainted", "version_purged")
    with session_scope(seeded.database_url) as db:
        t = governance.taint(db, MODEL, 1)
        assert t["tainted"] and t["erased_instances"] == 3
        assert not governance.taint(db, MODEL, 2)["tainted"]
        assert registry.aliases(db, MODEL) == {"production": 2}
    versions = client.get(f"/v1/models/{MODEL}/versions").json()["versions"]
    assert [(v["version"], v["tainted"], v["erased_instances_held"]) for v in versions] == [(1, True, 3), (2, False, 0)]


def test_tainted_but_not_yet_purged_version_is_refused_with_the_reason(client, seeded):
    _erase_alice(client, seeded)  # not through the worker: nothing purged yet
    with session_scope(seeded.database_url) as db:
        assert registry.get_version(db, MODEL, 1).status == "READY"
    r = client.put(f"/v1/models/{MODEL}/aliases/production", json={"version": 1})
    assert r.status_code == 409 and r.json()["code"] == "version_tainted"
    assert "trained on data erased since" in r.json()["detail"] and "3 instance(s)" in r.json()["detail"]


def test_purge_removes_the_file_and_keeps_the_row(client, seeded, monkeypatch):
    with session_scope(seeded.database_url) as db:
        v1 = registry.get_version(db, MODEL, 1)
    path = registry.absolute_path(registry.weights(seeded), v1.storage_path)
    assert os.path.exists(path)
    _erase_alice(client, seeded, through_worker=True, monkeypatch=monkeypatch)  # the worker purges after publish
    assert not os.path.exists(path)
    versions = client.get(f"/v1/models/{MODEL}/versions").json()
    v = versions["versions"][0]
    assert (v["version"], v["status"], v["sha256"]) == (1, "PURGED", v1.sha256) and v["purged_at"]
    assert versions["aliases"] == {"production": 2}
    ev = client.get("/v1/audit", params={"action": "model.version_purged"}).json()["entries"]
    assert len(ev) == 1 and ev[0]["payload"]["sha256"] == v1.sha256 and ev[0]["payload"]["serving_version"] == 2
    r = client.put(f"/v1/models/{MODEL}/aliases/production", json={"version": 1})
    assert r.status_code == 409 and r.json()["code"] == "version_purged"
    with session_scope(seeded.database_url) as db:  # idempotent
        assert governance.purge_superseded(db, registry.weights(seeded), MODEL) == []
    # the current version is never purged, and the certificate still names v1's sha256
    cert = client.get(f"/v1/forget/{client.get('/v1/forget').json()['items'][0]['id']}/certificate").json()
    assert cert["certificate"]["version_before"] == {"version": 1, "sha256": v1.sha256}


def _safetensors_bytes(arch="cnn", shape=(1, 8, 8), classes=10) -> bytes:
    from safetensors.torch import save

    from models.nets import build_model

    torch.manual_seed(3)
    net = build_model(arch, shape, classes)
    return save({k: v.contiguous() for k, v in net.state_dict().items()})


# the dataset says digits-00000..02 are alice's: a manifest may repeat it or leave it out
MANIFEST = {"instances": [{"instance_id": "digits-00000", "subject_id": "alice"},
                          {"instance_id": "digits-00001", "subject_id": "alice"},
                          {"instance_id": "digits-00002"}]}


def _upload(client, weights: bytes, filename="model.safetensors", manifest=MANIFEST, **form):
    data = {"name": "my-digits", "arch": "cnn", "dataset": "digits", **form}
    files = {"weights": (filename, io.BytesIO(weights), "application/octet-stream"),
             "manifest": ("manifest.json", io.BytesIO(json.dumps(manifest).encode()), "application/json")}
    return client.post("/v1/models", data=data, files=files)


def test_register_own_safetensors_model(client, seeded):
    r = _upload(client, _safetensors_bytes())
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "my-digits" and body["version"] == 1 and body["instances"] == 3
    assert body["aliases"] == {"production": 1} and 0.0 <= body["test_accuracy"] <= 100.0
    models = {m["name"]: m for m in client.get("/v1/models").json()}
    assert models["my-digits"]["aliases"] == {"production": 1}
    inst = client.get("/v1/subjects/alice/instances", params={"model": "my-digits"}).json()["instances"]
    assert [i["instance_id"] for i in inst] == ["digits-00000", "digits-00001", "digits-00002"]
    pred = client.post("/v1/models/my-digits/predict", json={"instance_ids": ["digits-00002"]})
    assert pred.status_code == 200 and pred.json()["sha256"] == body["sha256"]
    f = client.post("/v1/forget", json={"model": "my-digits", "subject_id": "alice"})
    assert f.status_code == 202, f.text
    ev = client.get("/v1/audit", params={"action": "model.registered"}).json()["entries"][0]
    assert ev["payload"]["uploaded_sha256"] == body["uploaded_sha256"] and "alice" not in str(ev)
    again = _upload(client, _safetensors_bytes())
    assert again.status_code == 409 and "already registered" in again.json()["detail"]


def test_pickled_checkpoints_are_refused(client, seeded):
    from models.nets import build_model

    buf = io.BytesIO()
    torch.save(build_model("cnn", (1, 8, 8), 10).state_dict(), buf)  # zip + pickle
    r = _upload(client, buf.getvalue(), filename="model.safetensors")
    assert r.status_code == 415 and r.json()["code"] == "pickle_refused"
    assert "pickle" in r.json()["detail"] and "safetensors" in r.json()["detail"]
    import pickle

    r = _upload(client, pickle.dumps({"w": [1, 2, 3]}, protocol=4), filename="w.bin")
    assert r.status_code == 415 and "pickle protocol" in r.json()["detail"]
    r = _upload(client, _safetensors_bytes(), filename="model.pt")
    assert r.status_code == 415
    assert "my-digits" not in {m["name"] for m in client.get("/v1/models").json()}


@pytest.mark.parametrize("weights,form,manifest,code", [
    (b"not a tensor file at all", {}, MANIFEST, "not_safetensors"),
    (None, {"arch": "mlp"}, MANIFEST, "weights_do_not_fit"),
    (None, {"arch": "transformer"}, MANIFEST, "unknown_arch"),
    (None, {"dataset": "imagenet"}, MANIFEST, "unknown_dataset"),
    (None, {"name": "Bad Name"}, MANIFEST, "bad_name"),
    (None, {}, {"instances": []}, "bad_manifest"),
    (None, {}, {"instances": [{"instance_id": "digits-99999"}]}, "unknown_instances"),
    (None, {}, {"instances": [{"instance_id": "digits-00001"}, {"instance_id": "digits-00001"}]}, "bad_manifest"),
    # lineage has one source of truth, the dataset: held-out rows and another subject are refused
    (None, {}, {"instances": [{"instance_id": "digits-00001"}, {"instance_id": "digits-test-00007"}]},
     "not_training_rows"),
    (None, {}, {"instances": [{"instance_id": "digits-00001", "subject_id": "someone-else"}]}, "subject_mismatch"),
    (None, {}, {"all_training_rows": True, "instances": [{"instance_id": "digits-00001"}]}, "bad_manifest"),
    (None, {}, {"all_training_rows": False}, "bad_manifest"),
])
def test_bad_uploads_say_what_is_wrong(client, seeded, weights, form, manifest, code):
    r = _upload(client, weights if weights is not None else _safetensors_bytes(), manifest=manifest, **form)
    assert r.status_code == 422 and r.json()["code"] == code, r.text
    assert "my-digits" not in {m["name"] for m in client.get("/v1/models").json()}
    if code == "not_training_rows":  # named, and the training row beside it is not
        assert "digits-test-00007" in r.json()["detail"] and "digits-00001" not in r.json()["detail"]
    if code == "subject_mismatch":  # the ids, never the subject sent
        assert "digits-00001" in r.json()["detail"] and "someone-else" not in r.json()["detail"]


def test_a_model_trained_on_the_whole_training_split_needs_no_list(client, seeded):
    # the manifest as a form field's text (curl -F 'manifest={...}'), not a file
    r = client.post("/v1/models", data={"name": "my-digits", "arch": "cnn", "dataset": "digits",
                                        "manifest": json.dumps({"all_training_rows": True})},
                    files={"weights": ("model.safetensors", io.BytesIO(_safetensors_bytes()), "application/octet-stream")})
    assert r.status_code == 201, r.text
    ds = client.get("/v1/datasets/digits").json()
    assert r.json()["instances"] == ds["splits"]["train"] > 1000
    inst = client.get("/v1/subjects/bob/instances", params={"model": "my-digits"}).json()["instances"]
    assert len(inst) == 4  # the dataset's subjects, as a listed manifest gets them
