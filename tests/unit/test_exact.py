"""Exact unlearning (SISA, ARCANE) and PUMA, on digits: fast, CPU, deterministic."""
import os

import pytest
import torch
from torch import nn

from models.data import load_dataset
from models.unlearn import UnlearnRequest, get_method
from models.unlearn.arcane import kcenter, train_arcane
from models.unlearn.puma import ce_objective, puma_delta
from models.unlearn.shards import (DirStore, ExactConfig, MemoryStore, data_from, load_bundle, save_member,
                                   stage_keys, stale_keys, train_member, write_manifest)
from models.unlearn.sisa import partition, train_sisa
from models.train import accuracy


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _config(kind="sisa", shards=3, slices=3, epochs=2, **kw):
    d = load_dataset("digits")
    return ExactConfig(kind=kind, arch="mlp", dataset="digits", input_shape=d.input_shape, classes=d.classes,
                       shards=shards, slices=slices, epochs=epochs, **kw)


def _request(model, ds, forget_ids):
    keep = [i for i in ds.ids_train if i not in set(forget_ids)]
    idx, fidx = ds.index_of(keep), ds.index_of(forget_ids)
    return UnlearnRequest(forget_x=ds.x_train[fidx], forget_y=ds.y_train[fidx], forget_ids=forget_ids,
                          retain_x=ds.x_train[idx], retain_y=ds.y_train[idx], retain_ids=keep)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def sisa_model(digits):
    return train_sisa(_config(), digits.ids_train, digits.x_train, digits.y_train, store=MemoryStore())


def test_partition_is_disjoint_complete_and_balanced(digits):
    plan = partition(digits.ids_train, 5, 4, seed=0)
    flat = [i for shard in plan.slices for s in shard for i in s]
    assert sorted(flat) == sorted(digits.ids_train)
    sizes = [len(p) for p in plan.pool]
    assert max(sizes) - min(sizes) <= 1
    assert all(abs(len(s) - len(p) / 4) <= 1 for p, shard in zip(plan.pool, plan.slices) for s in shard)


def test_sisa_shard_after_deletion_is_bit_identical_to_training_without_it(digits, sisa_model):
    plan = sisa_model.plan
    forget = [plan.slices[0][1][3], plan.slices[0][2][0]]  # shard 0, slices 1 and 2
    result = get_method("sisa")(sisa_model, _request(sisa_model, digits, forget))
    new = result.model
    assert result.stats["retrained_members"] == 1 and result.stats["affected_members"] == "0"
    assert all(i not in new.plan.locate() for i in forget)
    # shard 0 trained from scratch (empty checkpoint store) on its slices without the two ids
    keep = [i for i in digits.ids_train if i not in forget]
    data = data_from(keep, digits.x_train[digits.index_of(keep)], digits.y_train[digits.index_of(keep)])
    scratch, st = train_member(new.config, 0, new.plan.slices[0], data, MemoryStore())
    assert st["reused_slices"] == 0
    assert _same(new.members[0], scratch)            # bit-identical, not just close
    assert not _same(new.members[0], sisa_model.members[0])
    for m in (1, 2):                                   # untouched shards are the same weights
        assert _same(new.members[m], sisa_model.members[m])


def test_sisa_reuses_untouched_slice_checkpoints(digits, sisa_model):
    plan = sisa_model.plan
    sisa = get_method("sisa")
    # R=3: a deletion in slice 1 retrains stages 1 and 2 and reuses stage 0
    r = sisa(sisa_model, _request(sisa_model, digits, [plan.slices[1][1][0]])).stats
    assert (r["retrained_members"], r["retrained_slices"], r["reused_slices"]) == (1, 2, 1)
    # a deletion in the last slice retrains that stage only
    r = sisa(sisa_model, _request(sisa_model, digits, [plan.slices[2][2][5]])).stats
    assert (r["retrained_slices"], r["reused_slices"]) == (1, 2)
    # one id in slice 0 of shard 0 and one in slice 2 of shard 2: two shards, 3 + 1 stages
    r = sisa(sisa_model, _request(sisa_model, digits, [plan.slices[0][0][0], plan.slices[2][2][0]])).stats
    assert (r["retrained_members"], r["retrained_slices"], r["reused_slices"]) == (2, 4, 2)


