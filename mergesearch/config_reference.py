"""The configuration reference, generated from the schema: every field of ``SearchConfig`` and of each
section below it, with its type, constraints, default and description (the field's docstring).

Written from the pydantic models themselves, so the docs cannot drift from what ``config check`` accepts:
the docs site renders it (docs/hooks/render.py) and a test checks that it names every field.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mergesearch.config import SearchConfig

_CONSTRAINTS = {
    "ge": "≥",
    "gt": ">",
    "le": "≤",
    "lt": "<",
    "min_length": "length ≥",
    "max_length": "length ≤",
}


def sections(model: type[BaseModel] = SearchConfig, path: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """``(dotted path, model)`` for ``model`` and every model reachable through its fields, depth first:
    ``models.experts[]`` for a list's items, ``merge.bounds.<name>`` for a mapping's values."""
    yield path, model
    for name, field in model.model_fields.items():
        for suffix, inner in _models_in(field.annotation):
            yield from sections(inner, f"{path}.{name}{suffix}" if path else f"{name}{suffix}")


def _models_in(annotation: Any, suffix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield suffix, annotation
    elif origin is list:
        yield from _models_in(get_args(annotation)[0], suffix + "[]")
    elif origin is dict:
        yield from _models_in(get_args(annotation)[1], suffix + ".<name>")
    elif origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _models_in(arg, suffix)


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: ``int``, ``"a" | "b"``, ``list of str``, ``section``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}"
    if origin is not None and hasattr(annotation, "__metadata__"):  # Annotated[float, Field(ge=0)]
        return type_name(args[0])
    return getattr(annotation, "__name__", str(annotation))


def constraints(field: FieldInfo) -> str:
    """The field's bounds and pattern as a reader writes them: ``≥ 1``, ``> 0, ≤ 1``."""
    found = []
    for item in field.metadata:
        for attribute, symbol in _CONSTRAINTS.items():
            value = getattr(item, attribute, None)
            if value is not None:
                found.append(f"{symbol} {value}")
        if getattr(item, "pattern", None):
            found.append(f"matches `{item.pattern}`")
    return ", ".join(found)


def default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(its defaults)"
    return f"`{json.dumps(value)}`"


def describe(field: FieldInfo) -> str:
    return " ".join((field.description or "").split())


def render() -> str:
    """The reference as Markdown: one heading per section, one table row per field."""
    out = []
    for path, model in sections():
        heading = f"`{path}`" if path else "Top level"
        out += [f"## {heading}", ""]
        doc = " ".join((model.__doc__ or "").split())
        if path and doc:
            out += [doc, ""]
        out += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            kind = type_name(field.annotation)
            limits = constraints(field)
            kind = f"{kind} ({limits})" if limits else kind
            out.append(f"| `{name}` | {kind} | {default(field)} | {describe(field)} |")
        out.append("")
    return "\n".join(out)
