"""Finding plug-ins by entry point (architectures, trainers): the way pytest, MLflow and
Celery find third-party code. An operator installs a package whose metadata declares entry
points in a group; the built-in entry is loaded first, whether or not the installed metadata
lists it (an editable install made before it was declared), so a plug-in can never shadow a
built-in name. A plug-in that fails to load, or names something already provided, is
recorded in ``problems()`` and logged; the others still load."""
from __future__ import annotations

import importlib
import logging
import threading
from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


def load_ref(ref: str):
    """The object ``module:attr.attr`` names."""
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


class EntryPointRegistry(Generic[T]):
    """``convert(obj, ep_name, source) -> list[T]`` turns an entry point's object into named
    items (each with ``.name`` and ``.source``); the lookup is cached until ``reload()``."""

    def __init__(self, group: str, builtin: str, convert: Callable[[object, str, str], list[T]], what: str):
        self.group, self.builtin, self.convert, self.what = group, builtin, convert, what
        self.log = logging.getLogger(group)
        self._lock = threading.Lock()
        self._found: dict[str, T] | None = None
        self._problems: dict[str, str] = {}

    def _discover(self) -> tuple[dict[str, T], dict[str, str]]:
        sources = [(ep.name, ep.value, ep.load) for ep in entry_points(group=self.group)]
        sources = ([("builtin", self.builtin, lambda: load_ref(self.builtin))]
                   + [s for s in sources if s[1] != self.builtin])
        found: dict[str, T] = {}
        problems: dict[str, str] = {}
        for ep_name, value, load in sources:
            try:
                items = self.convert(load(), ep_name, value)
            except Exception as e:  # noqa: BLE001 - a broken plug-in must not take the built-ins down
                problems[value] = f"{e.__class__.__name__}: {e}"
                self.log.warning("%s plug-in %s failed to load: %s", self.what, value, problems[value])
                continue
            for item in items:
                if item.name in found:
                    problems[value] = (f"{self.what} {item.name!r} is already provided by "
                                       f"{found[item.name].source}; ignored")
                    self.log.warning("%s", problems[value])
                    continue
                found[item.name] = item
        return found, problems

    def ensure(self) -> dict[str, T]:
        with self._lock:
            if self._found is None:
                self._found, self._problems = self._discover()
            return self._found

    def reload(self) -> None:
        """Forget the cached lookup (after installing a plug-in into a running process; tests)."""
        with self._lock:
            self._found = None

    def problems(self) -> dict[str, str]:
        self.ensure()
        return dict(self._problems)
