"""The field's baselines (models/unlearn/baselines.py): each runs through the registry on a
tiny model, returns a changed model, leaves the input untouched and respects its contract."""
import pytest
import torch

from models.nets import build_model
from models.train import train_model
from models.unlearn import UnlearnRequest, get_method
from models.unlearn.baselines import saliency_mask

BASELINES = ["finetune", "neggrad_plus", "random_labels", "l1_sparse", "scrub", "salun"]


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()  # 3 classes, learnable
    model = train_model("mlp", x, y, input_shape=(10,), num_classes=3, seed=0, epochs=8, device=torch.device("cpu"))
    req = UnlearnRequest(x[:8], y[:8], retain_x=x[8:], retain_y=y[8:], seed=0)
    return model, req


def _params(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_runs_changes_the_model_and_leaves_the_input(tiny, name):
    model, req = tiny
    before = _params(model).clone()
    seen = []
    res = get_method(name)(model, req, progress=lambda stage, f: seen.append(f))
    assert torch.equal(_params(model), before)                  # input untouched
    assert not torch.equal(_params(res.model), before)          # output changed
    assert res.stats["finite"] and res.stats["converged"] and res.stats["steps"] > 0
    assert seen and seen[-1] == 1.0
    assert torch.isfinite(res.model(req.forget_x)).all()


@pytest.mark.parametrize("name", BASELINES + ["retrain"])
def test_baseline_refuses_without_retained_data(tiny, name):
    model, req = tiny
    with pytest.raises(ValueError, match="retained"):
        get_method(name)(model, UnlearnRequest(req.forget_x, req.forget_y))


def test_salun_moves_only_salient_weights(tiny):
    model, req = tiny
    mask = saliency_mask(model, req.forget_x, req.forget_y, sparsity=0.5)
    share = sum(float(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert 0.45 < share < 0.55
    res = get_method("salun")(model, req)
    for (n, p0), p1 in zip(model.named_parameters(), res.model.parameters()):
        frozen = mask[n] == 0
        # weight decay and momentum are undone on masked weights too (SalUn's RL.py does the same)
        assert torch.equal(p0.detach()[frozen], p1.detach()[frozen]), n


def test_neggrad_plus_raises_the_forget_loss_more_than_finetune(tiny):
    model, req = tiny
    f = torch.nn.functional.cross_entropy
    ng = get_method("neggrad_plus")(model, UnlearnRequest(req.forget_x, req.forget_y, retain_x=req.retain_x,
                                                          retain_y=req.retain_y, options={"beta": 0.5}))
    ft = get_method("finetune")(model, req)
    assert f(ng.model(req.forget_x), req.forget_y) > f(ft.model(req.forget_x), req.forget_y)


def test_retrain_is_training_from_scratch_without_the_forget_set(tiny):
    model, req = tiny
    res = get_method("retrain")(model, req)
    expected = train_model("mlp", req.retain_x, req.retain_y, input_shape=(10,), num_classes=3, seed=0,
                           device=torch.device("cpu"))
    assert res.stats["exact"] and all(torch.equal(a, b) for a, b in zip(res.model.parameters(), expected.parameters()))


def test_retrain_refuses_an_architecture_it_cannot_rebuild(tiny):
    _, req = tiny
    odd = torch.nn.Sequential(torch.nn.Linear(10, 3))
    odd.head = odd[0]
    with pytest.raises(ValueError, match="rebuild"):
        get_method("retrain")(odd, req)