def test_sisa_aggregates_by_vote_or_mean_softmax(digits, sisa_model):
    soft = accuracy(sisa_model, digits.x_test, digits.y_test)
    vote = accuracy(sisa_model.with_members({}, sisa_model.plan, aggregation="vote"), digits.x_test, digits.y_test)
    assert soft > 75 and vote > 70, (soft, vote)  # 3 shards of ~480 digits, 2 epochs each


def test_bundle_round_trip_checks_every_member(tmp_path, sisa_model, digits):
    members = []
    for m, net in enumerate(sisa_model.members):
        sha = save_member(net, str(tmp_path / "members" / f"{m}.safetensors"), sisa_model.config, m)
        members.append({"file": f"members/{m}.safetensors", "sha256": sha})
    write_manifest(str(tmp_path / "bundle.json"), sisa_model.config, sisa_model.plan, members)
    loaded, meta = load_bundle(str(tmp_path / "bundle.json"))
    assert meta["kind"] == "sisa" and all(_same(a, b) for a, b in zip(loaded.members, sisa_model.members))
    assert torch.equal(loaded(digits.x_test[:20]), sisa_model(digits.x_test[:20]))
    with open(tmp_path / "members" / "1.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x00\x00\x01")
    with pytest.raises(ValueError, match="sha256"):
        load_bundle(str(tmp_path / "bundle.json"))


def test_dir_store_names_checkpoints_by_hash(tmp_path, digits):
    cfg = _config(shards=2, slices=2, epochs=1)
    store = DirStore(str(tmp_path / "slices"))
    model = train_sisa(cfg, digits.ids_train[:200], digits.x_train[:200], digits.y_train[:200], store=store)
    assert len(os.listdir(tmp_path / "slices")) == 4  # S x R stage checkpoints, one file each
    again, st = train_member(cfg, 0, model.plan.slices[0], data_from(digits.ids_train[:200], digits.x_train[:200],
                                                                     digits.y_train[:200]), store)
    assert st["retrained_slices"] == 0 and _same(again, model.members[0])
    # after deleting an id of slice 1 of shard 0, the stage checkpoints that saw it are stale
    gone = model.plan.slices[0][1][0]
    new_plan, affected = get_method("sisa").plan_deletion(cfg, model.plan, [gone], None)
    stale = stale_keys(cfg, model.plan, new_plan, affected)
    assert stale == [stage_keys(cfg, 0, model.plan.slices[0])[1]]
    assert stage_keys(cfg, 0, new_plan.slices[0])[0] == stage_keys(cfg, 0, model.plan.slices[0])[0]


@pytest.fixture(scope="module")
def arcane_model(digits):
    cfg = _config(kind="arcane", shards=10, slices=2, epochs=8, rho=0.7, lr=3e-3)
    return train_arcane(cfg, digits.ids_train, digits.x_train, digits.y_train, store=MemoryStore())


def test_arcane_retrains_only_the_deleted_class_sub_model(digits, arcane_model):
    plan = arcane_model.plan
    victim = plan.slices[3][1][0]  # a selected instance of class 3, in its last block
    assert int(digits.y_train[digits.index_of([victim])][0]) == 3
    result = get_method("arcane")(arcane_model, _request(arcane_model, digits, [victim]))
    new = result.model
    assert result.stats["affected_members"] == "3" and result.stats["retrained_members"] == 1
    for m in range(10):
        assert _same(new.members[m], arcane_model.members[m]) == (m != 3)
    # exact: sub-model 3 equals the one trained from scratch on class 3 without the victim
    keep = [i for i in digits.ids_train if i != victim]
    data = data_from(keep, digits.x_train[digits.index_of(keep)], digits.y_train[digits.index_of(keep)])
    scratch, _ = train_member(new.config, 3, new.plan.slices[3], data, MemoryStore())
    assert _same(new.members[3], scratch)


