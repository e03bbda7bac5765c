"""Exact unlearning through the HTTP API and the real (embedded) worker thread: SISA and
ARCANE bundles (ARCANE from registration to a verified certificate, its learner carried from
version to version; a new ARCANE model on tabular data refused with its measured caveat), PUMA on an
instance-wise model, method/model fit, and a failed shard retrain that fails the job without
moving the alias."""
from __future__ import annotations

import os
import time

import pytest
from fastapi.testclient import TestClient

from app.bootstrap import bootstrap_exact_demo
from app.cli import migrate
from app.db import session_scope
from app.main import create_app
from app.registry import service as registry
from app.settings import Settings

from .conftest import MODEL, SECRET, bearer, make_key


def _settings(tmp_path, **kw) -> Settings:
    base = dict(database_url=f"sqlite:///{tmp_path}/lethe.db", registry_dir=str(tmp_path / "registry"),
                data_dir=str(tmp_path / "data"), subject_secret=SECRET, broker_url="", bootstrap_demo=False,
                embedded_worker=True, demo_exact_dataset="digits", demo_exact_rows=240, demo_exact_shards=3,
                demo_exact_slices=2, demo_exact_epochs=1)
    base.update(kw)
    return Settings(**base)


def _wait(c, rid, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = c.get(f"/v1/forget/{rid}").json()
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"request {rid} not finished: {body}")


def _first_version_once_purged(c, model, timeout=30):
    deadline = time.time() + timeout
    while True:
        v1 = c.get(f"/v1/models/{model}/versions").json()["versions"][0]
        if v1["status"] == "PURGED" or time.time() > deadline:
            return v1
        time.sleep(0.2)


@pytest.fixture
def exact_service(tmp_path):
    s = _settings(tmp_path)
    migrate(s)
    assert bootstrap_exact_demo(s, "sisa") == "digits-sisa"
    assert bootstrap_exact_demo(s, "arcane") == "digits-arcane"
    with TestClient(create_app(s), headers=bearer(make_key(s))) as c:
        yield s, c


def _manifest(s, name, version):
    from models.unlearn.shards import read_manifest

    with session_scope(s.database_url) as db:
        v = registry.get_version(db, name, version)
        path = registry.absolute_path(registry.weights(s), v.storage_path)
    return read_manifest(path)


def _bundle_files(s, name, version):
    return _manifest(s, name, version)["members"]


def test_sisa_and_arcane_forget_through_the_worker(exact_service):
    s, c = exact_service
    models = {m["name"]: m for m in c.get("/v1/models").json()}
    assert models["digits-sisa"]["family"] == "sisa" and models["digits-arcane"]["family"] == "arcane"
    inst = c.get("/v1/subjects/alice/instances", params={"model": "digits-sisa"}).json()["instances"]
    assert len(inst) == 3 and all(i["shard"] in (0, 1, 2) and i["slice"] in (0, 1) for i in inst)
    before = _bundle_files(s, "digits-sisa", 1)
    x = [[[[0.0] * 8] * 8]]
    assert c.post("/v1/models/digits-sisa/predict", json={"inputs": x}).json()["version"] == 1

    r = c.post("/v1/forget", json={"model": "digits-sisa", "subject_id": "alice"})
    assert r.status_code == 202, r.text
    done = _wait(c, r.json()["id"])
    assert done["status"] == "completed", done
    assert done["method"] == "sisa" and (done["version_before"], done["version_after"]) == (1, 2)
    job = c.get(f"/v1/jobs/{done['job']['id']}").json()
    shards = {i["shard"] for i in inst}
    assert job["stats"]["retrained_members"] == len(shards)
    after = _bundle_files(s, "digits-sisa", 2)
    # only the shards holding alice's instances got new files; the others are the same sha256
    assert [a["sha256"] != b["sha256"] for a, b in zip(after, before)] == [m in shards for m in range(3)]
    versions = c.get("/v1/models/digits-sisa/versions").json()
    assert versions["aliases"] == {"production": 2}
    assert versions["versions"][1]["storage_path"].endswith(".bundle.json")
    assert c.post("/v1/models/digits-sisa/predict", json={"inputs": x}).json()["version"] == 2
    # slice checkpoints trained on alice's data are gone; the new plan's ones replace them (S x R = 6)
    assert len(os.listdir(registry.slices_dir(s.registry_dir, "digits-sisa"))) == 6
    gone = c.get("/v1/subjects/alice/instances", params={"model": "digits-sisa"}).json()["instances"]
    # digits-arcane was trained on the same rows of dataset digits and still holds them: the
    # rows stay in the store until no model holds them (then every model's entry says deleted)
    assert all(i["erased"] and not i["raw_data_deleted"] for i in gone)

    # ARCANE: bob's instances; only their classes' sub-models are retrained
    bob = c.get("/v1/subjects/bob/instances", params={"model": "digits-arcane"}).json()["instances"]
    arcane_v1 = _bundle_files(s, "digits-arcane", 1)
    r = c.post("/v1/forget", json={"model": "digits-arcane", "subject_id": "bob", "method": "arcane"})
    done = _wait(c, r.json()["id"])
    assert done["status"] == "completed", done
    job = c.get(f"/v1/jobs/{done['job']['id']}").json()
    affected = {int(m) for m in job["stats"]["affected_members"].split(",") if m}
    assert affected <= {i["label"] for i in bob} and job["stats"]["members"] == 10
    changed = [a["sha256"] != b["sha256"] for a, b in zip(_bundle_files(s, "digits-arcane", 2), arcane_v1)]
    assert {m for m, ch in enumerate(changed) if ch} == affected
    # v1 holds bob's data and is superseded: purged like an instance-wise version. Its manifest and
    # the member files only it used are deleted; the members v2 shares with it stay.
    # (the purge runs in the worker right after the publishing commit that completed the request)
    v1 = _first_version_once_purged(c, "digits-arcane")
    assert v1["status"] == "PURGED" and not os.path.exists(os.path.join(s.registry_dir, v1["storage_path"]))
    kept = [os.path.exists(os.path.join(s.registry_dir, "digits-arcane", m["file"])) for m in arcane_v1]
    assert kept == [not ch for ch in changed]
    assert c.get("/v1/audit/verify").json()["ok"] is True


