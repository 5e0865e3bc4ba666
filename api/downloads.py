"""A run's file as a response, streamed from the file already opened by
store.artifacts.open_run_file: what is sent is the file that was checked (a plain file,
reached through no symlink), not whatever the path names by the time it is sent."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

from fastapi.responses import StreamingResponse

CHUNK_BYTES = 1 << 20


def file_response(
    file: BinaryIO, *, filename: str, media_type: str, headers: dict[str, str] | None = None
) -> StreamingResponse:
    # The size when opened: a file still being written (a run's log) is sent as it was.
    size = os.fstat(file.fileno()).st_size

    def chunks() -> Iterator[bytes]:
        with file:
            left = size
            while left > 0 and (chunk := file.read(min(CHUNK_BYTES, left))):
                left -= len(chunk)
                yield chunk

    return StreamingResponse(
        chunks(),
        media_type=media_type,
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{filename}"',
            **(headers or {}),
        },
    )
