"""``lethe docs``: the tables docs/ generates from the code, so they cannot drift.

- ``docs/configuration.md``, section ``settings``: one row per field of
  ``app.settings.Settings`` (variable, default, its ``Field`` description);
- ``docs/service.md``, section ``api``: one row per operation of the OpenAPI schema
  (method, path, summary, required scopes, error statuses);
- ``docs/methods.md``, the whole page: the method catalogue (``models.unlearn.registry.markdown``,
  also ``python -m models.unlearn``).

A generated section sits between ``<!-- BEGIN GENERATED <name> ... -->`` and
``<!-- END GENERATED <name> -->``; everything outside the markers is written by hand.
``lethe docs`` rewrites the sections in place; ``lethe docs --check`` changes nothing and
exits 1 naming the stale files (``tests/unit/test_docs.py`` runs the same check).
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Callable

from ..client import NEGATIVE, OK
from ..db import ROOT
from .common import Commands

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def register(cmds: Commands) -> None:
    s = cmds.local("docs", cmd_docs, "regenerate the configuration, API and method tables in docs/ from Settings, "
                                     "the OpenAPI schema and the method catalogue")
    s.add_argument("--check", action="store_true", help="change nothing; exit 1 when a committed table is stale")


# --- the tables --------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(value) -> str:
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def settings_table(settings_cls=None) -> str:
    """Every ``LETHE_*`` variable, from ``Settings.model_fields``. A field without a
    description is an error: the table would have a blank where the operator needs a why."""
    from ..settings import Settings

    Settings = settings_cls or Settings
    prefix = Settings.model_config.get("env_prefix", "")
    rows = ["| variable | default | what |", "|---|---|---|"]
    missing = []
    for name, field in Settings.model_fields.items():
        if not field.description:
            missing.append(name)
            continue
        rows.append(f"| `{(prefix + name).upper()}` | {_default(field.get_default(call_default_factory=True))} "
                    f"| {_cell(field.description)} |")
    if missing:
        raise ValueError(f"Settings fields without a description (Field(description=...)): {', '.join(missing)}")
    return "\n".join(rows)


def openapi_schema() -> dict:
    """The schema the gateway serves, from an app built on throwaway storage (nothing runs)."""
    from ..main import create_app
    from ..settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/docs.db", registry_dir=f"{tmp}/registry",
                            data_dir=f"{tmp}/data", broker_url="", bootstrap_demo=False)
        return create_app(settings).openapi()


def api_table(schema: dict | None = None) -> str:
    """One row per operation, in the schema's order."""
    schema = schema or openapi_schema()
    rows = ["| method | path | what | scopes | errors |", "|---|---|---|---|---|"]
    for path, ops in schema["paths"].items():
        for method in HTTP_METHODS:
            op = ops.get(method)
            if op is None:
                continue
            scopes = op.get("x-required-scopes")
            errors = sorted(s for s in op.get("responses", {}) if s[:1] in "45" and s != "500")
            rows.append(f"| {method.upper()} | `{path}` | {_cell(op.get('summary', ''))} "
                        f"| {' or '.join(f'`{s}`' for s in scopes) if scopes else 'open'} "
                        f"| {' '.join(errors) or '-'} |")
    return "\n".join(rows)


def methods_page() -> str:
    from models.unlearn import registry

    return registry.markdown()


# file (relative to the checkout) -> section name -> what generates it
SECTIONS: dict[str, dict[str, Callable[[], str]]] = {
    "docs/configuration.md": {"settings": settings_table},
    "docs/service.md": {"api": api_table},
}
# files generated whole
PAGES: dict[str, Callable[[], str]] = {"docs/methods.md": methods_page}


# --- rewriting the marked sections -------------------------------------------------------------

def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- BEGIN GENERATED {re.escape(name)}\b[^>]*-->\n)(.*?)(<!-- END GENERATED {re.escape(name)} -->)",
                      re.DOTALL)


def render(text: str, sections: dict[str, str], path: str = "?") -> str:
    for name, body in sections.items():
        pattern = _pattern(name)
        if not pattern.search(text):
            raise ValueError(f"{path} has no generated section {name!r} (<!-- BEGIN GENERATED {name} --> ... "
                             f"<!-- END GENERATED {name} -->)")
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(3), text, count=1)
    return text


def stale_files(root: str | None = None, write: bool = False) -> list[str]:
    """The files whose generated sections differ from the code (rewritten when ``write``)."""
    stale = []
    for rel in [*SECTIONS, *PAGES]:
        path = os.path.join(root or ROOT, rel)
        with open(path) as f:
            current = f.read()
        if rel in PAGES:
            wanted = PAGES[rel]()
        else:
            wanted = render(current, {name: gen() for name, gen in SECTIONS[rel].items()}, rel)
        if wanted != current:
            stale.append(rel)
            if write:
                with open(path, "w") as f:
                    f.write(wanted)
    return stale


def cmd_docs(args) -> int:
    stale = stale_files(write=not args.check)
    if args.check:
        if stale:
            print(f"stale generated tables in {', '.join(stale)}: run `lethe docs` (python -m app.cli docs)")
            return NEGATIVE
        print("docs are up to date")
        return OK
    print(f"rewrote {', '.join(stale)}" if stale else "docs are up to date")
    return OK
