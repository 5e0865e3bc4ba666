"""Bounds on what a URL can carry: ids the database can hold, offsets, known query names."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from api.specs import MAX_ID

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
        known = route.known_query_names = _query_names(route)
    unknown = [key for key in request.query_params if key not in known]
    if unknown:
        takes = ", ".join(sorted(known)) if known else "no query parameters"
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", key),
                    "msg": f"unknown query parameter; this route takes {takes}",
                    "input": request.query_params[key],
                }
                for key in unknown
            ]
        )


def _query_names(route: APIRoute) -> frozenset[str]:
    """The query parameters of the route's handler and its dependencies."""
    names: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(field.alias for field in dependant.query_params)
        pending.extend(dependant.dependencies)
    return frozenset(names)
