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


# The packages top to bottom (docs/architecture.md draws the same list): a module may import its
# own layer and the layers below it, never one above. A pattern is a module, a package (its
# modules too), ``=name`` (that module alone) or ``app.*.router`` (every package's routes: the
# HTTP layer composes domains). A new package must be placed here (test_every_module_has_a_layer).
LAYERS: list[tuple[str, ...]] = [
    ("app.main", "app.cli", "app.bootstrap", "app.models_all", "worker"),   # entry points
    ("app.*.router", "app.registry.weights", "app.registry.orders_router", "app.dashboard", "app.metrics"),  # HTTP
    ("app.deps", "app.security.guard", "=app.security"),                    # HTTP edge (app.security: its face)
    ("app.mirror",),                                                        # the MLflow registry mirror
    ("app.forget",),
    ("app.jobs",),
    ("app.tenants",),
    ("app.registry",),
    ("app.events",),
    ("app.catalogue",),
    ("app.datasets",),
    ("app.security.*",),
    ("app.audit", "app.webhooks"),
    ("app.db", "app.settings", "app.errors", "app.limits", "app.observability", "app.periodic", "app.client",
     "app.objectstore",
     "=app"),                                                               # infrastructure
    ("models",),
]

# Imports that still run upward, each (importing module, imported package or module): to be
# removed, never added to. A new upward import is a design change: move the shared thing down.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = {
    # the request row (app/forget/models.py) and its one status change (app/forget/status.py) are
    # read and moved by the domains below the request domain: jobs complete and fail requests,
    # tenants count them for quotas, webhooks describe them, subject erasure records its group
    ("app.jobs.service", "app.forget.models"), ("app.jobs.service", "app.forget.status"),
    ("app.jobs.sweeper", "app.forget.models"), ("app.jobs.sweeper", "app.forget.status"),
    ("app.jobs.consolidation", "app.forget.models"), ("app.jobs.sweeper", "app.forget.follow"),
    ("app.tenants.service", "app.forget.models"),
    ("app.webhooks.service", "app.forget.models"),
    ("app.catalogue.subjects", "app.forget.models"),
    # a retrain order of the registry queues a job
    ("app.registry.orders", "app.jobs.models"), ("app.registry.orders", "app.jobs.service"),
    # which models use a dataset is a registry question
    ("app.datasets.service", "app.registry.models"), ("app.catalogue.subjects", "app.registry.models"),
    # a key's tenant row is created with the key
    ("app.security.keys", "app.tenants.models"), ("app.security.keys", "app.tenants.service"),
    # a webhook delivery row may carry a registry event
    ("app.webhooks.service", "app.events.models"),
    # a registry event reads the tenants that may see the model
    ("app.events.service", "app.tenants.service"),
}


def _layer(module: str) -> int | None:
    """Index in LAYERS of the pattern that matches ``module`` most specifically: the module
    itself, then a ``*`` pattern, then the longest package (None: not layered)."""
    best, best_rank = None, (-1, -1)
    for i, patterns in enumerate(LAYERS):
        for p in patterns:
            if p.startswith("="):
                ok, rank = module == p[1:], (2, len(p))
            elif "*" in p:
                head, _, tail = p.partition("*")
                middle = module[len(head):len(module) - len(tail)]
                ok = module.startswith(head) and module.endswith(tail) and bool(middle) and "." not in middle
                rank = (1, len(p))
            else:
                ok = module == p or module.startswith(p + ".")
                rank = (2 if module == p else 0, len(p))
            if ok and rank > best_rank:
                best, best_rank = i, rank
    return best


def _upward() -> set[tuple[str, str]]:
    """(importer, imported) for every import from a layer to one above it."""
    out = set()
    for name, (project, _) in _graph().items():
        a = _layer(name)
        for dep in project:
            b = _layer(dep)
            if a is not None and b is not None and b < a:
                out.add((name, dep))
    return out


def _excused(edge: tuple[str, str]) -> bool:
    importer, imported = edge
    return any(importer == m and (imported == t or imported.startswith(t + ".")) for m, t in KNOWN_EXCEPTIONS)


def test_every_module_has_a_layer():
    missing = sorted(n for n in _graph() if n.split(".")[0] in ("app", "worker", "models") and _layer(n) is None)
    assert not missing, f"modules outside LAYERS: {missing}"


def test_imports_point_down_the_layers():
    bad = sorted(e for e in _upward() if not _excused(e))
    assert not bad, "imports that run up the layers (move what both need down): " + ", ".join(f"{a} -> {b}" for a, b in bad)


def test_known_exceptions_are_still_needed():
    """An exception that no import uses any more is removed from the list, so it cannot come back."""
    up = _upward()
    stale = sorted(x for x in KNOWN_EXCEPTIONS if not any(_excused(e) and e[0] == x[0] and
                                                            (e[1] == x[1] or e[1].startswith(x[1] + ".")) for e in up))
    assert not stale, f"known exceptions no import needs: {stale}"


def test_the_layer_check_sees_an_upward_import():
    assert _layer("app.forget.router") == 1 and _layer("app.forget.service") > _layer("app.deps")
    assert _layer("app") == _layer("app.db") and _layer("app.nothing_yet") is None  # a new package is placed
    assert _layer("app.security.guard") == 2 and _layer("app.security.keys") > _layer("app.datasets.store")
    assert _layer("app.security") == 2
    assert _layer("app.jobs.service") < _layer("app.registry.service") < _layer("app.db")
    assert _layer("worker.driver") == 0 and _layer("models.unlearn.lethe") == len(LAYERS) - 1
