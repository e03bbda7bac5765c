"""A model trained by its team's own trainer plug-in (tests/plugins/lethe_augtrain): POST
train, a deletion retrained exactly (method ``retrain``) and a consolidation all run that
trainer with the model's stored parameters; a failing plug-in fails the run and publishes
nothing."""
import json
import os

from app.db import session_scope
from app.registry import service as registry
from worker import driver

from .test_own_models import _train, breast_cancer_parquet

AUG = {"epochs": 4, "lr": 0.01, "batch_size": 32, "label_smoothing": 0.1, "augment": "noise", "noise_std": 0.02,
       "patience": 3}


def _dataset(client):
    r = client.post("/v1/datasets", data={"name": "cancer", "classes": json.dumps(["malignant", "benign"])},
                    files={"file": ("cancer.parquet", breast_cancer_parquet(), "application/octet-stream")})
    assert r.status_code == 201, r.text


def test_own_trainer_trains_retrains_and_consolidates(client, seeded, dispatcher, augtrain):
    _dataset(client)
    listed = client.get("/v1/trainers").json()
    assert {"lethe", "augmented"} <= {t["name"] for t in listed["trainers"]} and listed["problems"]
    recipe = {"trainer": "augmented", "trainer_params": AUG, "seed": 2}
    r = client.post("/v1/models/cancer-aug/train", json={"dataset": "cancer", "arch": "mlp",
                                                         "arch_params": {"widths": [32]}, "recipe": recipe})
    assert r.status_code == 202, r.text
    run = _train(client, seeded, dispatcher, "cancer-aug")
    assert run["status"] == "completed", run
    assert run["metrics"]["trainer"] == "augmented" and run["metrics"]["ta"] > 85
    assert run["metrics"]["trainer_metrics"]["best_heldout_accuracy"] > 85   # early stopping saw the held-out split
    m = client.get("/v1/models/cancer-aug").json()
    assert m["recipe"]["trainer"] == "augmented" and m["recipe"]["trainer_params"]["label_smoothing"] == 0.1

    # a deletion retrained exactly: the model's own trainer, its stored parameters
    f = client.post("/v1/forget", json={"subject_id": "patient-0003", "model": "cancer-aug", "method": "retrain"})
    assert f.status_code == 202, f.text
    job_id = dispatcher.sent[-1]
    assert driver.execute_job(job_id, settings=seeded, worker_name="w1") == "completed"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "completed" and job["metrics"]["exact"] is True, job
    assert job["stats"]["trainer"] == "augmented", job

    # a consolidation too
    c = client.post("/v1/models/cancer-aug/consolidate")
    assert c.status_code == 202, c.text
    assert driver.execute_job(c.json()["id"], settings=seeded, worker_name="w1") == "completed"
    job = client.get(f"/v1/jobs/{c.json()['id']}").json()
    assert job["stats"]["trainer"] == "augmented" and job["result_version"] == 3, job

    # the team's code breaks: the job fails at once with the plug-in's error (no retry), nothing published
    with session_scope(seeded.database_url) as db:
        registry.get_model(db, "cancer-aug").recipe = {"trainer": "broken", "seed": 2}
    c = client.post("/v1/models/cancer-aug/consolidate")
    assert driver.execute_job(c.json()["id"], settings=seeded, worker_name="w1") == "failed"
    job = client.get(f"/v1/jobs/{c.json()['id']}").json()
    assert job["status"] == "failed" and "trainer 'broken'" in job["error"] and job["attempts"] == 1, job
    assert client.get("/v1/models/cancer-aug").json()["latest_version"] == 3


def test_bad_trainer_specs_are_422_and_a_failing_plugin_publishes_nothing(client, seeded, dispatcher, augtrain):
    _dataset(client)
    for recipe, needle in (({"trainer": "nope"}, "unknown trainer 'nope'"),
                           ({"trainer": "augmented", "trainer_params": {"augment": "mixup", "epochz": 3}},
                            "trainer_params.augment"),
                           ({"trainer": "lethe", "trainer_params": {"epochs": 2}}, "built-in trainer 'lethe'")):
        r = client.post("/v1/models/cancer-x/train", json={"dataset": "cancer", "arch": "mlp", "recipe": recipe})
        assert (r.status_code, r.json()["code"]) == (422, "bad_recipe"), r.text
        assert needle in r.json()["detail"], r.text
    r = client.post("/v1/models/cancer-x/train", json={"dataset": "cancer", "arch": "mlp",
                                                       "recipe": {"trainer": "broken"}})
    assert r.status_code == 202, r.text
    run = _train(client, seeded, dispatcher, "cancer-x")
    assert run["status"] == "failed" and "trainer 'broken'" in run["error"] and "out of memory" in run["error"]
    m = client.get("/v1/models/cancer-x").json()
    assert (m["status"], m["aliases"], m["latest_version"]) == ("failed", {}, None)


