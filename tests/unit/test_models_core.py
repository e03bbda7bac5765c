"""Fast unit tests of the ML core's pieces (no service code)."""
import json

import pytest
import torch

from models.attacks import random_targets, scaled_eps, targeted_l2_pgd
from models.checkpoint import load_checkpoint, save_checkpoint, file_sha256
from models.data import load_dataset
from models.importance import anchor_penalty, inverted_normalised, mas_importance
from models.metrics import auc
from models.nets import build_model
from models.train import train_model
from models.unlearn import METHODS, UnlearnRequest, get_method


def test_datasets_are_real_deterministic_and_id_stable():
    d = load_dataset("digits")
    assert len(d.x_train) + len(d.x_test) == 1797
    assert d.ids_train[0] == "digits-00000" and len(set(d.ids_train)) == len(d.ids_train)
    assert float(d.x_train.min()) >= 0 and float(d.x_train.max()) <= 1
    assert torch.equal(d.index_of(["digits-00005"]), torch.tensor([5]))
    m = load_dataset("mnist5k")
    assert m.x_train.shape[1:] == (1, 28, 28) and len(m.x_train) + len(m.x_test) == 5000
    assert len(m.y_train.unique()) == 10  # labels really read, not a constant column


def test_adult_is_one_hot_and_standardised():
    a = load_dataset("adult")
    assert len(a.x_train) + len(a.x_test) == 48842 and a.classes == ["<=50K", ">50K"]
    numeric = a.x_train[:, :6]
    assert torch.allclose(numeric.mean(0), torch.zeros(6), atol=1e-3)
    assert set(a.x_train[:, 6:].unique().tolist()) <= {0.0, 1.0}


def test_random_targets_never_equal_true_label_and_cover_all_others():
    y = torch.arange(10).repeat(50)
    t = random_targets(y, 10, 20, torch.Generator().manual_seed(0))
    assert len(t) == len(y) * 20
    assert not bool((t == y.repeat_interleave(20)).any())
    assert set(t[y.repeat_interleave(20) == 3].tolist()) == set(range(10)) - {3}


def test_pgd_stays_in_the_l2_ball_and_reaches_targets():
    torch.manual_seed(0)
    model = build_model("mlp", (20,), 3)
    x = torch.randn(16, 20)
    target = torch.full((16,), 2)
    eps = 3.0
    xa = targeted_l2_pgd(model, x, target, eps=eps, steps=50, step_size=0.3, clip=None,
                         generator=torch.Generator().manual_seed(0))
    assert float((xa - x).flatten(1).norm(dim=1).max()) <= eps + 1e-4
    assert (model(xa).argmax(1) == 2).float().mean() > (model(x).argmax(1) == 2).float().mean()
    assert scaled_eps((3, 32, 32)) == pytest.approx(4.0) and scaled_eps((1, 28, 28)) == pytest.approx(2.0207, abs=1e-3)


def test_importance_is_inverted_and_min_max_normalised_per_tensor():
    torch.manual_seed(0)
    model = build_model("mlp", (8,), 3)
    omega = mas_importance(model, torch.randn(5, 8))
    w = inverted_normalised(omega)
    for name, o in omega.items():
        assert float(w[name].min()) == pytest.approx(0.0, abs=1e-6) and float(w[name].max()) == pytest.approx(1.0)
        # the most important parameter is the least anchored
        assert float(w[name].flatten()[o.argmax()]) == pytest.approx(0.0, abs=1e-6)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert float(anchor_penalty(model, anchor, w)) == 0.0


def test_checkpoint_round_trips_without_pickle(tmp_path):
    model = build_model("cnn", (1, 8, 8), 10)
    path = tmp_path / "m.safetensors"
    sha = save_checkpoint(model, path, arch="cnn", dataset="digits", input_shape=(1, 8, 8),
                          classes=[str(i) for i in range(10)], extra={"note": "x"})
    assert sha == file_sha256(path)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    assert header["__metadata__"]["arch"] == "cnn"  # plain JSON header: nothing to unpickle
    loaded, meta = load_checkpoint(path)
    assert meta["input_shape"] == (1, 8, 8) and meta["note"] == "x"
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.safetensors"
    torch.save({"w": torch.zeros(2)}, path)  # a pickle archive under a safetensors name
    with pytest.raises(Exception):
        load_checkpoint(path)


def test_trainer_is_deterministic_on_cpu():
    d = load_dataset("digits")
    kw = dict(input_shape=d.input_shape, num_classes=10, seed=3, epochs=1, device=torch.device("cpu"))
    a = train_model("cnn", d.x_train[:300], d.y_train[:300], **kw)
    b = train_model("cnn", d.x_train[:300], d.y_train[:300], **kw)
    for (k, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), k


def test_auc_matches_definition():
    import numpy as np
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5


def test_request_validation():
    x, y = torch.zeros(2, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="objective"):
        UnlearnRequest(x, y, objective="delete")
    with pytest.raises(ValueError, match="empty"):
        UnlearnRequest(x[:0], y[:0])
    with pytest.raises(ValueError, match="own label"):
        UnlearnRequest(x, y, objective="relabel", target_labels=torch.tensor([0, 0]))
    assert {"lethe", "paper_ga", "paper_ga_adv", "paper_full"} <= set(METHODS)
    with pytest.raises(KeyError):
        get_method("nope")


@pytest.fixture(scope="module")
def digits_model():
    d = load_dataset("digits")
    model = train_model("cnn", d.x_train, d.y_train, input_shape=d.input_shape, num_classes=10, seed=0,
                        device=torch.device("cpu"))
    return d, model


def test_paper_method_stops_at_zero_forget_accuracy(digits_model):
    d, model = digits_model
    xf, yf = d.x_train[:1], d.y_train[:1]
    steps = []
    res = get_method("paper_full")(model, UnlearnRequest(xf, yf, options={"adv_per_instance": 4, "pgd_steps": 10}),
                                   progress=lambda stage, frac: steps.append(stage))
    assert res.stats["converged"] and res.stats["steps"] < 500
    assert int(model(xf).argmax(1)) == int(yf)  # the input model is left untouched
    assert int(res.model(xf).argmax(1)) != int(yf)
    assert "adversarial examples" in steps and "unlearning" in steps


def test_lethe_relabel_reaches_the_targets(digits_model):
    d, model = digits_model
    xf, yf = d.x_train[:4], d.y_train[:4]
    targets = (yf + 1) % 10
    req = UnlearnRequest(xf, yf, objective="relabel", target_labels=targets,
                         retain_x=d.x_train[4:], retain_y=d.y_train[4:])
    res = get_method("lethe")(model, req)
    assert torch.equal(res.model(xf).argmax(1), targets)


def test_lethe_requires_retained_data(digits_model):
    d, model = digits_model
    with pytest.raises(ValueError, match="retained"):
        get_method("lethe")(model, UnlearnRequest(d.x_train[:2], d.y_train[:2]))
