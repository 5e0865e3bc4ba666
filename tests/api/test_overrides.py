"""The request bodies' overrides are held to the engine's configs: each override class has
every field of its engine model but the worker's own, of the same JSON type, never looser
than the engine's bounds and within the API's limits; the sweep's space has every
searchable field, of its field's kind. A field added, removed or re-bounded in one place
only fails here."""

from __future__ import annotations

import math
import types
import typing

import annotated_types as at
import pytest
from pydantic import BaseModel

from api.limits import LIMITS, LOWER_LIMITS, WORKER_ONLY
from api.overrides import BaseOverrides, ConfigOverrides, GatingTempScheduleBody
from api.requests import SweepCreate
from api.space import SweepSpace
from moe_core.config import BaseConfig, ExperimentConfig, GatingTempSchedule
from moe_core.search import SEARCHABLE, SweepConfig

PAIRS = [
    (ConfigOverrides, ExperimentConfig),
    (BaseOverrides, BaseConfig),
    (GatingTempScheduleBody, GatingTempSchedule),
]


def _core(annotation):
    """(the JSON-level type, nullable) of an annotation, Annotated and None peeled off."""
    nullable = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            arms = [a for a in typing.get_args(annotation) if a is not type(None)]
            nullable = nullable or len(arms) < len(typing.get_args(annotation))
            if len(arms) != 1:
                return annotation, nullable
            annotation = arms[0]
        elif origin is list:  # list[Annotated[int, ...]] is a list of int
            return list[_core(typing.get_args(annotation)[0])[0]], nullable
        else:
            return annotation, nullable


def _bounds(info) -> dict[str, float]:
    """The numeric and length bounds on a field (nested Annotated included)."""
    found: dict[str, float] = {}

    def visit(items):
        for item in items:
            for name in ("gt", "ge", "lt", "le", "min_length", "max_length"):
                value = getattr(item, name, None)
                if isinstance(item, at.BaseMetadata | object) and value is not None:
                    found[name] = value
            if hasattr(item, "metadata"):
                visit(item.metadata)

    visit(info.metadata)
    annotation = info.annotation
    stack = [annotation]
    while stack:
        node = stack.pop()
        if typing.get_origin(node) is typing.Annotated:
            visit(typing.get_args(node)[1:])
            stack.append(typing.get_args(node)[0])
        elif typing.get_origin(node) is not None and typing.get_origin(node) is not list:
            stack.extend(typing.get_args(node))
    return found


@pytest.mark.parametrize(("body", "engine"), PAIRS, ids=lambda m: m.__name__)
def test_each_override_class_has_every_engine_field_but_the_workers(body, engine):
    assert set(body.model_fields) == set(engine.model_fields) - set(WORKER_ONLY)


@pytest.mark.parametrize(("body", "engine"), PAIRS, ids=lambda m: m.__name__)
def test_each_override_is_of_the_engines_type_and_never_looser(body, engine):
    for name, info in body.model_fields.items():
        theirs = engine.model_fields[name]
        mine_type, mine_null = _core(info.annotation)
        their_type, their_null = _core(theirs.annotation)
        if isinstance(their_type, type) and issubclass(their_type, BaseModel):
            assert issubclass(mine_type, BaseModel), name  # a body model of its own
        else:
            assert mine_type == their_type, (name, mine_type, their_type)
        assert mine_null == their_null, f"{name}: null offered where the engine has none"
        mine, engine_bounds = _bounds(info), _bounds(theirs)
        for kind, value in engine_bounds.items():
            assert kind in mine, f"{name}: the engine's {kind}={value} is not on the override"
            tighter = (
                mine[kind] >= value if kind in ("gt", "ge", "min_length") else mine[kind] <= value
            )
            assert tighter, (name, kind, mine[kind], value)
        if name in LIMITS:
            assert mine.get("le") == LIMITS[name], f"{name}: not bounded by LIMITS"
        if name in LOWER_LIMITS:
            assert mine.get("ge") == LOWER_LIMITS[name], f"{name}: not bounded by LOWER_LIMITS"
        if mine_type is str:
            assert "max_length" in mine, f"{name}: an unbounded string"


@pytest.mark.parametrize(("body", "engine"), PAIRS, ids=lambda m: m.__name__)
def test_each_override_says_what_the_engine_says(body, engine):
    for name, info in body.model_fields.items():
        said = engine.model_fields[name].description
        if said:
            assert (info.description or "").startswith(said.rstrip(".")), name


def test_the_sweep_space_has_every_searchable_field_of_its_kind():
    assert set(SweepSpace.model_fields) == set(SEARCHABLE)
    for name, info in SweepSpace.model_fields.items():
        engine = ExperimentConfig if name in ExperimentConfig.model_fields else BaseConfig
        kind, _ = _core(engine.model_fields[name].annotation)
        arms = [typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
                for a in typing.get_args(_core(info.annotation)[0])] or [_core(info.annotation)[0]]  # fmt: skip
        choice = next(a for a in arms if "choices" in a.model_fields)
        items, _ = _core(choice.model_fields["choices"].annotation)
        assert items == list[kind], name
        ranges = [a for a in arms if "low" in a.model_fields]
        if kind in (int, float):
            (span,) = ranges
            assert _core(span.model_fields["low"].annotation)[0] is kind, name
        else:
            assert not ranges, f"{name}: a range of a {kind}"


def test_a_sweep_body_has_the_engines_fields_and_defaults():
    engine = SweepConfig.model_fields
    assert set(SweepCreate.model_fields) - {"parallel"} == set(engine)
    for name, info in SweepCreate.model_fields.items():
        if name in ("parallel", "space", "base", "overrides"):
            continue
        assert info.default == engine[name].default, name


def test_limits_are_finite():
    assert all(math.isfinite(v) for v in LIMITS.values())
