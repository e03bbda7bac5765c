"""The tables docs/ generates from the code (configuration from Settings, API from the OpenAPI
schema) are what is committed: run `lethe docs` (python -m app.cli docs) after changing a
setting or a route."""
from __future__ import annotations

import os
import re
import shutil

import pytest
from pydantic import Field

from app.cli import docs, main
from app.db import ROOT
from app.settings import Settings


def test_committed_docs_match_settings_and_openapi():
    assert docs.stale_files() == [], "run `lethe docs` (python -m app.cli docs) and commit docs/"


def test_every_setting_and_route_is_in_the_tables():
    table = docs.settings_table()
    for name in Settings.model_fields:
        assert f"| `LETHE_{name.upper()}` |" in table
    for name in ("QUEUE_NAME", "DEMO_SEED", "DEMO_EPOCHS", "EMBEDDED_WORKER"):  # once missing from both tables
        assert f"`LETHE_{name}`" in table
    schema = docs.openapi_schema()
    api = docs.api_table(schema)
    operations = [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops if m in docs.HTTP_METHODS]
    assert len(operations) >= 20 and len(api.splitlines()) == len(operations) + 2
    for method, path in operations:
        assert f"| {method} | `{path}` |" in api
    assert "| GET | `/v1/keys/audit` |" in api and "| open |" in api
    assert re.search(r"\| POST \| `/v1/forget` \| .* \| `forget:write` \| 400 401 403 404 409 413 422 429 503 \|", api)


def test_a_setting_without_description_is_refused():
    class Undocumented(Settings):
        shiny_new_knob: int = 3
        documented: int = Field(default=1, description="has one")

    with pytest.raises(ValueError, match="without a description.*shiny_new_knob"):
        docs.settings_table(Undocumented)


def test_every_lethe_variable_the_code_reads_is_documented():
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        page = f.read()
    names = set()
    for top in ("app", "models", "worker", "bench"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for fn in files:
                if fn.endswith(".py"):
                    with open(os.path.join(dirpath, fn)) as f:
                        names |= {n for n in re.findall(r"\bLETHE_[A-Z][A-Z0-9_]*", f.read()) if not n.endswith("_")}
    assert {"LETHE_DEVICE", "LETHE_URL", "LETHE_API_KEY", "LETHE_BROKER_URL"} <= names
    undocumented = sorted(n for n in names if f"`{n}`" not in page)
    assert undocumented == [], f"add these to docs/configuration.md: {undocumented}"


def test_check_finds_a_stale_table_and_docs_rewrites_only_the_marked_section(tmp_path, capsys, monkeypatch):
    for rel in [*docs.SECTIONS, *docs.PAGES]:
        os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
        shutil.copy(os.path.join(ROOT, rel), tmp_path / rel)
    page = tmp_path / "docs" / "configuration.md"
    original = page.read_text()
    page.write_text(original.replace("| `LETHE_QUEUE_NAME` |", "| `LETHE_QUEUE` |") + "\nhand-written tail\n")
    monkeypatch.setattr(docs, "ROOT", str(tmp_path))
    assert main(["docs", "--check"]) == 1
    assert "stale generated tables in docs/configuration.md" in capsys.readouterr().out
    assert "LETHE_QUEUE` |" in page.read_text()  # --check changes nothing
    assert main(["docs"]) == 0
    assert page.read_text() == original + "\nhand-written tail\n"
    assert main(["docs", "--check"]) == 0
    methods = tmp_path / "docs" / "methods.md"  # a whole generated page
    methods.write_text(methods.read_text().replace("| `sisa` |", "| `sisa2` |"))
    assert main(["docs", "--check"]) == 1 and "docs/methods.md" in capsys.readouterr().out
    assert main(["docs"]) == 0 and methods.read_text() == open(os.path.join(ROOT, "docs", "methods.md")).read()


def test_a_missing_marker_is_an_error():
    with pytest.raises(ValueError, match="has no generated section 'api'"):
        docs.render("# no markers here\n", {"api": "| table |"}, "docs/x.md")
    text = "a\n<!-- BEGIN GENERATED api (note) -->\nold\n<!-- END GENERATED api -->\nb\n"
    assert docs.render(text, {"api": "new"}) == "a\n<!-- BEGIN GENERATED api (note) -->\nnew\n<!-- END GENERATED api -->\nb\n"
