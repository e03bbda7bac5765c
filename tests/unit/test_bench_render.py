"""README's and docs/benchmarks.md's instance-wise tables are rendered from
bench/results/instance.json (bench/render.py): they cannot drift from the rows."""
from bench import render
from bench.instance import forget_split
from models.data import load_dataset


def _row(method, seed, auc, ret_auc, gap, conv=True, scenario="8"):
    return {"dataset": "digits", "scenario": scenario, "k": 8, "seed": seed, "method": method, "ulira_auc": auc,
            "retrain_ulira_auc": ret_auc, "avg_gap": gap, "speedup": 5.0, "retrain_seconds": 3.0,
            "converged": conv, "train_seed": 0, "ulira_tpr_at_1fpr": 0.01}


def test_rendered_blocks_match_the_results_file():
    assert render.main(["--check"]) == 0, "run `python -m bench.render` after a benchmark run"


def test_default_table_names_seeds_and_flags_misses_and_non_convergence():
    doc = {"machine": "m", "default_method": "lethe_retrain_like", "rows": [
        _row("retrain", 0, 0.5, 0.5, 1.0), _row("noop", 0, 0.6, 0.5, 2.0),
        _row("lethe_retrain_like", 0, 0.52, 0.5, 0.5), _row("lethe_retrain_like", 2, 0.60, 0.5, 0.9, conv=False)]}
    text = render.render_text("<!-- render:instance-default -->\nold\n<!-- /render:instance-default -->", doc)
    line = [x for x in text.splitlines() if x.startswith("| digits")][0]
    assert "| 0,2 |" in line and "+0.060 (+0.100)" in line and "| no |" in line and "1/2 |" in line
    assert "old" not in text
    methods = render.methods_table(doc)
    assert "1/2✗" in methods and "`noop`" in methods


def test_scenarios_draw_the_forget_set_they_name():
    d = load_dataset("digits")
    fi, ri = forget_split(d, "class", 0)
    assert len(set(d.y_train[fi].tolist())) == 1 and len(fi) + len(ri) == len(d.x_train)
    assert not set(d.y_train[ri].tolist()) & set(d.y_train[fi].tolist())
    fi, _ = forget_split(d, "10pct", 1)
    assert len(fi) == round(0.1 * len(d.x_train))
    assert forget_split(d, "8", 0)[0].tolist() != forget_split(d, "8", 1)[0].tolist()  # seeds draw different sets
