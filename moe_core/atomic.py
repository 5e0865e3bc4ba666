"""Files written whole or not at all: a reader (another run, a resumed one) never sees half
a checkpoint, tokenizer or result, and a crash mid-write leaves the previous file intact."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2)))
