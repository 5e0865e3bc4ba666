"""Holding a value to a declared record type (a TypedDict of moe_core.records or
moe_core.verdict_records): exactly its keys, at every depth, and a Literal's values."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from typing_extensions import is_typeddict


def mismatches(value: Any, declared: Any, path: str = "$") -> list[str]:
    """Where `value` departs from `declared`: keys undeclared or missing, a Literal's value
    outside it; [] when it is one of them."""
    origin = get_origin(declared)
    if origin is typing.Annotated:
        return mismatches(value, get_args(declared)[0], path)
    if origin in (Union, types.UnionType):
        options = [option for option in get_args(declared) if option is not type(None)]
        if value is None and len(options) < len(get_args(declared)):
            return []
        found = [mismatches(value, option, path) for option in options]
        return [] if any(not f for f in found) else found[0]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__}, not a list"]
        (item,) = get_args(declared)
        return [m for i, v in enumerate(value) for m in mismatches(v, item, f"{path}[{i}]")]
    if origin is Literal:
        return [] if value in get_args(declared) else [f"{path}: {value!r} not in {declared}"]
    if declared is type(None):
        return [] if value is None else [f"{path}: {value!r}, not null"]
    if is_typeddict(declared):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not a {declared.__name__}"]
        hints = get_type_hints(declared, include_extras=True)
        found = []
        if set(value) != set(hints):
            found.append(
                f"{path} ({declared.__name__}): undeclared {sorted(set(value) - set(hints))}, "
                f"missing {sorted(set(hints) - set(value))}"
            )
        for key in (key for key in hints if key in value):  # in declared order
            found += mismatches(value[key], hints[key], f"{path}.{key}")
        return found
    return []  # a plain value: the types are pydantic's and mypy's business


def assert_is(value: Any, declared: Any) -> None:
    assert mismatches(value, declared) == []


def leaf_paths(declared: Any, prefix: str = "") -> set[str]:
    """The dotted paths of a record's values that are not records themselves (what a sink
    that flattens it can name)."""
    origin = get_origin(declared)
    if origin is typing.Annotated:
        return leaf_paths(get_args(declared)[0], prefix)
    if origin in (Union, types.UnionType):
        return set().union(*(leaf_paths(o, prefix) for o in get_args(declared)))
    if is_typeddict(declared):
        hints = get_type_hints(declared, include_extras=True)
        return set().union(*(leaf_paths(tp, f"{prefix}{key}.") for key, tp in hints.items()))
    return {prefix.removesuffix(".")}
