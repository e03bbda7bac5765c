"""Trainer plug-ins (models/trainers.py): discovery, parameters, the built-in loop unchanged,
a plug-in training POST-train-style, ``retrain`` and SISA shards, failures refused."""
import pytest
import torch
import torch.nn.functional as F

from models import trainers
from models.data import load_dataset
from models.train import Recipe, RecipeError, accuracy, seed_everything, train_model
from models.nets import build_model
from models.unlearn import UnlearnRequest, get_method
from models.unlearn.shards import ExactConfig, MemoryStore, data_from, train_member
from models.unlearn.sisa import train_sisa

AUG = {"epochs": 4, "lr": 0.01, "label_smoothing": 0.1, "augment": "noise", "noise_std": 0.05}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_discovery_builtin_first_plugins_found_broken_ones_reported(augtrain):
    assert {"lethe", "augmented", "broken", "diverging"} <= set(trainers.names())
    assert trainers.get("lethe").source == trainers.BUILTIN           # the shadowing entry point lost
    probs = trainers.problems()
    assert any("lethe_augtrain_missing" in k for k in probs)
    assert any("already provided" in v for v in probs.values())
    with pytest.raises(trainers.TrainerNotFound, match="unknown trainer 'nope'.*augmented"):
        trainers.get("nope")
    schema = trainers.get("augmented").to_json()["params"]
    assert {"label_smoothing", "augment", "patience"} <= set(schema["properties"])


def test_recipe_names_a_trainer_and_its_schema_validates_the_parameters(augtrain):
    r = Recipe.from_dict({"trainer": "augmented", "trainer_params": {"epochs": 3}, "seed": 4})
    assert r.trainer == "augmented" and r.trainer_params["epochs"] == 3 and r.trainer_params["augment"] == "noise"
    assert Recipe.from_dict(r.to_json()) == r                         # stored JSON round-trips
    assert "trainer" not in Recipe.from_dict({}).to_json()            # the built-in recipe is as before
    with pytest.raises(RecipeError) as e:
        Recipe.from_dict({"trainer": "augmented", "trainer_params": {"label_smoothing": 1.5, "color": "red"}})
    assert len(e.value.problems) == 2 and "label_smoothing" in str(e.value) and "color" in str(e.value)
    with pytest.raises(RecipeError, match="unknown trainer 'gone'"):
        Recipe.from_dict({"trainer": "gone"})
    with pytest.raises(RecipeError, match="built-in trainer 'lethe' takes the recipe's own fields"):
        Recipe.from_dict({"trainer": "lethe", "trainer_params": {"epochs": 3}})


def test_builtin_trainer_is_the_loop_it_replaced(digits):
    """Bit-identical to the loop Lethe trained with before trainers were plug-ins."""
    x, y = digits.x_train[:400], digits.y_train[:400]
    recipe = Recipe(epochs=2, batch_size=32, seed=3)
    new = train_model("mlp", x, y, input_shape=digits.input_shape, num_classes=10, recipe=recipe,
                      device=torch.device("cpu"))
    g = seed_everything(3)
    old = build_model("mlp", digits.input_shape, 10)
    opt = torch.optim.Adam(old.parameters(), lr=1e-3)
    old.train()
    for _ in range(2):
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), 32):
            idx = order[s:s + 32]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(old(x[idx]), y[idx]).backward()
            opt.step()
    assert _same(new, old)
    assert new.lethe_train_metrics == {"epochs": 2, "steps": 2 * 13}


def test_plugin_trains_and_retrain_uses_it(augtrain, digits):
    recipe = Recipe.from_dict({"trainer": "augmented", "trainer_params": {**AUG, "patience": 2}, "seed": 1})
    cpu = torch.device("cpu")
    heldout = (digits.x_test, digits.y_test)
    xs, ys = digits.x_train[:800], digits.y_train[:800]
    a = train_model("mlp", xs, ys, input_shape=digits.input_shape, num_classes=10,
                    recipe=recipe, device=cpu, heldout=heldout)
    b = train_model("mlp", xs, ys, input_shape=digits.input_shape, num_classes=10,
                    recipe=recipe, device=cpu, heldout=heldout)
    assert _same(a, b)                                                # seeded: reproducible
    m = a.lethe_train_metrics
    assert m["best_heldout_accuracy"] > 80 and 1 <= m["epochs_run"] <= 4 and m["final_lr"] < 0.01
    assert accuracy(a, *heldout) > 80
    # retrain: the served model's own trainer, not Lethe's loop
    a.lethe_recipe = recipe.to_json()
    forget, keep = torch.arange(20), torch.arange(20, 800)
    req = UnlearnRequest(forget_x=xs[forget], forget_y=ys[forget], retain_x=xs[keep], retain_y=ys[keep],
                         holdout_x=digits.x_test, holdout_y=digits.y_test)
    res = get_method("retrain")(a, req)
    assert res.stats["trainer"] == "augmented" and res.stats["trainer_metrics"]["steps"] > 0
    assert res.model.lethe_recipe == recipe.to_json()
    again = train_model("mlp", xs[keep], ys[keep], input_shape=digits.input_shape,
                        num_classes=10, recipe=recipe, device=cpu, heldout=heldout)
    assert _same(res.model, again)                                    # exactly what the trainer gives on D_r


