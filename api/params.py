"""Bounds on what a URL can carry: ids the database can hold, offsets, known query names."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError

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