def test_a_sisa_model_trains_and_retrains_its_shards_with_the_plugin(tmp_path, augtrain):
    """A SISA model whose shards the plug-in trains (LETHE_DEMO_EXACT_TRAINER): a deletion
    through the HTTP API and the embedded worker retrains the shards holding the subject with
    the same trainer and parameters: each retrained member is, bit for bit, what that trainer
    gives on its shard's retained rows from the slice stages the deletion left untouched, and
    not what Lethe's own loop gives."""
    import torch
    from fastapi.testclient import TestClient

    from app.bootstrap import bootstrap_exact_demo
    from app.cli import migrate
    from app.main import create_app
    from models import trainers
    from models.data import load_dataset
    from models.unlearn.shards import (ExactConfig, MemoryStore, Plan, data_from, load_member, read_manifest,
                                       stage_keys, train_member)

    from .conftest import bearer, make_key
    from .test_exact_api import _bundle_files, _settings, _wait

    params = {**AUG, "epochs": 2}
    s = _settings(tmp_path, demo_exact_trainer="augmented", demo_exact_trainer_params=params)
    migrate(s)
    assert bootstrap_exact_demo(s, "sisa") == "digits-sisa"
    with TestClient(create_app(s), headers=bearer(make_key(s))) as c:
        m = c.get("/v1/models/digits-sisa").json()
        assert m["family"] == "sisa" and m["recipe"]["trainer"] == "augmented", m
        assert m["recipe"]["trainer_params"] == trainers.get("augmented").validate(params)
        alice = c.get("/v1/subjects/alice/instances", params={"model": "digits-sisa"}).json()["instances"]
        before = _bundle_files(s, "digits-sisa", 1)
        with session_scope(s.database_url) as db:
            v1 = registry.get_version(db, "digits-sisa", 1)
            before_plan = Plan.from_json(read_manifest(registry.absolute_path(registry.weights(s), v1.storage_path))["plan"])
        r = c.post("/v1/forget", json={"model": "digits-sisa", "subject_id": "alice"})
        assert r.status_code == 202, r.text
        done = _wait(c, r.json()["id"])
        assert done["status"] == "completed" and done["version_after"] == 2, done.get("error")
    after = _bundle_files(s, "digits-sisa", 2)
    shards = {i["shard"] for i in alice}
    assert [a["sha256"] != b["sha256"] for a, b in zip(after, before)] == [k in shards for k in range(3)]
    with session_scope(s.database_url) as db:
        path = registry.absolute_path(registry.weights(s), registry.get_version(db, "digits-sisa", 2).storage_path)
    doc = read_manifest(path)
    config, plan = ExactConfig.from_json(doc["config"]), Plan.from_json(doc["plan"])
    assert (config.trainer, config.trainer_params) == ("augmented", trainers.get("augmented").validate(params))
    ds = load_dataset("digits")
    gone = {i["instance_id"] for i in alice}
    keep = [k for k, i in enumerate(ds.ids_train[:s.demo_exact_rows]) if i not in gone]
    data = data_from([ds.ids_train[k] for k in keep], torch.as_tensor(ds.x_train[keep]),
                     torch.as_tensor(ds.y_train[keep]))
    slices = registry.slices(registry.weights(s), "digits-sisa")
    plain = ExactConfig(**{**config.__dict__, "trainer": "lethe", "trainer_params": None})
    for k in sorted(shards):
        # what the worker did: resume from the stages the deletion left untouched (kept from
        # training), retrain the rest; here with the plug-in and the stored parameters...
        prefix = MemoryStore()
        for key in stage_keys(config, k, before_plan.slices[k]):
            if key in stage_keys(config, k, plan.slices[k]) and slices.get(key) is not None:
                prefix.put(key, slices.get(key))
        again, st = train_member(config, k, plan.slices[k], data, prefix)
        assert st["retrained_slices"] >= 1
        served = load_member(os.path.join(os.path.dirname(path), doc["members"][k]["file"]), config).state_dict()
        assert all(torch.equal(again.state_dict()[n], served[n]) for n in served), f"shard {k}"
        # ...and Lethe's own loop from the same start gives other weights
        other, _ = train_member(plain, k, plan.slices[k], data, MemoryStore())
        assert not all(torch.equal(other.state_dict()[n], served[n]) for n in served)