def test_sisa_shards_train_with_the_plugin_and_stay_exact(augtrain, digits):
    cfg = ExactConfig(kind="sisa", arch="mlp", dataset="digits", input_shape=digits.input_shape,
                      classes=digits.classes, shards=2, slices=2, epochs=2, trainer="augmented",
                      trainer_params=trainers.get("augmented").validate({**AUG, "epochs": 2}))
    plain = ExactConfig(**{**cfg.__dict__, "trainer": "lethe", "trainer_params": None})
    assert cfg.fingerprint() != plain.fingerprint()                   # no checkpoint reuse across trainers
    assert ExactConfig(**{**plain.__dict__}).fingerprint() == plain.fingerprint()
    ids, x, y = digits.ids_train[:600], digits.x_train[:600], digits.y_train[:600]
    model = train_sisa(cfg, ids, x, y, store=MemoryStore())
    forget = [model.plan.slices[0][1][0]]
    keep = [i for i in ids if i not in forget]
    kidx = [ids.index(i) for i in keep]
    req = UnlearnRequest(forget_x=x[:1], forget_y=y[:1], forget_ids=forget, retain_x=x[kidx], retain_y=y[kidx],
                         retain_ids=keep)
    new = get_method("sisa")(model, req).model
    scratch, _ = train_member(new.config, 0, new.plan.slices[0], data_from(keep, x[kidx], y[kidx]), MemoryStore())
    assert _same(new.members[0], scratch)                             # the plug-in retrain is exact too
    assert accuracy(new, digits.x_test, digits.y_test) > 70


def test_plugin_failures_are_the_plugins_and_nothing_half_trained_comes_back(augtrain, digits):
    x, y = digits.x_train[:200], digits.y_train[:200]
    for name, match in (("broken", "trainer 'broken' .* failed: RuntimeError: out of memory"),
                        ("diverging", "trainer 'diverging' left non-finite weights")):
        with pytest.raises(trainers.TrainerError, match=match):
            train_model("mlp", x, y, input_shape=digits.input_shape, num_classes=10,
                        recipe=Recipe.from_dict({"trainer": name}), device=torch.device("cpu"))
    calls = []
    with pytest.raises(trainers.TrainingCancelled):
        train_model("mlp", x, y, input_shape=digits.input_shape, num_classes=10, device=torch.device("cpu"),
                    recipe=Recipe.from_dict({"trainer": "augmented"}), cancelled=lambda: calls.append(1) or True)
    assert calls == [1]


def test_retrain_starts_from_the_starting_weights_and_refuses_without_them(digits):
    x, y = digits.x_train[:300], digits.y_train[:300]
    base = train_model("mlp", x, y, input_shape=digits.input_shape, num_classes=10, device=torch.device("cpu"),
                       recipe=Recipe(epochs=1, seed=5))
    recipe = Recipe.from_dict({"epochs": 1, "lr": 1e-7, "start": {"model": "base", "version": 1}})
    served = train_model("mlp", x, y, input_shape=digits.input_shape, num_classes=10, device=torch.device("cpu"),
                         recipe=recipe, start=base.state_dict())
    served.lethe_recipe = recipe.to_json()
    req = UnlearnRequest(forget_x=x[:5], forget_y=y[:5], retain_x=x[5:], retain_y=y[5:])
    with pytest.raises(ValueError, match="starting weights were not given"):
        get_method("retrain")(served, req)
    served.lethe_start = base.state_dict()
    new = get_method("retrain")(served, req).model
    assert all(torch.allclose(new.state_dict()[k], base.state_dict()[k], atol=1e-4) for k in base.state_dict())
