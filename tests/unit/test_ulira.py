"""Full U-LiRA (models/ulira.py): the attack is blind on identical worlds, catches unlearned
examples that still look trained on *and* ones pushed further than never-seen ones are, and on a
model that memorises, run through real training, it tells no-op from retraining."""
import numpy as np
import pytest
import torch

from models.train import train_model
from models.metrics import complementary_halves
from models.ulira import run_ulira, train_shadows, ulira_attack


def _worlds(shift, n_shadows=16, n_targets=64, seed=0):
    rng = np.random.default_rng(seed)
    member = complementary_halves(n_targets, n_shadows, rng)
    base = rng.normal(3.0, 2.0, size=n_targets)          # per-example difficulty
    phi = base + rng.normal(0, 0.5, size=(n_shadows, n_targets)) + shift * member
    return phi, member


def test_identical_worlds_give_chance():
    aucs = [ulira_attack(*_worlds(0.0, seed=s))["ulira_auc"] for s in range(5)]
    assert abs(np.mean(aucs) - 0.5) < 0.05


@pytest.mark.parametrize("shift", [+1.5, -1.5])
def test_under_and_over_unlearning_both_stand_out(shift):
    # +: unlearned examples still more confident than never-seen (under-unlearning)
    # -: pushed below where never-seen examples sit (over-unlearning: the Streisand effect)
    r = ulira_attack(*_worlds(shift))
    assert r["ulira_auc"] > 0.9 and r["ulira_tpr_at_1fpr"] > 0.2
    assert r["pairs"] == 16 * 64


def test_complementary_halves_balance_every_target():
    m = complementary_halves(10, 8, np.random.default_rng(0))
    assert (m.sum(0) == 4).all() and (m[0] == ~m[1]).all()
    with pytest.raises(ValueError, match="even"):  # leave-one-out needs both worlds among the others
        train_shadows(lambda x, y, s: None, (torch.zeros(4, 2), torch.zeros(4)), (torch.zeros(4, 2), torch.zeros(4)), 5)


@pytest.mark.slow
def test_noop_is_caught_and_retraining_is_not_on_a_memorising_model():
    # random labels: confidence on an example comes only from having trained on it
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(112, 12, generator=g), torch.randint(0, 2, (112,), generator=g)
    base, targets = (x[:80], y[:80]), (x[80:], y[80:])

    def fit(xs, ys, seed):
        return train_model("mlp", xs, ys, input_shape=(12,), num_classes=2, seed=seed, epochs=60, batch_size=16, lr=3e-3)

    shadows = train_shadows(fit, base, targets, n_shadows=8, seed=0)
    assert all(len(shadows.forget(i)[0]) == 16 for i in range(8))
    noop = run_ulira(shadows, lambda m, forget, retain, s: m)
    retrain = run_ulira(shadows, lambda m, forget, retain, s: fit(*retain, s))
    assert noop["ulira_auc"] > 0.8
    assert abs(retrain["ulira_auc"] - 0.5) < 0.15
