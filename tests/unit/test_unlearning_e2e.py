"""End-to-end check of the ML core on real data: forgotten instances end misclassified,
test accuracy holds (within 2 points), metrics are finite."""
import math

import pytest
import torch

from models.data import load_dataset
from models.metrics import evaluate
from models.train import accuracy, predict, train_model
from models.unlearn import UnlearnRequest, get_method


@pytest.mark.slow
def test_lethe_forgets_a_handful_of_digits_and_keeps_test_accuracy():
    d = load_dataset("digits")
    model = train_model("cnn", d.x_train, d.y_train, input_shape=d.input_shape, num_classes=10, seed=0,
                        device=torch.device("cpu"))
    g = torch.Generator().manual_seed(7)
    perm = torch.randperm(len(d.x_train), generator=g)
    fi, ri = perm[:5], perm[5:]
    forget, retain = (d.x_train[fi], d.y_train[fi]), (d.x_train[ri], d.y_train[ri])
    before_pred = predict(model, forget[0])
    ta_before = accuracy(model, d.x_test, d.y_test)
    res = get_method("lethe")(model, UnlearnRequest(*forget, objective="misclassify", retain_x=retain[0], retain_y=retain[1]))
    m = evaluate(res.model, forget=forget, retain=retain, test=(d.x_test, d.y_test), original_pred=before_pred)
    assert m["ua"] == 100.0 and m["flip_rate"] == 100.0
    assert m["ta"] >= ta_before - 2.0, m
    assert all(math.isfinite(v) for v in m.values())
