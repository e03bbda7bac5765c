"""Your own model over HTTP: any zoo or plug-in architecture with its constructor
parameters and training recipe, validated at registration with precise 422s."""
import io
import json

import torch

from .test_governance import MANIFEST


def _weights(arch, shape, classes, params=None) -> bytes:
    from safetensors.torch import save

    from models.architectures import build_model

    torch.manual_seed(3)
    net = build_model(arch, shape, classes, params)
    return save({k: v.contiguous() for k, v in net.state_dict().items()})


def _upload(client, weights: bytes, **form):
    data = {"name": "mine", "arch": "cnn", "dataset": "digits", **form}
    files = {"weights": ("model.safetensors", io.BytesIO(weights), "application/octet-stream"),
             "manifest": ("manifest.json", io.BytesIO(json.dumps(MANIFEST).encode()), "application/json")}
    return client.post("/v1/models", data=data, files=files)


def test_architectures_lists_the_zoo_and_installed_plugins(client, tinynet):
    body = client.get("/v1/architectures").json()
    names = [a["name"] for a in body["architectures"]]
    assert {"mlp", "cnn", "resnet18", "resnet34", "resnet50", "text_bag", "text_transformer", "tinynet"} <= set(names)
    resnet = next(a for a in body["architectures"] if a["name"] == "resnet50")
    assert resnet["params"]["stem"]["choices"] == ["cifar", "imagenet"] and resnet["inputs"] == "image"
    assert "ModuleNotFoundError" in body["problems"]["lethe_tinynet_missing:Net"]


def test_zoo_model_with_parameters_and_recipe(client):
    params = {"stem": "cifar", "width": 8}
    recipe = {"optimizer": "sgd", "lr": 0.05, "epochs": 3, "batch_size": 32, "weight_decay": 5e-4, "seed": 7}
    r = _upload(client, _weights("resnet18", (1, 8, 8), 10, params), arch="resnet18", arch_params=json.dumps(params),
                recipe=json.dumps(recipe))
    assert r.status_code == 201, r.text
    assert r.json()["arch_params"] == params and r.json()["recipe"]["optimizer"] == "sgd"
    m = client.get("/v1/models/mine").json()
    assert (m["arch"], m["arch_params"], m["status"]) == ("resnet18", params, "ready")
    assert m["recipe"] == {**recipe, "momentum": 0.9}
    pred = client.post("/v1/models/mine/predict", json={"instance_ids": ["digits-00002"]})
    assert pred.status_code == 200, pred.text
    # a model registered without a recipe reports the demo recipe it will be retrained with
    assert client.get("/v1/models/toy-cnn").json()["recipe"]["epochs"] == 8


def test_plugin_model_is_checked_against_the_dataset(client, tinynet):
    from safetensors.torch import save
    from lethe_tinynet import TinyNet

    w = save({k: v.contiguous() for k, v in TinyNet((64,), 10, hidden=12).state_dict().items()})
    r = _upload(client, w, arch="tinynet")
    assert r.status_code == 422 and r.json()["code"] == "bad_arch_params"
    assert "takes a row of numeric features" in r.json()["detail"]  # TinyNet is tabular, digits are images
    r = _upload(client, w, arch="notrunk")
    assert r.status_code == 422 and "breaks Lethe's contract" in r.json()["detail"]


def test_bad_model_specs_are_422_with_what_is_wrong(client):
    w = _weights("cnn", (1, 8, 8), 10)
    cases = [({"arch": "vgg16"}, "unknown_arch", "unknown architecture 'vgg16'; available: ['cnn'"),
             ({"arch_params": '{"widht": 3}'}, "bad_arch_params", "has no parameter(s) ['widht']"),
             ({"arch_params": "[1, 2]"}, "bad_arch_params", "arch_params must be a JSON object"),
             ({"arch_params": "{nope"}, "bad_arch_params", "arch_params is not valid JSON"),
             ({"recipe": '{"optimizer": "lbfgs", "epochs": 0}'}, "bad_recipe",
              "recipe.optimizer must be one of ['adam', 'adamw', 'sgd'], got 'lbfgs'; recipe.epochs must be >= 1"),
             ({"arch_params": '{"width": 16}'}, "weights_do_not_fit", "with parameters {'width': 16, 'hidden': 128}")]
    for form, code, msg in cases:
        r = _upload(client, w, **form)
        assert r.status_code == 422 and r.json()["code"] == code and msg in r.json()["detail"], (form, r.text)
    assert all(m["name"] != "mine" for m in client.get("/v1/models").json())