def test_an_arcane_model_from_registration_to_a_verified_certificate(exact_service):
    """Registered with the default learner for its data (images: the 512/64 autoencoder, raw
    error), a subject forgotten by retraining its classes' sub-models, version 2 published with
    the same learner, and a signed certificate a third party can check."""
    from app.audit import signing

    s, c = exact_service
    v1 = _manifest(s, "digits-arcane", 1)
    assert (v1["config"]["learner"], v1["config"]["aggregation"]) == ("ae", "raw")
    assert v1["config"]["arch_params"] == {"hidden": 512, "code": 64}
    dave = c.get("/v1/subjects/dave/instances", params={"model": "digits-arcane"}).json()["instances"]
    assert dave and all(not i["erased"] for i in dave)
    r = c.post("/v1/forget", json={"model": "digits-arcane", "subject_id": "dave", "external_id": "DSR-arcane"})
    assert r.status_code == 202, r.text
    done = _wait(c, r.json()["id"])
    assert done["status"] == "completed", done
    assert done["method"] == "arcane" and (done["version_before"], done["version_after"]) == (1, 2)
    v2 = _manifest(s, "digits-arcane", 2)
    assert {k: v2["config"][k] for k in ("learner", "aggregation", "arch_params")} == \
        {k: v1["config"][k] for k in ("learner", "aggregation", "arch_params")}
    held = {i for m in v2["plan"]["pool"] for i in m}
    assert not held & {i["instance_id"] for i in dave}  # the new version's plan holds none of dave's rows
    assert c.post("/v1/models/digits-arcane/predict", json={"inputs": [[[[0.0] * 8] * 8]]}).json()["version"] == 2
    assert all(i["erased"] for i in
               c.get("/v1/subjects/dave/instances", params={"model": "digits-arcane"}).json()["instances"])

    cert = c.get(f"/v1/forget/{done['id']}/certificate")
    assert cert.status_code == 200, cert.text
    doc = cert.json()
    body = doc["certificate"]
    versions = {v["version"]: v for v in c.get("/v1/models/digits-arcane/versions").json()["versions"]}
    assert body["method"] == "arcane" and body["external_id"] == "DSR-arcane" and body["instances"] == len(dave)
    assert body["version_before"] == {"version": 1, "sha256": versions[1]["sha256"]}
    assert body["version_after"] == {"version": 2, "sha256": versions[2]["sha256"]}
    key = c.get("/v1/keys/audit").json()
    assert signing.verify_certificate(doc, signing.load_public_key(key["public_key_pem"])) == (True, None)
    forged = {**doc, "certificate": {**body, "method": "sisa"}}
    assert signing.verify_certificate(forged, signing.load_public_key(key["public_key_pem"]))[0] is False


