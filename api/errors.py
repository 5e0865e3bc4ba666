"""The error responses each route declares in OpenAPI: every one has the body `ErrorDetail`."""

from __future__ import annotations

from typing import Any

from api.schemas import ErrorDetail

_MEANING = {
    401: "missing or wrong bearer token (only when MOE_API_TOKEN is set)",
    404: "no such experiment, study or baseline",
    409: "the run is not in a state that allows this",
    422: "a bad request: one entry per bad field, located by `loc`",
    503: "the database is unreachable; retry after the Retry-After header's seconds",
}


def error_responses(*codes: int, **meanings: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the error model and what it means there
    (`meanings` by `e409="..."` overrides the generic text)."""
    return {
        code: {"model": ErrorDetail, "description": meanings.get(f"e{code}", _MEANING[code])}
        for code in codes
    }
