"""Conditional GETs for what clients poll (the runs list, a study, a run's metrics): the body
gets an ETag, its hash, and a request whose If-None-Match names it gets a bodiless 304, so a
dashboard polling every few seconds redraws only what changed."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import Request, Response, status
from pydantic import BaseModel

NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "unchanged since the ETag given in If-None-Match"}
}


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def answer(request: Request, body: bytes, etag: str | None = None) -> Response:
    """200 with the JSON `body` and its ETag, or 304 when the client has it already."""
    etag = etag or etag_of(body)
    tags = _tags(request.headers.get("if-none-match"))
    if etag in tags or "*" in tags:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    return Response(body, media_type="application/json", headers={"ETag": etag})


def answer_model(request: Request, model: type[BaseModel], payload: Any) -> Response:
    """`payload` (dicts or ORM rows) as `model` serialises it, answered conditionally."""
    body = model.model_validate(payload, from_attributes=True).model_dump_json(by_alias=True)
    return answer(request, body.encode())


def _tags(header: str | None) -> set[str]:
    # RFC 9110: a list of entity tags, weak ones (W/"...") compared weakly, or "*"
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
