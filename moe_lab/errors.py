"""Errors of the API as one line each: what the CLI prints and the client raises."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

# Where the error detail's `loc` says which part of the request it is: left out of the line.
_LOC_ROOTS = {"body", "query", "path", "header", "cookie"}


class ApiError(Exception):
    """A request that failed: `status` is the HTTP status (None when no answer came) and
    `detail` one line saying why."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail

    def __str__(self) -> str:
        return self.detail if self.status is None else f"{self.status} {self.detail}"


def describe_detail(detail: Any) -> str:
    """The API's `{"detail": ...}` as one line: a message as it is, a 422's list of located
    errors as `config.top_k: message; base.seq_len: message`."""
    if isinstance(detail, str):
        return " ".join(detail.split())
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if not isinstance(error, Mapping):
                parts.append(str(error))
                continue
            loc = [str(part) for part in error.get("loc") or []]
            if loc and loc[0] in _LOC_ROOTS:
                loc = loc[1:]
            message = " ".join(str(error.get("msg", "")).split())
            given = error.get("input")
            if isinstance(given, str | int | float | bool) and str(given) not in message:
                message = f"{message} (got {json.dumps(given)})"
            parts.append(f"{'.'.join(loc)}: {message}" if loc else message)
        return "; ".join(parts) or "invalid request"
    return json.dumps(detail)


def error_of(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping) and "detail" in body:
        text = describe_detail(body["detail"])
    else:
        text = " ".join(response.text.split())[:200] or response.reason_phrase
    return ApiError(response.status_code, text)