def test_arcane_is_refused_for_new_tabular_models_and_serves_those_registered_before(tmp_path, caplog, monkeypatch):
    """On tabular rows ARCANE's one-class sub-models cost accuracy against one network and a
    deletion is slower than retraining, while SISA is within 0.2 points and faster (the
    catalogue's caveat, measured by bench.exact): a new ARCANE model on such data is refused with
    the measured sentence, and nothing is registered. A model registered before the refusal
    (simulated by lifting it for the registration) keeps its caveat on the version and its
    deletions served, exact."""
    import dataclasses

    from models import unlearn
    from models.unlearn import method_info

    s = _settings(tmp_path, demo_exact_dataset="adult", demo_exact_rows=300)
    migrate(s)
    caveat = method_info("arcane").caveat_for((108,))
    assert method_info("arcane").refusal_for((108,)) == caveat and method_info("arcane").refusal_for((1, 8, 8)) is None
    with pytest.raises(ValueError, match="arcane is not offered for adult") as refused:
        bootstrap_exact_demo(s, "arcane")
    assert caveat in str(refused.value)
    with session_scope(s.database_url) as db:
        assert registry.get_model(db, "adult-arcane") is None

    monkeypatch.setitem(unlearn.METHODS, "arcane", dataclasses.replace(method_info("arcane"), not_offered=()))
    with caplog.at_level("WARNING"):
        assert bootstrap_exact_demo(s, "arcane") == "adult-arcane"
    monkeypatch.undo()
    assert caveat in caplog.text and method_info("arcane").refusal_for((108,)) == caveat
    assert _manifest(s, "adult-arcane", 1)["config"]["learner"] == "made"
    with TestClient(create_app(s), headers=bearer(make_key(s))) as c:
        v1 = c.get("/v1/models/adult-arcane/versions").json()["versions"][0]
        assert v1["metrics"]["caveat"] == caveat
        r = c.post("/v1/forget", json={"model": "adult-arcane", "subject_id": "alice"})
        assert r.status_code == 202, r.text
        done = _wait(c, r.json()["id"])
        assert done["status"] == "completed" and done["method"] == "arcane", done


def test_method_must_fit_the_model(exact_service, tmp_path):
    s, c = exact_service
    r = c.post("/v1/forget", json={"model": "digits-sisa", "subject_id": "bob", "method": "instance"})
    assert r.status_code == 422 and r.json()["code"] == "method_not_supported"
    assert "supports methods ['sisa']" in r.json()["detail"]
    r = c.post("/v1/forget", json={"model": "digits-arcane", "subject_id": "bob", "method": "sisa"})
    assert r.status_code == 422 and r.json()["code"] == "method_not_supported"
    r = c.post("/v1/forget", json={"model": "digits-sisa", "subject_id": "bob", "objective": "relabel"})
    assert r.status_code == 422 and r.json()["code"] == "objective_not_supported"


def test_a_failed_shard_retrain_fails_the_job_and_the_alias_stays(exact_service):
    s, c = exact_service
    inst = c.get("/v1/subjects/carol/instances", params={"model": "digits-sisa"}).json()["instances"]
    shard = inst[0]["shard"]
    # lose the raw data of another instance of the same shard: its retrain cannot read it
    from app.catalogue.models import TrainingInstance
    from app.datasets.store import DatasetStore
    from sqlalchemy import select

    with session_scope(s.database_url) as db:
        victim = db.execute(select(TrainingInstance).where(
            TrainingInstance.model_name == "digits-sisa", TrainingInstance.shard == shard,
            TrainingInstance.instance_id.not_in([i["instance_id"] for i in inst]))).scalars().first()
        DatasetStore(victim.storage_uri).erase([victim.instance_id])
    r = c.post("/v1/forget", json={"model": "digits-sisa", "instance_ids": [inst[0]["instance_id"]]})
    done = _wait(c, r.json()["id"])
    assert done["status"] == "failed" and "not in the store" in done["error"], done
    versions = c.get("/v1/models/digits-sisa/versions").json()
    assert versions["aliases"] == {"production": 1} and len(versions["versions"]) == 1
    assert not c.get("/v1/subjects/carol/instances", params={"model": "digits-sisa"}).json()["instances"][0]["erased"]


def test_puma_is_served_by_retraining(seeded):
    """PUMA is not an unlearning method on its own (full U-LiRA, docs/unlearning.md): a request
    that names it is accepted and served by exact retraining, and the plan says why."""
    s = seeded.model_copy(update={"embedded_worker": True})
    with TestClient(create_app(s), headers=bearer(make_key(s))) as c:
        r = c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice", "method": "puma"})
        assert r.status_code == 202, r.text
        done = _wait(c, r.json()["id"])
        assert done["status"] == "completed", done
        assert done["metrics"]["method"] == "retrain" and (done["version_before"], done["version_after"]) == (1, 2)
        job = c.get(f"/v1/jobs/{done['job']['id']}").json()
        assert job["plan"]["exact"] is True and job["plan"]["method"] == "retrain", job["plan"]
        assert "not an unlearning method on its own" in job["plan"]["reason"]
        # the certificate names what was done, and what was asked
        cert = c.get(f"/v1/forget/{done['id']}/certificate").json()["certificate"]
        assert (cert["method"], cert["requested_method"]) == ("retrain", "puma")
        r = c.post("/v1/forget", json={"model": MODEL, "subject_id": "bob", "method": "sisa"})
        assert r.status_code == 422 and r.json()["code"] == "method_not_supported"
