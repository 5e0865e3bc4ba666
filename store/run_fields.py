"""The fields a run is listed by, as a tracker's run table has them: the run's own columns
(id, name, status, ...), every field of its config and base (`config.top_k`, `base.seed`),
and its summary (best val CE, test CE, tokens/s, the final evaluation's expert statistics).
GET /experiments filters on any of them (`where=top_k=2`, `where=val_ce<5`) and sorts on
any (`sort=-config.capacity_factor`). A column or a config or base field is compared in
SQL; a summary value derived from the stored metrics (tokens/s, the expert statistics) is
compared in Python, over every run the other conditions leave."""

from __future__ import annotations

import enum
import math
import re
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from sqlalchemy import ColumnElement
from sqlalchemy.orm import QueryableAttribute

from moe_core.config import BaseConfig, ExperimentConfig
from store.models import Experiment

Kind = Literal["num", "text", "bool"]


@dataclass(frozen=True)
class Field:
    name: str  # as the API names it: id, val_ce, config.top_k, base.seed
    kind: Kind
    column: ColumnElement[Any] | None  # None: derived in Python from a loaded run
    value: Callable[[Experiment], Any]


def _column(name: str, kind: Kind, attribute: Any) -> Field:
    return Field(name, kind, attribute, lambda run: getattr(run, attribute.key))


# The run's own columns, and the summary's values that are columns too.
_COLUMNS = {
    field.name: field
    for field in (
        _column("id", "num", Experiment.id),
        _column("name", "text", Experiment.name),
        _column("owner", "text", Experiment.owner),
        _column("status", "text", Experiment.status),
        _column("preset", "text", Experiment.preset),
        _column("base_preset", "text", Experiment.base_preset),
        _column("dense", "bool", Experiment.dense),
        _column("study_id", "num", Experiment.study_id),
        _column("sweep_id", "num", Experiment.sweep_id),
        _column("trial_number", "num", Experiment.trial_number),
        _column("worker_name", "text", Experiment.worker_name),
        _column("current_epoch", "num", Experiment.current_epoch),
        _column("num_epochs", "num", Experiment.num_epochs),
        _column("val_ce", "num", Experiment.best_val_ce_loss),
        _column("val_loss", "num", Experiment.best_val_loss),
        _column("test_ce", "num", Experiment.test_ce_loss),
        _column("test_loss", "num", Experiment.test_loss),
        _column("params", "num", Experiment.params),
        _column("active_params", "num", Experiment.active_params),
    )
}
_DERIVED = ("tokens_per_sec", "best_epoch", "train_ce", "min_usage", "max_usage", "entropy",
            "dropped", "max_step_load")  # fmt: skip


def _derived(name: str) -> Field:
    return Field(name, "num", None, lambda run: run.summary[name])


