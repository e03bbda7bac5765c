"""The architecture zoo, its registry (entry points, plug-ins) and stored training recipes."""
import pytest
import torch

from models import architectures as A
from models.checkpoint import load_checkpoint, save_checkpoint
from models.train import Recipe, RecipeError, accuracy, train_model


def _breast_cancer():
    """scikit-learn's bundled Wisconsin breast-cancer table (569 rows, 30 features), standardised."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=g)
    x, y = x[order], torch.tensor(d.target)[order]
    return x[:450], y[:450], x[450:], y[450:]


ZOO_CASES = [("mlp", (30,), {"widths": [16, 8]}), ("cnn", (1, 8, 8), {}), ("cnn", (3, 28, 28), {"width": 8}),
             ("resnet18", (3, 32, 32), {"width": 8}), ("resnet18", (1, 32, 32), {"stem": "imagenet", "width": 8}),
             ("resnet34", (3, 16, 16), {"width": 4}), ("resnet50", (3, 64, 64), {"stem": "imagenet", "width": 4}),
             ("text_bag", (20,), {"vocab_size": 100}), ("text_transformer", (20,), {"vocab_size": 100})]


@pytest.mark.parametrize("arch,shape,params", ZOO_CASES)
def test_every_zoo_architecture_keeps_the_unlearning_contract(arch, shape, params):
    out = A.validate(arch, shape, 7, params)
    assert out["parameters"] > 0 and set(out["params"]) == set(A.get(arch).params)
    model = A.build_model(arch, shape, 7, params).eval()
    x = A.dummy_input(arch, shape, 3)
    assert torch.allclose(model(x), model.tail(model.trunk(x)), atol=1e-5)
    assert model.head.out_features == 7


def test_resnets_match_the_paper_and_the_first_release_layout():
    # He et al. 2016 ImageNet models (1000 classes): torchvision's published parameter counts
    counts = {d: sum(p.numel() for p in A.build_model(f"resnet{d}", (3, 224, 224), 1000,
                                                        {"stem": "imagenet"}).parameters()) for d in (18, 34, 50)}
    assert counts == {18: 11_689_512, 34: 21_797_672, 50: 25_557_032}
    keys = set(A.build_model("resnet18", (3, 32, 32), 10).state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layers.7.conv2.weight", "layers.2.shortcut.0.weight",
            "head.weight"} <= keys and len([k for k in keys if k.startswith("layers.")]) == 8 * 12 + 3 * 6  # 8 blocks of 12 tensors, 3 shortcuts of 6


def test_bad_architectures_and_parameters_say_exactly_what_is_wrong():
    cases = [("nope", (3,), {}, "unknown architecture 'nope'"),
             ("mlp", (30,), {"width": 3}, "has no parameter(s) ['width']"),
             ("mlp", (30,), {"widths": [0]}, "list of positive integers"),
             ("resnet18", (30,), {}, "takes images shaped (channels, height, width)"),
             ("resnet18", (3, 4, 4), {}, "at least 8x8"),
             ("resnet50", (3, 32, 32), {"stem": "vgg"}, "must be one of ['cifar', 'imagenet']"),
             ("text_bag", (20,), {}, "needs parameter 'vocab_size'"),
             ("text_bag", (2, 20), {"vocab_size": 10}, "sequence of token ids"),
             ("cnn", (1, 8, 8), {"width": True}, "must be an integer")]
    for arch, shape, params, msg in cases:
        with pytest.raises(A.ArchitectureError) as e:
            A.validate(arch, shape, 3, params)
        assert msg in str(e.value), (arch, str(e.value))


def test_text_models_ignore_padding():
    torch.manual_seed(0)
    for arch in ("text_bag", "text_transformer"):
        model = A.build_model(arch, (8,), 2, {"vocab_size": 50}).eval()
        a = torch.tensor([[5., 9., 3., 0., 0., 0., 0., 0.]])
        b = torch.tensor([[5., 9., 3., 0., 0., 0., 0., 0.]])
        b[0, 3:] = 0  # same tokens, same padding: equal
        assert torch.allclose(model(a), model(b))
        if arch == "text_bag":  # a bag: padding length does not matter at all
            short = A.build_model(arch, (3,), 2, {"vocab_size": 50}).eval()
            short.load_state_dict(model.state_dict())
            assert torch.allclose(short(a[:, :3]), model(a), atol=1e-6)
        assert torch.isfinite(model(torch.zeros(1, 8))).all()  # an all-padding row stays finite


def test_recipe_validation_lists_every_problem():
    with pytest.raises(RecipeError) as e:
        Recipe.from_dict({"optimizer": "rmsprop", "lr": 0, "epochs": 0, "batch_size": 1.5, "seed": -1,
                          "weight_decay": float("nan"), "warmup": 3})
    text = str(e.value)
    for part in ("unknown recipe field 'warmup'", "recipe.optimizer must be one of ['adam', 'adamw', 'sgd']",
                 "recipe.lr must be > 0.0", "recipe.epochs must be >= 1", "recipe.batch_size must be an integer",
                 "recipe.weight_decay must be a finite number", "recipe.seed must be >= 0"):
        assert part in text
    assert len(e.value.problems) == 7
    r = Recipe.from_dict({"optimizer": "sgd", "lr": 0.05}, arch="mlp")
    assert (r.optimizer, r.lr, r.epochs, r.batch_size) == ("sgd", 0.05, 6, 64)  # mlp's default epochs
    assert Recipe.from_dict(r.to_json()) == r


def test_the_recipe_decides_training_and_is_deterministic():
    xtr, ytr, xte, yte = _breast_cancer()
    kw = dict(input_shape=(30,), num_classes=2, device="cpu")
    sgd = Recipe(optimizer="sgd", lr=0.05, epochs=3, batch_size=32, seed=4)
    m1 = train_model("mlp", xtr, ytr, recipe=sgd, arch_params={"widths": [16]}, **kw)
    m2 = train_model("mlp", xtr, ytr, recipe=sgd, arch_params={"widths": [16]}, **kw)
    m3 = train_model("mlp", xtr, ytr, recipe=Recipe(optimizer="adamw", lr=0.01, epochs=3, batch_size=32, seed=4,
                                                    weight_decay=0.01), arch_params={"widths": [16]}, **kw)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert not torch.equal(m1.head.weight, m3.head.weight)
    assert accuracy(m1, xte, yte) > 90 and accuracy(m3, xte, yte) > 90


def test_plugin_is_found_through_its_entry_point_and_trains(tinynet, tmp_path):
    assert "tinynet" in A.names() and A.get("tinynet").source == "lethe_tinynet:TinyNet"
    assert A.get("cnn").source == A.BUILTIN  # a plug-in cannot shadow a built-in name
    probs = A.problems()
    assert "already provided by models.nets:ZOO" in probs["lethe_tinynet:TinyNet"]
    assert "ModuleNotFoundError" in probs["lethe_tinynet_missing:Net"]
    assert A.get("tinynet").to_json()["params"]["hidden"] == {"type": "int", "required": False, "help": "",
                                                               "default": 32}
    with pytest.raises(A.ArchitectureError, match="breaks Lethe's contract.*missing \\['trunk', 'tail'"):
        A.validate("notrunk", (30,), 2)
    with pytest.raises(A.ArchitectureError, match="takes a row of numeric features"):
        A.validate("tinynet", (1, 8, 8), 2)

    xtr, ytr, xte, yte = _breast_cancer()
    model = train_model("tinynet", xtr, ytr, input_shape=(30,), num_classes=2, device="cpu",
                        recipe=Recipe(epochs=15, batch_size=32, lr=3e-3), arch_params={"hidden": 24})
    assert accuracy(model, xte, yte) > 90
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(model, path, arch="tinynet", dataset="breast-cancer", input_shape=(30,), classes=["m", "b"],
                    arch_params={"hidden": 24, "gated": True})
    loaded, meta = load_checkpoint(path)
    assert meta["arch_params"] == {"hidden": 24, "gated": True} and loaded.inp.out_features == 48
    assert torch.equal(loaded(xte), model(xte))


@pytest.mark.slow
def test_lethe_unlearns_a_plugin_model(tinynet):
    from models.unlearn import UnlearnRequest, get_method

    xtr, ytr, xte, yte = _breast_cancer()
    loaded = train_model("tinynet", xtr, ytr, input_shape=(30,), num_classes=2, device="cpu",
                         recipe=Recipe(epochs=15, batch_size=32, lr=3e-3), arch_params={"hidden": 24})
    fx, fy = xtr[:3], ytr[:3]
    req = UnlearnRequest(forget_x=fx, forget_y=fy, retain_x=xtr[3:], retain_y=ytr[3:], holdout_x=xte, holdout_y=yte,
                         objective="misclassify")  # this test checks the flip itself
    new = get_method("lethe")(loaded, req).model
    assert (new(fx).argmax(1) != fy).all()  # the tail phase works on the plug-in's trunk/tail split
    assert accuracy(new, xte, yte) > 85


def test_retrain_uses_the_models_architecture_parameters_and_stored_recipe():
    from models.unlearn import UnlearnRequest, get_method

    xtr, ytr, xte, yte = _breast_cancer()
    recipe = Recipe(optimizer="sgd", lr=0.05, epochs=2, batch_size=32, seed=3)
    served = train_model("mlp", xtr, ytr, input_shape=(30,), num_classes=2, device="cpu", recipe=recipe,
                         arch_params={"widths": [12]})
    served.lethe_recipe = recipe.to_json()  # what the worker attaches from the registry
    req = UnlearnRequest(forget_x=xtr[:5], forget_y=ytr[:5], retain_x=xtr[5:], retain_y=ytr[5:])
    res = get_method("retrain")(served, req)
    expected = train_model("mlp", xtr[5:], ytr[5:], input_shape=(30,), num_classes=2, device="cpu", recipe=recipe,
                           arch_params={"widths": [12]})
    assert res.model.body[0].out_features == 12
    assert all(torch.equal(a, b) for a, b in zip(res.model.parameters(), expected.parameters()))


def _doc_plugin():
    """The minimal plug-in of docs/own-models.md, executed as the docs show it."""
    import os
    import re

    with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "own-models.md")) as f:
        doc = f.read()
    code = re.search(r"this block runs in `tests/unit/test_architectures.py`\):\n\n```python\n(.*?)```", doc, re.S)
    ns: dict = {}
    exec(compile(code.group(1), "docs/own-models.md", "exec"), ns)  # noqa: S102 - our own docs
    return ns["ResidualMLP"]


def test_the_docs_minimal_plugin_keeps_the_contract_with_its_own_head_name():
    from models.unlearn import UnlearnRequest, get_method

    cls = _doc_plugin()
    arch = A.from_module_class("residual_mlp", cls)
    assert arch.inputs == "tabular" and set(arch.params) == {"hidden"}
    net = cls((30,), 2, hidden=16)
    A.check_contract("residual_mlp", net, torch.zeros(2, 30), 2)
    assert A.head_of(net) is net.classifier and "classifier.weight" in net.state_dict()
    # weights trained elsewhere load under their own names; without lethe_head the head is not found
    cls((30,), 2, hidden=16).load_state_dict(net.state_dict(), strict=True)
    unnamed = type("Unnamed", (cls,), {"lethe_head": "head"})((30,), 2, hidden=16)
    with pytest.raises(A.ArchitectureError, match="'head' is not an nn.Linear"):
        A.check_contract("unnamed", unnamed, torch.zeros(2, 30), 2)
    # trained as a user would, then unlearned: the tail phase and PUMA's head patch use 'classifier'
    xtr, ytr, xte, yte = _breast_cancer()
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        idx = torch.randint(0, len(xtr), (64,))
        loss = torch.nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    assert accuracy(net, xte, yte) > 85
    fx, fy = xtr[:3], ytr[:3]
    req = UnlearnRequest(forget_x=fx, forget_y=fy, retain_x=xtr[3:], retain_y=ytr[3:], holdout_x=xte, holdout_y=yte,
                         objective="misclassify")
    new = get_method("lethe")(net, req).model
    assert (new(fx).argmax(1) != fy).all() and accuracy(new, xte, yte) > 80
    patched = get_method("puma")(net, UnlearnRequest(forget_x=fx, forget_y=fy, retain_x=xtr[3:], retain_y=ytr[3:]))
    assert not torch.equal(patched.model.classifier.weight, net.classifier.weight)
    assert torch.equal(patched.model.inp.weight, net.inp.weight)  # only the head is patched


@pytest.mark.parametrize("arch,shape,params", [("cnn", (1, 8, 8), {"width": 2147483647}),
                                               ("mlp", (64,), {"widths": [2147483647]})])
def test_a_huge_architecture_is_refused_before_anything_is_allocated(arch, shape, params):
    """Issue 22 finding 14: the gateway tried to allocate the model and echoed the allocator."""
    from models.architectures import ArchitectureError, validate

    with pytest.raises(ArchitectureError, match="at most 500,000,000") as e:
        validate(arch, shape, 10, params)
    assert "alloc" not in str(e.value).lower()
