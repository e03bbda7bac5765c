"""A model trained by its team's own trainer plug-in (tests/plugins/lethe_augtrain): POST
train, a deletion retrained exactly (method ``retrain``) and a consolidation all run that
trainer with the model's stored parameters; a failing plug-in fails the run and publishes
nothing."""
import json

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
    from app.db import session_scope
    from app.registry import service as registry

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