def _kind(annotation: Any) -> Kind | None:
    """A config field's kind, None for one that is no single value (a list, a schedule)."""
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = {_kind(arm) for arm in get_args(annotation) if arm is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if annotation is bool:
        return "bool"
    if annotation in (int, float):
        return "num"
    if annotation is str or get_origin(annotation) is Literal:
        return "text"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "text"
    return None


def _json_field(section: str, name: str, kind: Kind) -> Field:
    element = getattr(Experiment, section)[name]
    column = {"num": element.as_float, "text": element.as_string, "bool": element.as_boolean}[
        kind
    ]()
    return Field(
        f"{section}.{name}", kind, column, lambda run: (getattr(run, section) or {}).get(name)
    )


def _section(section: str, model: type[BaseModel]) -> dict[str, Field]:
    fields = {}
    for name, info in model.model_fields.items():
        kind = _kind(info.annotation)
        if kind is not None:
            fields[f"{section}.{name}"] = _json_field(section, name, kind)
    return fields


_CONFIG = _section("config", ExperimentConfig)
_BASE = _section("base", BaseConfig)


class BadField(ValueError):
    """A field, condition or sort the list cannot apply: its message says why."""


def field_named(name: str) -> Field:
    """The field `name` names: a run's column or summary value (`val_ce`), a config or base
    field in full (`config.top_k`) or by its bare name where only one of them has it."""
    name = name.removeprefix("summary.")
    if name in _COLUMNS:
        return _COLUMNS[name]
    if name in _DERIVED:
        return _derived(name)
    if name in _CONFIG or name in _BASE:
        return {**_CONFIG, **_BASE}[name]
    if name.startswith(("config.", "base.")):
        section, _, bare = name.partition(".")
        model = ExperimentConfig if section == "config" else BaseConfig
        if bare in model.model_fields:
            raise BadField(
                f"{name} is not a single value (a list or a schedule): no filter or sort on it"
            )
        raise BadField(f"{section} has no field {bare!r}")
    every = {**_CONFIG, **_BASE}
    found = [f"{section}.{name}" for section in ("config", "base") if f"{section}.{name}" in every]
    if len(found) == 1:
        return every[found[0]]
    if found:
        raise BadField(f"{name} is a field of both config and base: say {' or '.join(found)}")
    if name in ExperimentConfig.model_fields or name in BaseConfig.model_fields:
        raise BadField(
            f"{name} is not a single value (a list or a schedule): no filter or sort on it"
        )
    known = [*_COLUMNS, *_DERIVED, *(key.partition(".")[2] for key in every)]
    close = get_close_matches(name.lower(), known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise BadField(f"no field {name!r}{hint}: a run's own ({', '.join(_COLUMNS)}), a summary "
                   f"value ({', '.join(_DERIVED)}), or config.FIELD or base.FIELD")  # fmt: skip


OPERATORS = ("!=", "<=", ">=", "=", "<", ">", "~")
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(!=|<=|>=|=|<|>|~)\s*(.*?)\s*$", re.S)


@dataclass(frozen=True)
class Condition:
    field: Field
    op: str
    value: float | str | bool


def condition(text: str) -> Condition:
    """`FIELD OP VALUE`, OP one of = != < <= > >= (numbers; = and != for text and booleans
    too) or ~ (the text contains VALUE, any case): `top_k=2`, `val_ce<5`, `name~top`."""
    match = _CONDITION.match(text)
    if match is None:
        raise BadField(
            f"{text!r} is not FIELD OP VALUE (OP one of {' '.join(OPERATORS)}), e.g. top_k=2"
        )
    name, op, raw = match.groups()
    field = field_named(name)
    if raw == "":
        raise BadField(f"{text!r} has no value after {op}")
    if field.kind == "num":
        try:
            number = float(raw)
        except ValueError:
            raise BadField(f"{field.name} is a number: {raw!r} is not one") from None
        if not math.isfinite(number):
            raise BadField(f"{field.name}: {raw!r} is not a finite number")
        if op == "~":
            raise BadField(f"{field.name} is a number: compare it with = != < <= > >=, not ~")
        return Condition(field, op, number)
    if op in ("<", "<=", ">", ">="):
        raise BadField(f"{field.name} is not a number: compare it with = != or ~ (contains)")
    if field.kind == "bool":
        if raw.lower() not in ("true", "false") or op == "~":
            raise BadField(
                f"{field.name} is true or false: {field.name}=true or {field.name}=false"
            )
        return Condition(field, op, raw.lower() == "true")
    return Condition(field, op, raw)


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}  # fmt: skip


def contains(
    column: ColumnElement[Any] | QueryableAttribute[Any], text: str
) -> ColumnElement[bool]:
    """`column` holds `text`, any case (its % and _ meant as themselves)."""
    pattern = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.ilike(f"%{pattern}%", escape="\\")


def sql(cond: Condition) -> ColumnElement[bool]:
    column = cond.field.column
    assert column is not None
    if cond.op == "~":
        return contains(column, str(cond.value))
    compared: ColumnElement[bool] = _COMPARE[cond.op](column, cond.value)
    return compared


def holds(cond: Condition, run: Experiment) -> bool:
    """Whether a loaded run meets the condition (a missing value meets none, as in SQL)."""
    value = cond.field.value(run)
    if value is None:
        return False
    if cond.op == "~":
        return str(cond.value).lower() in str(value).lower()
    return bool(_COMPARE[cond.op](value, cond.value))


@dataclass(frozen=True)
class Sort:
    field: Field
    descending: bool


def sort_by(text: str) -> Sort:
    """`FIELD` (lowest first) or `-FIELD` (highest first); missing values always last."""
    return Sort(field_named(text.removeprefix("-")), text.startswith("-"))


def sql_order(sort: Sort) -> tuple[ColumnElement[Any], ...]:
    column = sort.field.column
    assert column is not None
    return (
        column.is_(None),
        column.desc() if sort.descending else column.asc(),
        Experiment.id.desc(),
    )


def sorted_runs(runs: Sequence[Experiment], sort: Sort) -> list[Experiment]:
    """`runs` (newest first) in `sort`'s order, the missing last, ties newest first."""
    present = [run for run in runs if sort.field.value(run) is not None]
    missing = [run for run in runs if sort.field.value(run) is None]
    present.sort(key=sort.field.value, reverse=sort.descending)  # stable: ties stay newest first
    return present + missing
