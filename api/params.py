"""Bounds on what a URL can carry: ids the database can hold, offsets, known query names."""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from api.resolve import MAX_ID
from store import run_fields

# Ids are 32-bit in the database: a larger one is a 422 here, not a driver error (a 500).
ExperimentId = Annotated[int, Path(ge=1, le=MAX_ID)]
StudyId = Annotated[int, Path(ge=1, le=MAX_ID)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]

# A client's name for one submission (a uuid, say): a retried POST with the same key and
# body returns what the first stored, so a timeout never turns into two runs.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",  # visible ASCII: what an HTTP header carries safely
        description="retrying with the same key and body returns the original (200), "
        "never a second run; the same key with another body is a 409",
    ),
]


def known_query_only(request: Request) -> None:
    """Any query parameter that the matched route does not take is a 422: a misspelt filter
    (`?stauts=failed`) must not silently return everything, nor `?dryrun=true` store and
    queue the run it meant only to check. Applied to every route (api.main)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = getattr(route, "known_query_names", None)
    if known is None:  # once per route, kept on it
        known = route.known_query_names = _query_names(route)  # type: ignore[attr-defined]  # kept on the route
    unknown = [key for key in request.query_params if key not in known]
    errors = []
    if unknown:
        takes = ", ".join(sorted(known)) if known else "no query parameters"
        errors += [
            {
                "type": "extra_forbidden",
                "loc": ("query", key),
                "msg": f"unknown query parameter; this route takes {takes}",
                "input": request.query_params[key],
            }
            for key in unknown
        ]
    # One value each: `?status=failed&status=queued` is not a filter on both, and silently
    # keeping the last one would answer another question than the one asked.
    repeated = sorted(
        key for key in set(request.query_params) if known.get(key) is False
        and len(request.query_params.getlist(key)) > 1
    )  # fmt: skip
    errors += [
        {
            "type": "query_repeated",
            "loc": ("query", key),
            "msg": "given more than once; this parameter takes one value",
            "input": request.query_params.getlist(key),
        }
        for key in repeated
    ]
    if errors:
        raise RequestValidationError(errors)


def _query_names(route: APIRoute) -> dict[str, bool]:
    """The query parameters of the route's handler and its dependencies, each with whether
    it takes a list of values."""
    names: dict[str, bool] = {}
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update((field.alias, _takes_many(field.field_info.annotation))
                     for field in dependant.query_params)  # fmt: skip
        pending.extend(dependant.dependencies)
    return names


def _takes_many(annotation: Any) -> bool:
    if get_origin(annotation) in (Union, UnionType):
        return any(_takes_many(arm) for arm in get_args(annotation))
    return get_origin(annotation) in (list, set, tuple, frozenset)


# ?owner=me (the caller) or a user's name: the runs, studies or sweeps they submitted.
OwnerQuery = Annotated[
    str | None,
    Query(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
          description="`me` (whoever asks) or a user's name: only what they submitted"),
]  # fmt: skip


def owner_named(owner: str | None, caller: Any) -> str | None:
    return caller.name if owner == "me" else owner


# Any field of a run table (store.run_fields): a run's own, its summary's, its config's and base's.
_FIELDS = "a run's own (`status`), its summary's (`val_ce`, `tokens_per_sec`, `min_usage`: "
_FIELDS += "ExperimentRead.summary), `config.FIELD` or `base.FIELD` (bare where only one has it)"
WhereQuery = Annotated[
    list[str] | None,
    Query(
        max_length=20,
        description=f"`FIELD OP VALUE`, repeated for several (all must hold): FIELD {_FIELDS}; OP "
        "one of = != < <= > >= (numbers; = and != for text and booleans too) or ~ (the text "
        "contains VALUE, any case): `top_k=2`, `val_ce<5`, `base.precision=bf16`, `name~top`. "
        "A run without the value meets no condition on it. An unknown field, an operator its "
        "kind does not take or a value not of its kind is a 422 naming the parameter "
        "(`bad_condition`)",
    ),
]
SortQuery = Annotated[
    str | None,
    Query(
        max_length=100,
        description="`FIELD` (lowest first) or `-FIELD` (highest first), FIELD as in `where`; "
        "runs without the value last, ties newest first. Over `order` when both are given. "
        "An unknown field, or one that cannot be sorted on, is a 422 (`bad_sort`)",
    ),
]


def run_conditions(
    where: list[str], sort: str | None
) -> tuple[tuple[run_fields.Condition, ...], run_fields.Sort | None]:
    """`where` and `sort` read (store.run_fields), or a 422 naming each bad one."""
    errors, conditions, sort_by = [], [], None
    for text in where:
        try:
            conditions.append(run_fields.condition(text))
        except run_fields.BadField as exc:
            errors.append({"type": "bad_condition", "loc": ("query", "where"), "msg": str(exc),
                           "input": text})  # fmt: skip
    if sort is not None:
        try:
            sort_by = run_fields.sort_by(sort)
        except run_fields.BadField as exc:
            errors.append(
                {"type": "bad_sort", "loc": ("query", "sort"), "msg": str(exc), "input": sort}
            )
    if errors:
        raise RequestValidationError(errors)
    return tuple(conditions), sort_by
