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
