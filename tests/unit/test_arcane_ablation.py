"""The ARCANE ablation's knobs (bench/arcane_ablation.py): the one-class learner's widths travel
in ``arch_params``; the served aggregation is the ensemble's own forward, for the legacy rule
(``mean``) and the default (``raw``)."""
import pytest
import torch

from bench.arcane_ablation import AGGREGATIONS, aggregate, calibrator
from models.data import load_dataset
from models.unlearn.arcane import train_arcane
from models.unlearn.shards import ExactConfig, MemoryStore, build_member


def _cfg(**kw):
    d = load_dataset("digits")
    return d, ExactConfig(kind="arcane", arch="ae1c", dataset="digits", input_shape=d.input_shape, classes=d.classes,
                          shards=d.num_classes, slices=1, epochs=1, **kw)


def test_learner_widths_come_from_arch_params_and_other_keys_are_ignored():
    _, cfg = _cfg(arch_params={"hidden": 8, "code": 3, "depth": 7})
    m = build_member(cfg)
    assert (m.enc[0].out_features, m.enc[2].out_features) == (8, 3)
    _, cfg = _cfg()
    assert build_member(cfg).enc[0].out_features == 64  # a config naming no learner: the legacy 64/16


@pytest.mark.parametrize("served", ["mean", "raw"])
def test_every_aggregation_predicts_every_row_and_the_served_one_is_the_model(served):
    d, cfg = _cfg(arch_params={"hidden": 16, "code": 4}, learner="ae", aggregation=served)
    x, y = d.x_train[:300], d.y_train[:300]
    model = train_arcane(cfg, [str(i) for i in range(len(y))], x, y, store=MemoryStore())
    preds = aggregate(model, x, y, d.x_test[:50], d.y_test[:50])
    assert set(preds) == set(AGGREGATIONS) and all(p.shape == (50,) for p in preds.values())
    # the served aggregation is the model's own forward
    assert torch.equal(preds[served], model(d.x_test[:50]).argmax(1))


def test_the_calibrator_undoes_a_per_class_offset_and_is_deterministic():
    """Scores whose argmax is wrong only because class 1's score is shifted down by 5: the
    logistic regression over the k scores learns the shift back; two fits agree bit for bit."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (600,), generator=g)
    s = torch.randn(600, 3, generator=g) + 3.0 * torch.nn.functional.one_hot(y, 3)
    s[:, 1] -= 5.0
    raw = (s.argmax(1) == y).float().mean()
    cal = calibrator(s, y)
    assert raw < 0.75 and (cal(s).argmax(1) == y).float().mean() > 0.9
    assert torch.equal(cal(s), calibrator(s, y)(s))