def test_arcane_unselected_deletion_needs_no_retraining(digits, arcane_model):
    plan = arcane_model.plan
    selected = {i for s in plan.slices[5] for i in s}
    unselected = [i for i in plan.pool[5] if i not in selected]
    assert unselected, "rho < 1 leaves some instances out"
    result = get_method("arcane")(arcane_model, _request(arcane_model, digits, unselected[:1]))
    assert result.stats["retrained_members"] == 0
    assert unselected[0] not in result.model.plan.locate()


def test_arcane_sorting_puts_likely_deletions_in_the_last_block(digits):
    cfg = _config(kind="arcane", slices=3, epochs=1)
    ids = digits.ids_train[:300]
    likely = {i: 1.0 for i in ids[:20]}
    model = train_arcane(cfg, ids, digits.x_train[:300], digits.y_train[:300], priority=likely)
    for m, blocks in enumerate(model.plan.slices):
        in_class = [i for i in ids[:20] if i in model.plan.pool[m]]
        if in_class and len(blocks[-1]) >= len(in_class):
            assert set(in_class) <= set(blocks[-1])


def test_arcane_ensemble_classifies(digits, arcane_model):
    assert accuracy(arcane_model, digits.x_test, digits.y_test) > 80


def test_kcenter_is_stable_when_an_unpicked_point_goes():
    z = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    picks = kcenter(z, 40)
    gone = next(i for i in range(200) if i not in picks)
    rest = [i for i in range(200) if i != gone]
    again = [rest[k] for k in kcenter(z[rest], 40)]
    assert again == picks


# --- PUMA on a convex problem: softmax regression on fixed features, theta at the optimum ----

class Linear(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.head = nn.Linear(d, k)

    def features(self, x):
        return x.flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


def _fit(h, y, mu, k, w=None, theta0=None):
    theta = (theta0.clone() if theta0 is not None else torch.zeros(k, h.shape[1], dtype=torch.float64))
    theta.requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ce_objective(theta, h, y, mu, w)
        loss.backward()
        return loss
    for _ in range(2):
        opt.step(closure)
    return theta.detach()


def test_puma_patch_moves_towards_the_exactly_retrained_model(digits):
    n, k = 600, 10
    x, y = digits.x_train[:n].flatten(1).double(), digits.y_train[:n]
    h = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    mu = 1.0
    theta = _fit(h, y, mu, k)
    forget = torch.arange(0, 12)
    keep = torch.arange(12, n)
    retrained = _fit(h[keep], y[keep], mu, k, theta0=theta)   # exact: strictly convex, solved to optimum
    far = (theta - retrained).norm()

    removal, _, _ = puma_delta(theta, h[keep], y[keep], h[forget], y[forget], mu=mu, reweight=False)
    # one Newton step with the original Hessian (the paper's choice): a first-order estimate, 5x closer here
    assert (theta + removal - retrained).norm() < 0.3 * far

    delta, dw, st = puma_delta(theta, h[keep], y[keep], h[forget], y[forget], mu=mu, reweight=True)
    patched = theta + delta
    assert (patched - retrained).norm() < 0.5 * far           # PUMA moves towards the retrained model
    # ... and is the linearisation of the *reweighted* retrain it aims at
    w = torch.cat([torch.zeros(len(forget), dtype=torch.float64), 1 + dw])
    order = torch.cat([forget, keep])
    weighted = _fit(h[order], y[order], mu, k, w=w, theta0=theta)
    assert (patched - weighted).norm() < 0.3 * (theta - weighted).norm()
    # performance criterion (mean retained loss) kept to first order: closer than plain removal
    crit = lambda t: float(nn.functional.cross_entropy(h[keep] @ t.T, y[keep]))  # noqa: E731
    assert abs(crit(patched) - crit(theta)) < abs(crit(theta + removal) - crit(theta))
    assert st["max_abs_weight_change"] <= 1.0


def test_puma_method_patches_only_the_head(digits):
    torch.manual_seed(0)
    model = Linear(64, 10)
    ds = digits
    req = UnlearnRequest(forget_x=ds.x_train[:5], forget_y=ds.y_train[:5], retain_x=ds.x_train[5:300],
                         retain_y=ds.y_train[5:300])
    out = get_method("puma")(model, req)
    assert out.stats["layer"] == "head" and out.stats["patch_norm"] > 0
    assert not torch.equal(out.model.head.weight, model.head.weight)
