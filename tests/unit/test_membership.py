"""The per-example membership audit (models/metrics.py): the attack's AUC is 0.5 on identical
distributions, 1 on separable ones, and a real shadow bank tells a model that trained on D_f
from one that never saw it."""
import numpy as np
import torch

from models.metrics import ShadowBank, auc, avg_gap, lira_scores, logit_confidence, tpr_at_fpr
from models.nets import build_model
from models.train import train_model


def test_auc_and_tpr_on_identical_and_separable_scores():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=4000), rng.normal(size=4000)
    assert abs(auc(a, b) - 0.5) < 0.03
    assert abs(tpr_at_fpr(a, b, 0.01) - 0.01) < 0.01
    assert auc(a + 100, b) == 1.0 and tpr_at_fpr(a + 100, b) == 1.0
    assert auc(a - 100, b) == 0.0 and tpr_at_fpr(a - 100, b) == 0.0


def test_likelihood_ratio_prefers_the_nearer_gaussian():
    mu_in, mu_out = np.array([5.0, 5.0]), np.array([1.0, 1.0])
    s = lira_scores(np.array([5.0, 1.0]), mu_in, 1.0, mu_out, 1.0)
    assert s[0] > 0 > s[1] and s[0] == -s[1]


def test_logit_confidence_is_log_odds_of_the_true_label():
    torch.manual_seed(0)
    model = build_model("mlp", (4,), 3).eval()
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    p = torch.softmax(model(x), 1)[torch.arange(5), y].detach().numpy()
    assert np.allclose(logit_confidence(model, x, y), np.log(p / (1 - p)), atol=1e-4)


def test_shadow_bank_separates_trained_on_from_never_seen():
    # random labels: the only way to be confident on an example is to have trained on it
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 12, generator=g), torch.randint(0, 2, (96,), generator=g)

    def fit(xs, ys, seed):
        return train_model("mlp", xs, ys, input_shape=(12,), num_classes=2, seed=seed, epochs=60, batch_size=16, lr=3e-3)

    bank = ShadowBank.train(fit, x, y, n_shadows=8)
    assert bank.member.sum(0).min() == 4  # balanced: every example in exactly half the shadows
    forget, nonmember = np.arange(0, 16), np.arange(64, 96)
    original = fit(x[:64], y[:64], 100)    # trained on D_f = x[:16]
    retrained = fit(x[16:64], y[16:64], 100)
    a_orig = bank.audit(original, (x[forget], y[forget]), forget, (x[nonmember], y[nonmember]), nonmember)
    a_ret = bank.audit(retrained, (x[forget], y[forget]), forget, (x[nonmember], y[nonmember]), nonmember)
    assert a_orig["ulira_auc"] > 0.85
    assert abs(a_ret["ulira_auc"] - 0.5) < 0.2


def test_avg_gap_is_mean_absolute_gap_to_the_mean_retrained_model():
    r = [{"ua": 2.0, "ra": 100.0, "ta": 90.0, "mia_efficacy": 10.0}, {"ua": 4.0, "ra": 100.0, "ta": 92.0, "mia_efficacy": 14.0}]
    m = {"ua": 3.0, "ra": 99.0, "ta": 95.0, "mia_efficacy": 12.0}
    assert avg_gap(m, r) == (0 + 1 + 4 + 0) / 4
    assert np.isnan(avg_gap(m, []))
