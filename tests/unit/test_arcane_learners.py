"""ARCANE's one-class learner and aggregation as config options (models/unlearn/oneclass.py):
a new model gets the default for its data and names it in its bundle; a bundle written before
the option existed (no learner in its config) loads and predicts exactly as it did; MADE is
autoregressive and its deletions stay exact."""
import json

import pytest
import torch

from models.data import load_dataset
from models.unlearn import UnlearnRequest, get_method, oneclass
from models.unlearn.arcane import train_arcane
from models.unlearn.shards import (ExactConfig, MemoryStore, data_from, load_bundle, save_member, slice_key,
                                   train_member, write_manifest)


def _cfg(d, name, **kw):
    return ExactConfig(kind="arcane", arch="ae1c", dataset=name, input_shape=d.input_shape, classes=d.classes,
                       shards=d.num_classes, slices=2, epochs=1, lr=3e-3, **kw)


def _save(tmp_path, model, config_json=None):
    members = []
    for m, net in enumerate(model.members):
        p = tmp_path / f"m{m}.safetensors"
        members.append({"file": p.name, "sha256": save_member(net, str(p), model.config, m)})
    path = tmp_path / "bundle.json"
    write_manifest(str(path), model.config, model.plan, members)
    if config_json is not None:  # rewrite the stored config as an older writer would have
        doc = json.loads(path.read_text())
        doc["config"] = config_json
        path.write_text(json.dumps(doc))
    return str(path)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_a_new_model_gets_the_default_for_its_data_and_the_bundle_names_it(digits, tmp_path):
    x, y = digits.x_train[:300], digits.y_train[:300]
    model = train_arcane(_cfg(digits, "digits"), [str(i) for i in range(300)], x, y, store=MemoryStore())
    assert (model.config.learner, model.config.aggregation) == ("ae", "raw")
    assert model.config.arch_params == {"hidden": 512, "code": 64}
    assert model.members[0].enc[0].out_features == 512
    # raw aggregation: the class whose autoencoder reconstructs x best, not the error over its mean
    errs = torch.stack([m.errors(digits.x_test) for m in model.members], 1)
    with torch.no_grad():
        assert torch.equal(model(digits.x_test), -errs)
    path = _save(tmp_path, model)
    with open(path) as f:
        stored = json.load(f)["config"]
    assert stored["learner"] == "ae" and stored["aggregation"] == "raw"
    loaded, _ = load_bundle(path)
    with torch.no_grad():
        assert torch.equal(loaded(digits.x_test), model(digits.x_test))
    # tabular rows get MADE, a density whose score is the log-likelihood
    flat = _cfg(digits, "digits")
    flat.input_shape = (64,)
    model = train_arcane(flat, [str(i) for i in range(300)], x.flatten(1), y, store=MemoryStore())
    assert (model.config.learner, model.config.aggregation) == ("made", "raw")
    assert isinstance(model.members[0], oneclass.OneClassMADE)


def test_a_bundle_written_before_the_option_loads_and_predicts_as_before(digits, tmp_path):
    x, y = digits.x_train[:300], digits.y_train[:300]
    # the configuration every ARCANE bundle had: 64/16 autoencoder, its config without `learner`
    # and with the dataclass's aggregation default ("softmax", which ARCANE never read)
    old = _cfg(digits, "digits", learner="ae", aggregation="mean")
    model = train_arcane(old, [str(i) for i in range(300)], x, y, store=MemoryStore())
    legacy = model.config.to_json()
    del legacy["learner"]
    legacy["aggregation"] = "softmax"
    loaded, _ = load_bundle(_save(tmp_path, model, legacy))
    assert loaded.config.learner is None and loaded.config.arcane_learner() == ("ae", "mean")
    assert loaded.members[0].enc[0].out_features == 64
    # the old rule, by hand: minus the error over the mean error on its own class's training rows
    want = torch.stack([-m.errors(digits.x_test) / m.err_scale for m in model.members], 1)
    with torch.no_grad():
        assert torch.equal(loaded(digits.x_test), want)
    # its slice checkpoints keep their names: `learner` absent leaves the fingerprint unchanged
    same = ExactConfig.from_json(legacy)
    assert slice_key(same, 0, ["a"]) == slice_key(ExactConfig.from_json({**legacy, "learner": None}), 0, ["a"])
    assert slice_key(same, 0, ["a"]) != slice_key(ExactConfig.from_json({**legacy, "learner": "ae"}), 0, ["a"])


def test_learner_and_aggregation_that_do_not_fit_are_refused(digits):
    with pytest.raises(ValueError, match="log-density"):
        train_arcane(_cfg(digits, "digits", learner="made", aggregation="mean"), ["a"], digits.x_train[:1],
                     digits.y_train[:1])
    with pytest.raises(ValueError, match="unknown ARCANE learner"):
        oneclass.resolve("svm", "raw")
    with pytest.raises(ValueError, match="unknown ARCANE aggregation"):
        oneclass.resolve("ae", "vote")


def test_made_is_autoregressive():
    net = oneclass.OneClassMADE((6,), hidden=16, layers=2)
    x = torch.randn(1, 6, requires_grad=True)
    flat = x
    h = flat
    for i, lin in enumerate(net.hidden):
        h = torch.relu(torch.nn.functional.linear(h, lin.weight * getattr(net, f"mask{i}"), lin.bias))
    mu = torch.nn.functional.linear(h, net.mu.weight * net.mask_out, net.mu.bias)
    for j in range(6):
        (g,) = torch.autograd.grad(mu[0, j], x, retain_graph=True)
        assert torch.all(g[0, j:] == 0), f"mu_{j} reads x_{j} or later"
    assert torch.all(net.mask_out[0] == 0)  # the first feature's conditional reads nothing: a marginal


def test_a_made_deletion_retrains_one_sub_model_exactly():
    d = load_dataset("adult")
    ids, x, y = d.ids_train[:400], d.x_train[:400], d.y_train[:400]
    cfg = ExactConfig(kind="arcane", arch="ae1c", dataset="adult", input_shape=d.input_shape, classes=d.classes,
                      shards=2, slices=3, epochs=2, lr=3e-3, arch_params={"hidden": 32, "layers": 1})
    model = train_arcane(cfg, ids, x, y, store=MemoryStore())
    assert model.config.learner == "made" and model.config.arch_params == {"hidden": 32, "layers": 1}
    victim = model.plan.slices[1][2][0]
    keep = [i for i in ids if i != victim]
    idx = [ids.index(i) for i in keep]
    v = ids.index(victim)
    req = UnlearnRequest(forget_x=x[v:v + 1], forget_y=y[v:v + 1], forget_ids=[victim], retain_ids=keep,
                         retain_x=x[idx], retain_y=y[idx])
    new = get_method("arcane")(model, req).model
    sd0, sd1 = new.members[0].state_dict(), model.members[0].state_dict()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)  # class 0's sub-model untouched
    scratch, _ = train_member(new.config, 1, new.plan.slices[1], data_from(keep, x[idx], y[idx]), MemoryStore())
    a, b = new.members[1].state_dict(), scratch.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
