"""Every plug-in family's registry, declared once, at the bottom of the layers.

A registry maps names to entries and refuses a second entry under a taken name (lm-eval's task registry
and mergekit's merge methods work this way). The families live here, not in the layers that fill them,
so that the config can check a name against a family without importing the layer above it.

Entries arrive by import: the package's own modules and users' plug-ins are named in the
``mergesearch.plugins`` entry-point group (``pyproject.toml``), and a config may name more modules
(``plugins:``). A miss loads the entry points once and looks again, so a Ray worker process that never
imported a plug-in's module still finds its entries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from mergesearch.errors import UserError

T = TypeVar("T")
ENTRY_POINT_GROUP = "mergesearch.plugins"
_loaded_modules: set[str] = set()
_loading: list[bool] = []
_entry_points_loaded: list[bool] = []


def load_plugins(modules: Iterable[str] = ()) -> None:
    """Import every ``mergesearch.plugins`` entry point (scanned once per process: a scan costs
    milliseconds, and registries are iterated per trial) and the named plug-in modules. A call made while
    a plug-in module is being imported (a registry lookup at import time) returns at once."""
    if _loading or (_entry_points_loaded and not modules):
        return
    _loading.append(True)
    try:
        if not _entry_points_loaded:
            for point in entry_points(group=ENTRY_POINT_GROUP):
                _import(point.value, f"entry point {point.name!r}")
            _entry_points_loaded.append(True)
        for module in modules:
            _import(module, "plugins")
    finally:
        _loading.clear()


def _import(module: str, field: str) -> None:
    if module in _loaded_modules:
        return
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"{field}: cannot import plug-in module {module!r} ({err})") from None
    _loaded_modules.add(module)


class Registry(Generic[T]):
    """Entries by name; a duplicate name is refused, an unknown name is one line listing the known ones."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add``."""

        def add(entry: T) -> T:
            self.add(name, entry)
            return entry

        return add

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered ({self._entries[name]!r})")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            load_plugins()
        if name not in self._entries:
            raise UserError(f"unknown {self.what} {name!r}; known: {', '.join(self)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(sorted(self._entries))


# The plug-in families. Entries are typed by the layer that fills each one (MergeMethod, SearcherSpec...).
MERGE_METHODS: Registry[Any] = Registry("merge method")
SEARCHERS: Registry[Any] = Registry("searcher")
BACKENDS: Registry[Any] = Registry("backend")
JUDGES: Registry[Any] = Registry("judge")
GENERATORS: Registry[Any] = Registry("generator")
OBJECTIVES: Registry[Any] = Registry("objective")
MODEL_SCHEMES: Registry[Any] = Registry("model scheme")
DATASET_SCHEMES: Registry[Any] = Registry("dataset scheme")
TASK_VECTOR_FORMS: Registry[Any] = Registry("task-vector form")
SETTLE_RULES: Registry[Any] = Registry("early-exit rule")  # by judge kind
LM_EVAL_MODELS: Registry[Any] = Registry("lm-eval model")  # by backend kind
REFUSAL_DETECTORS: Registry[Any] = Registry("refusal detector")  # over-refusal: is a benign reply a refusal
