"""The retrain_like objective's stopping rule (metrics.RetrainLikeTest) fails the original model
and passes a model retrained without D_f; Lethe under that objective passes it and stops there."""
import numpy as np
import pytest
import torch

from models.data import load_dataset
from models.metrics import RetrainLikeTest, logit_confidence
from models.train import train_model
from models.unlearn import UnlearnRequest, get_method


@pytest.fixture(scope="module")
def digits_split():
    d = load_dataset("digits")
    perm = torch.randperm(len(d.x_train), generator=torch.Generator().manual_seed(1))
    fi, ri = perm[:64], perm[64:]
    half = len(d.x_test) // 2

    def fit(x, y):
        return train_model("cnn", x, y, input_shape=d.input_shape, num_classes=10, seed=0, device=torch.device("cpu"))

    return d, fi, ri, (d.x_test[:half], d.y_test[:half]), fit(d.x_train, d.y_train), fit(d.x_train[ri], d.y_train[ri])


def _test_from(model, d, fi, ri, holdout):
    members = ri[:1024]
    return RetrainLikeTest(logit_confidence(model, d.x_train[fi], d.y_train[fi]),
                           logit_confidence(model, d.x_train[members], d.y_train[members]),
                           logit_confidence(model, *holdout))


def test_stopping_rule_fails_the_original_and_passes_the_retrained_model(digits_split):
    d, fi, ri, holdout, original, retrained = digits_split
    test = _test_from(original, d, fi, ri, holdout)
    f = (d.x_train[fi], d.y_train[fi])
    assert test.required > 0
    assert not test.passes(logit_confidence(original, *f), logit_confidence(original, *holdout))
    assert test.passes(logit_confidence(retrained, *f), logit_confidence(retrained, *holdout))


def test_stopping_rule_fails_an_unchanged_model_even_without_a_membership_gap():
    rng = np.random.default_rng(0)
    same = rng.normal(size=500)
    test = RetrainLikeTest(same[:50], same, same)  # forget set drawn from the very same distribution
    assert test.required > 0 and not test.passes(same[:50], same)
    assert test.passes(same[:50] - 1.0, same)       # D_f lost confidence, the rest did not
    assert not test.passes(same[:50] - 1.0, same - 1.0)  # the whole model drifted: not a forgetting


def test_targets_are_the_matching_quantiles_of_unseen_data():
    members, nonmembers = np.arange(100.0), np.arange(100.0) - 10
    test = RetrainLikeTest(np.array([50.0, 90.0]), members, nonmembers)
    assert np.allclose(test.targets(nonmembers), [40.0, 80.0], atol=1.0)
    assert np.allclose(test.targets(nonmembers + 3), [43.0, 83.0], atol=1.0)  # follows the model's drift


def test_lethe_retrain_like_passes_its_test_without_flipping_everything(digits_split):
    d, fi, ri, holdout, original, _ = digits_split
    req = UnlearnRequest(d.x_train[fi], d.y_train[fi], objective="retrain_like", retain_x=d.x_train[ri],
                         retain_y=d.y_train[ri], holdout_x=holdout[0], holdout_y=holdout[1])
    res = get_method("lethe")(original, req)
    s = res.stats
    assert s["converged"] and s["steps"] > 0
    assert s["df_confidence_change"] <= -s["df_drop_required"] < 0 and s["df_confidence_change_raw"] <= 0
    # a retrained model still classifies most of D_f correctly; so must this one
    assert float((res.model(d.x_train[fi]).argmax(1) == d.y_train[fi]).float().mean()) > 0.8


def test_retrain_like_forgets_a_whole_class_as_retraining_does(digits_split):
    # no retained instance of the class: a retrained model cannot predict it, so neither may this one
    d, _, _, holdout, original, _ = digits_split
    gone = d.y_train == 3
    req = UnlearnRequest(d.x_train[gone], d.y_train[gone], objective="retrain_like", retain_x=d.x_train[~gone],
                         retain_y=d.y_train[~gone], holdout_x=holdout[0], holdout_y=holdout[1])
    res = get_method("lethe")(original, req)
    assert res.stats["converged"]
    assert not bool((res.model(d.x_train[gone]).argmax(1) == 3).any())
    keep = d.y_train != 3
    assert float((res.model(d.x_train[keep][:300]).argmax(1) == d.y_train[keep][:300]).float().mean()) > 0.9


def test_a_reference_gap_replaces_the_population_estimate_per_example():
    members, nonmembers = np.arange(100.0), np.arange(100.0) - 10
    test = RetrainLikeTest(np.array([50.0, 90.0]), members, nonmembers, expected_shift=np.array([2.0, 30.0]))
    assert np.allclose(test.targets(nonmembers), [48.0, 60.0])  # each example its own measured gap
    # a negative or zero measured gap still asks for the floor, never for a rise
    floor = RetrainLikeTest(np.array([50.0]), members, nonmembers, expected_shift=np.array([-5.0]))
    assert floor.shift[0] > 0


def test_lethe_aims_at_the_reference_gap_it_is_given(digits_split):
    d, fi, ri, holdout, original, _ = digits_split
    kw = dict(objective="retrain_like", retain_x=d.x_train[ri], retain_y=d.y_train[ri], holdout_x=holdout[0],
              holdout_y=holdout[1])
    with pytest.raises(ValueError, match="reference_gap"):
        UnlearnRequest(d.x_train[fi], d.y_train[fi], reference_gap=torch.ones(3), **kw)
    small = get_method("lethe")(original, UnlearnRequest(d.x_train[fi], d.y_train[fi], reference_gap=torch.full((64,), 0.05), **kw))
    large = get_method("lethe")(original, UnlearnRequest(d.x_train[fi], d.y_train[fi], reference_gap=torch.full((64,), 1.5), **kw))
    assert large.stats["df_drop_expected"] > 10 * small.stats["df_drop_expected"]
    # the larger gap is a larger requirement, and the run meets it (how far past it a step lands
    # varies with the machine's threads, so the two runs' drops are not compared to each other)
    assert large.stats["df_drop_required"] > 10 * small.stats["df_drop_required"]
    assert large.stats["converged"] and large.stats["df_confidence_change"] <= -large.stats["df_drop_required"] < 0


def test_a_forget_set_that_became_more_confident_never_passes():
    # the whole model grew more confident (held-out +0.3) and D_f a little less so (+0.1): the
    # drift-corrected change is -0.2, past the requirement, yet D_f is more confident than before
    members, nonmembers = np.arange(100.0), np.arange(100.0) - 10
    test = RetrainLikeTest(np.array([50.0, 60.0]), members, nonmembers, expected_shift=np.array([0.1, 0.1]))
    after = np.array([50.1, 60.1])
    assert test.drop(after, nonmembers + 0.3) <= -test.required  # what the rule alone accepted
    assert test.raw_change(after) > 0 and not test.passes(after, nonmembers + 0.3)
    # the same drift-corrected change with D_f itself less confident passes
    assert test.passes(np.array([49.9, 59.9]), nonmembers + 0.1)
