"""docs/architecture.md names modules and functions as they are: every backticked file path
(``app/x.py``, ``app/x.py::name``, ``app/x.py::Class.method``) and dotted module path
(``app.x.y``) it names must exist, and it lists every scope an API key can hold. Read from
the source (``ast``), so nothing is imported."""
from __future__ import annotations

import ast
import functools
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "architecture.md")
PACKAGES = ("app", "worker", "models", "bench", "migrations", "tests")


@functools.cache
def _defined(path: str) -> dict[str, set[str]]:
    """Top-level names of a file -> the names defined inside each (class members)."""
    tree = ast.parse(open(path).read(), path)
    out: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = {n.name for n in getattr(node, "body", []) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            inner |= {t.id for n in getattr(node, "body", []) if isinstance(n, (ast.Assign, ast.AnnAssign))
                      for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
            out[node.name] = inner
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Name):
                    out[t.id] = set()
    return out


def _check_path(ref: str) -> str | None:
    """None when ``ref`` (``dir/``, ``file.py``, ``file.py::name[.member]``) exists, else why not."""
    path, _, name = ref.partition("::")
    full = os.path.join(ROOT, path)
    if "*" in path:
        return None if any(os.path.exists(os.path.join(d, path.split("*/")[-1]))
                           for d in _glob_dirs(path.split("*")[0])) else f"{path}: no such file"
    if not os.path.exists(full):
        return f"{path}: no such file or directory"
    if not name:
        return None
    top, _, member = name.partition(".")
    names = _defined(full)
    if top not in names:
        return f"{path}: defines no {top!r}"
    if member and member not in names[top]:
        return f"{path}: {top} has no {member!r}"
    return None


def _glob_dirs(prefix: str) -> list[str]:
    base = os.path.join(ROOT, prefix)
    return [os.path.join(base, d) for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))]


def _check_dotted(ref: str) -> str | None:
    """``a.b.c[.name]``: the longest prefix that is a module or package, then a name it defines."""
    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        base = os.path.join(ROOT, *parts[:i])
        for path in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.exists(path):
                rest = parts[i:]
                if not rest:
                    return None
                if len(rest) > 2 or rest[0] not in _defined(path):
                    return f"{ref}: {'.'.join(parts[:i])} defines no {rest[0]!r}"
                if len(rest) == 2 and rest[1] not in _defined(path)[rest[0]]:
                    return f"{ref}: {rest[0]} has no {rest[1]!r}"
                return None
    return f"{ref}: no such module"


def references(text: str) -> list[str]:
    """The module and file references of a text: backticked ones (other code spans are
    ignored) and the paths in its fenced blocks (the package drawing)."""
    out = []
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for block in re.findall(r"```(.*?)```", text, flags=re.S):
        spans += [w for w in block.split() if "/" in w]
    for span in spans:
        span = span.strip()
        if re.fullmatch(r"[\w./*-]+\.py(::[\w.]+)?|[\w/*-]+/", span) and span.split("/")[0] in PACKAGES:
            out.append(span)
        elif re.fullmatch(r"(app|worker|models|bench)(\.\w+)+", span) and not span.endswith(".py"):
            out.append(span)
    return out


def problems(text: str) -> list[str]:
    bad = []
    for ref in references(text):
        why = _check_path(ref) if ("/" in ref or ref.endswith(".py") or "::" in ref) else _check_dotted(ref)
        if why:
            bad.append(why)
    return bad


def test_every_module_and_function_the_architecture_names_exists():
    text = open(DOC).read()
    assert len(references(text)) > 60  # the page names what it describes
    bad = problems(text)
    assert not bad, "docs/architecture.md names what does not exist:\n" + "\n".join(bad)


def test_the_architecture_lists_every_scope():
    tree = ast.parse(open(os.path.join(ROOT, "app", "security", "scopes.py")).read())
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
              for t in n.targets if isinstance(t, ast.Name)}
    scopes = next(n.value for n in tree.body if isinstance(n, ast.AnnAssign) and n.target.id == "SCOPES")
    names = [consts[e.id] for e in scopes.elts]
    text = open(DOC).read()
    missing = [s for s in names if f"`{s}`" not in text]
    assert not missing, f"docs/architecture.md does not list the scopes {missing}"


def test_the_check_fails_on_what_does_not_exist():
    assert problems("`worker/driver.py::execute_job` `app.jobs.planner.plan` `app/forget/`") == []
    assert problems("`worker/driver.py::_instance_wise`") == ["worker/driver.py: defines no '_instance_wise'"]
    assert problems("`worker/lease.py::Lease.nope`") == ["worker/lease.py: Lease has no 'nope'"]
    assert problems("`app/nothing.py`") and problems("`app.jobs.nothing`") and problems("`app.jobs.planner.nope`")
    # settings, events and a file's generic name are not module paths
    assert problems("`LETHE_JOB_LEASE_S` `forget.received` `models.py`") == []
