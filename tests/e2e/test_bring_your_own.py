"""The bring-your-own walk-through (examples/bring_your_own/walkthrough.py) against a real
gateway in embedded mode: a dataset Lethe does not ship, a model trained outside Lethe in
plain PyTorch, a second one trained by Lethe, one patient forgotten with no model named."""
import importlib.util
import os

import pytest

from .conftest import ROOT, service_env, start_gateway

pytestmark = pytest.mark.slow


def _walkthrough():
    path = os.path.join(ROOT, "examples", "bring_your_own", "walkthrough.py")
    spec = importlib.util.spec_from_file_location("walkthrough", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bring_your_own_dataset_and_model(tmp_path):
    env = service_env(tmp_path, LETHE_BOOTSTRAP_DEMO="false")
    proc, url = start_gateway(env, tmp_path)
    try:
        wt = _walkthrough()
        out = wt.run(url, env["LETHE_BOOTSTRAP_ADMIN_KEY"], str(tmp_path / "work"))
    except Exception:
        print(proc.tail(8000))
        raise
    finally:
        proc.stop()
    models = {m["model"]: m for m in out["certificate"]["models"]}
    assert set(models) == {wt.OWN_MODEL, wt.LETHE_MODEL}
    for name, m in models.items():
        assert (m["version_before"]["version"], m["version_after"]["version"]) == (1, 2)
        assert len(m["version_after"]["sha256"]) == 64 and m["instances"] == len(out["truth"])
        # every one of the patient's rows is now predicted differently from before (misclassify)
        assert all(a != b for a, b in zip(out["after"][name], out["before"][name])), (name, out)
    assert out["signature_ok"] and out["erasure"]["status"] == "completed"
    assert out["certificate"]["subject_ref"] and "patient" not in str(out["certificate"])
