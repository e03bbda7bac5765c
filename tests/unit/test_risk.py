"""Per-row membership risk (models/risk.py): the rows a model memorises carry the risk, and the
threshold calibrated from per-pair U-LiRA scores sits where the approximate method starts to
leak more than retraining."""
import numpy as np
import pytest
import torch

from models.metrics import complementary_halves
from models.risk import band_excess, calibrate_threshold, membership_risk, spearman
from models.ulira import pair_scores, ulira_attack


def test_memorised_rows_carry_the_risk():
    # two clean clusters, plus 6 rows carrying the other cluster's label: a model can only get those
    # right by memorising them, so being trained on them moves their confidence most
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (96,), generator=g)
    x = torch.randn(96, 6, generator=g) * 0.5 + (y[:, None].float() * 2 - 1) * 1.5
    y[:6] = 1 - y[:6]

    def fit(xs, ys, seed):  # a small over-parameterised net, full batch: it memorises what it trains on
        torch.manual_seed(seed)
        m = torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(xs), ys).backward()
            opt.step()
        return m.eval()

    r = membership_risk(fit, x, y, n_reference=4, seed=0)
    assert r.risk.shape == (96,) and r.gap.shape == (96,) and r.sd > 0
    assert np.median(r.risk[:6]) > 5 * np.median(r.risk[6:])
    assert len(set(np.argsort(r.risk)[-6:].tolist()) & set(range(6))) >= 3  # half the top six are the memorised rows
    s = r.summary(threshold=float(np.sort(r.risk)[-6]))
    assert s["rows_above_threshold"] == 6 and s["rows"] == 96 and s["reference_models"] == 4


@pytest.mark.parametrize("n", [2, 5])
def test_risk_needs_two_reference_models_per_side(n):
    with pytest.raises(ValueError, match="even and >= 4"):
        membership_risk(lambda *a: None, torch.zeros(8, 2), torch.zeros(8, dtype=torch.long), n_reference=n)


def _scores(effect_above, n_shadows=16, n_x=200, seed=0):
    """Per-pair U-LiRA scores of an exact and an approximate method on the same member matrix:
    the approximate one leaves examples with risk above `effect_above` looking trained on."""
    rng = np.random.default_rng(seed)
    member = complementary_halves(n_x, n_shadows, rng)
    risk = np.linspace(0, 4, n_x)
    base = rng.normal(0, 1, n_x)
    exact = base + rng.normal(0, 0.5, (n_shadows, n_x))
    approx = exact + 2.0 * member * (risk > effect_above)
    return risk, pair_scores(approx, member), pair_scores(exact, member), member


def test_threshold_sits_where_the_approximate_method_leaks():
    risk, (lr_a, ok), (lr_e, _), member = _scores(effect_above=3.0)
    fit = calibrate_threshold(risk, lr_a, lr_e, member, ok)
    assert 2.9 <= fit["threshold"] <= 3.1, fit["threshold"]
    assert all(b["excess"] > 0.05 for b in fit["bands"] if b["lo"] >= fit["threshold"])
    assert all(abs(b["excess"]) <= 0.05 for b in fit["bands"] if b["hi"] <= fit["threshold"])
    bands = band_excess(risk, lr_a, lr_e, member, ok, [0, 3.0, 4.01])
    assert abs(bands[0]["excess"]) < 0.05 and bands[1]["excess"] > 0.3


def test_no_threshold_when_nothing_leaks():
    risk, (lr_a, ok), (lr_e, _), member = _scores(effect_above=99)
    assert calibrate_threshold(risk, lr_a, lr_e, member, ok)["threshold"] == float("inf")
    risk, (lr_a, ok), (lr_e, _), member = _scores(effect_above=-1)  # everything leaks: every row goes exact
    assert calibrate_threshold(risk, lr_a, lr_e, member, ok)["threshold"] == 0.0


def test_pair_scores_are_what_the_attack_pools():
    risk, (lr_a, ok), _, member = _scores(effect_above=3.0)
    rng = np.random.default_rng(0)
    phi = rng.normal(size=member.shape) + member
    lr, ok = pair_scores(phi, member)
    r = ulira_attack(phi, member)
    assert r["pairs"] == int(ok.sum())


def test_spearman():
    a = np.arange(10.0)
    assert spearman(a, a ** 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman(a, np.ones(10)))
