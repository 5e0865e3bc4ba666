"""Files written whole or not at all: a reader (another run, a resumed one) never sees half
a checkpoint, tokenizer or result, and a crash mid-write leaves the previous file intact.

A write that fails says which file and why. A write of a known size first checks that its
file system has room ("no space left on <dir>: need N MB, have M MB"), before a byte is
written; whatever the file system refuses on the way (a disk filled by someone else, a
read-only mount, a permission) is a StorageError naming the path and the errno, never a
serializer's internals (torch's own writer reports a full disk as "unexpected pos 517888
vs 517776").
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, cast

MB = 1 << 20
# What a file holds beyond its tensors (the zip's headers, pickled histories): room kept.
SLACK_BYTES = MB


class StorageError(OSError):
    """A file that could not be written: the message names the path and the cause, `errno`
    and `filename` are the file system's."""

    def __init__(self, code: int, message: str, path: str | os.PathLike[str]) -> None:
        super().__init__(code, message, str(path))
        self.message = message

    def __str__(self) -> str:
        return self.message


def ensure_room(directory: str | os.PathLike[str], need: int) -> None:
    """StorageError (ENOSPC) unless the file system of `directory` has `need` bytes free."""
    have = shutil.disk_usage(directory).free
    if have < need:
        raise StorageError(
            errno.ENOSPC,
            f"no space left on {directory}: need {math.ceil(need / MB)} MB, have {have // MB} MB",
            directory,
        )


def ensure_room_for(files: Mapping[str | os.PathLike[str] | None, int]) -> None:
    """Before a run writes its files: room for each file's `bytes` at its largest (a file
    replaced atomically takes its old and its new size at once), less what the file takes
    already. None paths (files the run does not write) count nothing."""
    need: dict[Path, int] = {}
    for path, size in files.items():
        if path is None:
            continue
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        taken = path.stat().st_size if path.is_file() else 0
        need[path.parent] = need.get(path.parent, 0) + max(0, size - taken)
    for directory, size in need.items():
        ensure_room(directory, size)


def write_atomic(
    path: str | os.PathLike[str], write: Callable[[Path], Any], *, size: int | None = None
) -> Path:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path`. With
    `size` (the bytes it will take), the file system must have room for them first. An
    OSError on the way is a StorageError naming `path`; `path` is left as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if size is not None:
            ensure_room(path.parent, size)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except StorageError:
        raise
    except OSError as exc:
        raise _storage_error(path, exc) from exc
    return path


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    text = json.dumps(obj, indent=2)
    return write_atomic(path, lambda tmp: tmp.write_text(text), size=len(text.encode()))


def torch_save_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """torch.save(obj) to `path` through write_atomic, after checking there is room for
    obj's tensors. torch writes through a Python file, so a failing write is the file
    system's OSError (kept, since torch reraises it as its own RuntimeError)."""
    import torch  # here: this module is also the torch-free API's and worker's JSON writer

    def write(tmp: Path) -> None:
        with _create(tmp) as file:
            recording = _Recording(file)
            try:
                # torch.save writes to any object with write() and flush(), though its
                # annotation names IO[bytes] only
                torch.save(obj, cast(IO[bytes], recording))
            except RuntimeError as exc:
                if recording.error is not None:
                    raise recording.error from None
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise RuntimeError(f"cannot write {path}: {first}") from exc

    return write_atomic(path, write, size=tensor_bytes(obj) + SLACK_BYTES)


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors (and arrays) in a nested state: what torch.save will write,
    near enough."""
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(value) for value in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(item) for item in obj)
    nbytes = getattr(obj, "nbytes", None)  # torch.Tensor, numpy.ndarray
    return nbytes if isinstance(nbytes, int) else 0


def _create(path: Path) -> IO[bytes]:
    return open(path, "wb")  # noqa: SIM115 (the caller's `with`)


class _Recording:
    """A binary file that keeps the first OSError of its writes: torch swallows it into a
    RuntimeError without the errno or the path."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.file.flush()


def _storage_error(path: Path, exc: OSError) -> StorageError:
    code = exc.errno or errno.EIO
    name = errno.errorcode.get(code, str(code))
    cause = exc.strerror or os.strerror(code)
    # the file the error was about, unless it is `path` or its temporary file
    other = Path(exc.filename) if exc.filename else path
    ours = other == path or (other.parent == path.parent and other.name.startswith(f".{path.name}"))
    where = "" if ours else f" ({other})"
    return StorageError(code, f"cannot write {path}: {cause} ({name}){where}", path)
