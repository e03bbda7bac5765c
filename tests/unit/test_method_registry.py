"""The method catalogue is the one source of methods, objectives and families: the API's
enums, the registry's families, the CLI's choices and docs/methods.md all follow it."""
from __future__ import annotations

import os
import subprocess
import sys
import typing

import pytest

from models import unlearn
from models.unlearn import registry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_docs_table_matches_the_catalogue():
    with open(os.path.join(ROOT, "docs", "methods.md")) as f:
        assert f.read() == registry.markdown(), "regenerate: python -m models.unlearn > docs/methods.md"


def test_api_cli_and_registry_derive_from_the_catalogue():
    from app.cli import build_parser
    from app.forget.schemas import ForgetCreate
    from app.registry.service import FAMILIES

    assert FAMILIES == unlearn.family_names() == ("instance", "sisa", "arcane")
    fields = ForgetCreate.model_fields
    method_enum = typing.get_args(typing.get_args(fields["method"].annotation)[0])
    assert set(method_enum) == set(unlearn.METHODS)
    assert typing.get_args(fields["objective"].annotation) == unlearn.OBJECTIVES
    parser = build_parser()
    for name in unlearn.method_names():
        assert parser.parse_args(["forget", "--model", "m", "--method", name]).method == name
    for objective in unlearn.OBJECTIVES:
        assert parser.parse_args(["forget", "--model", "m", "--objective", objective]).objective == objective
    with pytest.raises(SystemExit):
        parser.parse_args(["forget", "--model", "m", "--method", "not_a_method"])


def test_every_entry_loads_and_every_family_has_its_default():
    for info in unlearn.METHODS.values():
        assert callable(info.load()), info.name
    for fam in unlearn.FAMILIES.values():
        assert unlearn.methods_for(fam.name)[0] == fam.default_method
        assert unlearn.method_info(fam.default_method).family == fam.name
    sharded = [m for m in unlearn.METHODS.values() if unlearn.get_family(m.family).sharded]
    assert sharded and all(hasattr(m.load(), "plan_deletion") and hasattr(m.load(), "retrain_member")
                           for m in sharded)


def test_choice_resolves_by_retained_data():
    assert unlearn.resolve("instance", has_retained_data=True).name == "lethe"
    assert unlearn.resolve("instance", has_retained_data=False).name == "paper_full"
    assert unlearn.resolve("puma", has_retained_data=True).name == "puma"
    assert unlearn.method_info("instance").objectives == unlearn.OBJECTIVES


def test_register_refuses_bad_entries(monkeypatch):
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    good = dict(family="instance", needs_retained_data=False, exact=False, description="x")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("lethe", "models.unlearn.lethe:lethe", **good)
    with pytest.raises(ValueError, match="unknown model family"):
        registry.register("new", "m:f", **{**good, "family": "nope"})
    with pytest.raises(ValueError, match="subset"):
        registry.register("new", "m:f", objectives=("forget_harder",), **good)
    with pytest.raises(ValueError, match="module:attribute"):
        registry.register("new", "no_colon", **good)
    with pytest.raises(ValueError, match="one-line"):
        registry.register("new", "m:f", **{**good, "description": "two\nlines"})
    with pytest.raises(KeyError, match="unknown unlearning method 'nope'"):
        unlearn.get_method("nope")
    info = registry.register("new", "models.unlearn.paper:paper_ga", **good)
    assert "new" in unlearn.methods_for("instance") and info.load() is unlearn.get_method("paper_ga")


def test_reading_the_catalogue_imports_no_torch():
    """The gateway validates and the CLI parses without loading any method's code."""
    code = ("import sys; from models import unlearn; unlearn.methods_for('sisa'); "
            "import app.forget.schemas, app.cli.forget; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_which_results_must_reach_the_objective():
    """The worker's UA=100 % rule: label objectives, for methods that promise to reach them."""
    assert unlearn.must_reach("lethe", "misclassify") and unlearn.must_reach("paper_ga", "relabel")
    assert not unlearn.must_reach("lethe", "retrain_like")
    assert not any(unlearn.must_reach(m, "misclassify") for m in ("puma", "sisa", "arcane", "retrain"))


def test_a_method_that_does_not_remove_never_serves_a_deletion():
    """PUMA's full U-LiRA AUC is not near retraining's (bench/results/ulira.json, docs/unlearning.md):
    the catalogue says so, its docs table says so, and the planner serves such a request by retraining."""
    from app.jobs.planner import RETRAIN, Facts, plan

    assert not unlearn.method_info("puma").serves_deletions
    assert all(unlearn.method_info(m).serves_deletions for m in ("lethe", "instance", "retrain", "sisa", "arcane"))
    assert "| `puma` |" in registry.markdown() and "no: the planner retrains" in registry.markdown()
    info = unlearn.resolve("puma", has_retained_data=True)
    p = plan(Facts(sharded=False, method=info.name, k=1, has_retained=True, train_seconds=600.0,
                   serves_deletions=info.serves_deletions))
    assert (p.method, p.exact) == (RETRAIN, True) and "not an unlearning method on its own" in p.reason


def test_a_measured_caveat_applies_to_its_kind_of_data_and_is_documented():
    """ARCANE's one-class sub-models cost more accuracy on tabular rows than on images
    (bench/results/exact.json): the catalogue carries the measured sentence for tabular data only,
    docs/methods.md lists it, and a caveat for a kind of data the catalogue does not know is refused."""
    arcane = unlearn.method_info("arcane")
    text = arcane.caveat_for((108,))
    assert text and "adult" in text and "exact.json" in text
    assert arcane.caveat_for((1, 28, 28)) is None and unlearn.method_info("sisa").caveat_for((108,)) is None
    assert f"| `arcane` | tabular | refused | {text} |" in registry.markdown()
    assert arcane.refusal_for((108,)) == text and arcane.refusal_for((1, 28, 28)) is None
    with pytest.raises(ValueError, match="data kind"):
        registry.register("x_caveat", "m:x", family="instance", needs_retained_data=False, exact=False,
                          description="x", caveats={"audio": "?"})
    with pytest.raises(ValueError, match="needs its measured caveat"):  # a refusal always says its measurement
        registry.register("x_caveat", "m:x", family="instance", needs_retained_data=False, exact=False,
                          description="x", not_offered=("tabular",))
    assert "x_caveat" not in unlearn.METHODS
