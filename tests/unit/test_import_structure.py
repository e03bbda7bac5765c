"""Imports point one way: no cycle between files of models/, app/, worker/ (counting the
imports inside functions too: a deferred import still ties two files together), and
models/ imports nothing of the service layers (web, database, queue)."""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("models", "app", "worker")
# what models/ must never import: the layers above it and the libraries they are built on
FORBIDDEN_IN_MODELS = ("app", "worker", "web", "fastapi", "starlette", "uvicorn", "pydantic", "sqlalchemy",
                       "alembic", "psycopg", "psycopg2", "celery", "kombu", "redis", "httpx", "requests")


def _modules() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        for d, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
                    out[rel[:-9] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return out


def _imports(name: str, path: str, known: set[str]) -> tuple[set[str], set[str]]:
    """(project modules imported, top-level names of everything imported) by one file."""
    is_pkg = path.endswith("__init__.py")
    tree = ast.parse(open(path).read(), path)
    project, top = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            top.add(t.split(".")[0])
            while t and t not in known:  # "import a.b.c" of a module we hold, or one of its parents
                t = t.rpartition(".")[0]
            if t and t != name:
                project.add(t)
    return project, top


def _graph():
    mods = _modules()
    return {n: _imports(n, p, set(mods)) for n, p in mods.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_files():
    g = _graph()
    cycles = _cycles({n: project for n, (project, _) in g.items()})
    assert not cycles, f"import cycles: {cycles}"


def test_models_import_no_service_layer():
    bad = {n: sorted(top & set(FORBIDDEN_IN_MODELS)) for n, (_, top) in _graph().items()
           if n.split(".")[0] == "models" and top & set(FORBIDDEN_IN_MODELS)}
    assert not bad, f"models/ must stay plain PyTorch: {bad}"


def test_the_walk_sees_a_cycle_and_a_forbidden_import():
    """The checks above can fail: a planted cycle and a planted import are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    g = _graph()
    assert "app.db" in g["app.forget.service"][0] or "app.db" in g["app.main"][0]
    assert "sqlalchemy" in g["app.db"][1]