def breast_cancer_parquet(subjects_per_row: int = 2) -> bytes:
    """scikit-learn's bundled breast-cancer table as a data team would hand it over: one row
    per instance with an id, the label's name, a subject (a patient owns 2 rows here), a split
    and the 30 numeric features (standardised)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = (d.data - d.data.mean(0)) / d.data.std(0)
    n = len(x)
    split = np.where(np.random.default_rng(0).random(n) < 0.2, "test", "train")
    cols = {"instance_id": [f"bc-{i:04d}" for i in range(n)],
            "label": [str(d.target_names[t]) for t in d.target],
            "subject_id": [f"patient-{i // subjects_per_row:04d}" for i in range(n)], "split": split}
    cols.update({f"f{j:02d}": x[:, j].astype("float32") for j in range(x.shape[1])})
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


def _train(client, settings, dispatcher, name):
    """Run the dispatched training run as the worker would, then read it over HTTP."""
    from worker.training import run_training

    run_id = dispatcher.training[-1]
    assert client.get(f"/v1/models/{name}/training").json()[-1]["status"] == "queued"
    assert run_training(run_id, settings=settings) in ("completed", "failed")
    assert run_training(run_id, settings=settings) == "done"  # a redelivered message is a no-op
    return client.get(f"/v1/models/{name}/training").json()[-1]


def test_lethe_trains_a_model_on_a_registered_dataset(client, seeded, dispatcher, tinynet):
    r = client.post("/v1/datasets", data={"name": "cancer", "classes": json.dumps(["malignant", "benign"])},
                    files={"file": ("cancer.parquet", breast_cancer_parquet(), "application/octet-stream")})
    assert r.status_code == 201, r.text
    body = {"dataset": "cancer", "arch": "mlp", "arch_params": {"widths": [32]},
            "recipe": {"optimizer": "adamw", "lr": 0.003, "epochs": 12, "batch_size": 32, "weight_decay": 0.01,
                       "seed": 1}}
    r = client.post("/v1/models/cancer-mlp/train", json=body)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued" and client.get("/v1/models/cancer-mlp").json()["status"] == "training"
    run = _train(client, seeded, dispatcher, "cancer-mlp")
    assert run["status"] == "completed", run
    assert run["metrics"]["ta"] > 90 and run["metrics"]["train_rows"] + run["metrics"]["test_rows"] == 569
    m = client.get("/v1/models/cancer-mlp").json()
    assert (m["status"], m["aliases"], m["arch_params"]) == ("ready", {"production": 1}, {"widths": [32]})
    assert m["recipe"]["optimizer"] == "adamw" and m["input_shape"] == [30]
    assert client.get("/v1/datasets/cancer").json()["models"] == ["cancer-mlp"]
    inst = client.get("/v1/subjects/patient-0003/instances", params={"model": "cancer-mlp"}).json()["instances"]
    assert {i["instance_id"] for i in inst} <= {"bc-0006", "bc-0007"} and inst
    # a plug-in architecture trains the same way, and the same subject is now in two models
    r = client.post("/v1/models/cancer-tiny/train", json={"dataset": "cancer", "arch": "tinynet",
                                                          "recipe": {"epochs": 10, "lr": 0.003}})
    assert r.status_code == 202, r.text
    assert _train(client, seeded, dispatcher, "cancer-tiny")["status"] == "completed"
    f = client.post("/v1/forget", json={"subject_id": "patient-0003"})
    assert f.status_code == 202 and {m["model"] for m in f.json()["requests"]} == {"cancer-mlp", "cancer-tiny"}


def test_training_requests_are_checked_before_anything_is_recorded(client, seeded):
    r = client.post("/v1/datasets", data={"name": "cancer"},
                    files={"file": ("cancer.parquet", breast_cancer_parquet(), "application/octet-stream")})
    assert r.status_code == 201, r.text
    cases = [("cancer-x", {"dataset": "nope", "arch": "mlp"}, 404, "unknown_dataset"),
             ("cancer-x", {"dataset": "cancer", "arch": "resnet18"}, 422, "bad_arch_params"),
             ("cancer-x", {"dataset": "cancer", "arch": "mlp", "recipe": {"lr": -1}}, 422, "bad_recipe"),
             ("cancer-x", {"dataset": "cancer", "arch": "mlp", "epochs": 3}, 422, "invalid_request"),
             ("Bad Name", {"dataset": "cancer", "arch": "mlp"}, 422, "bad_name"),
             ("toy-cnn", {"dataset": "cancer", "arch": "mlp"}, 409, "model_exists")]
    for name, body, status, code in cases:
        r = client.post(f"/v1/models/{name}/train", json=body)
        assert (r.status_code, r.json()["code"]) == (status, code), (name, body, r.text)
    assert [m["name"] for m in client.get("/v1/models").json()] == ["toy-cnn"]


def test_a_failed_run_fails_the_model_and_publishes_nothing(client, seeded, dispatcher):
    import shutil

    from app.datasets import service as datasets

    r = client.post("/v1/datasets", data={"name": "cancer"},
                    files={"file": ("cancer.parquet", breast_cancer_parquet(), "application/octet-stream")})
    assert r.status_code == 201
    assert client.post("/v1/models/cancer-mlp/train", json={"dataset": "cancer", "arch": "mlp"}).status_code == 202
    shutil.rmtree(datasets.store_dir(seeded, "cancer"))  # the rows vanish before the run starts
    run = _train(client, seeded, dispatcher, "cancer-mlp")
    assert run["status"] == "failed" and "has no store" in run["error"]
    m = client.get("/v1/models/cancer-mlp").json()
    assert (m["status"], m["aliases"], m["latest_version"]) == ("failed", {}, None)
    ev = client.get("/v1/audit", params={"action": "model.training_failed"}).json()["entries"]
    assert ev and ev[0]["payload"]["model"] == "cancer-mlp"
    # the name can be trained again once the data is back
    r = client.post("/v1/datasets", data={"name": "cancer2"},
                    files={"file": ("cancer.parquet", breast_cancer_parquet(), "application/octet-stream")})
    assert r.status_code == 201
    again = client.post("/v1/models/cancer-mlp/train", json={"dataset": "cancer2", "arch": "mlp",
                                                             "recipe": {"epochs": 2}})
    assert again.status_code == 202, again.text
    assert _train(client, seeded, dispatcher, "cancer-mlp")["status"] == "completed"
    m = client.get("/v1/models/cancer-mlp").json()
    assert (m["status"], m["dataset"], m["aliases"], m["recipe"]["epochs"]) == ("ready", "cancer2", {"production": 1}, 2)
    assert len(client.get("/v1/models/cancer-mlp/training").json()) == 2
