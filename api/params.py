"""Bounds on what a URL can carry: ids the database can hold, offsets, known query names."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError

from api.specs import MAX_ID

# Ids are 32-bit in the database: a larger one is a 422 here, not a driver error (a 500).
ExperimentId = Annotated[int, Path(ge=1, le=MAX_ID)]
StudyId = Annotated[int, Path(ge=1, le=MAX_ID)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]


def only_query(*names: str) -> Any:
    """A dependency that makes any query parameter but `names` a 422: a misspelt filter
    (`?stauts=failed`) must not silently return everything."""

    def check(request: Request) -> None:
        unknown = [key for key in request.query_params if key not in names]
        if unknown:
            raise RequestValidationError(
                [
                    {
                        "type": "extra_forbidden",
                        "loc": ("query", key),
                        "msg": f"unknown query parameter; this route takes {', '.join(names)}",
                        "input": request.query_params[key],
                    }
                    for key in unknown
                ]
            )

    return Depends(check)
