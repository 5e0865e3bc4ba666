"""Where a run's files live: `<artifact_dir>/runs/<run_key>/`, on storage the workers and
the API share (a volume in compose, a ReadWriteMany claim on Kubernetes). Keyed by the run
key, unique to the run, unlike its id, which a reset database hands out again."""

from __future__ import annotations

import errno
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import Any, BinaryIO, Literal, TextIO

from store.settings import Settings

CHECKPOINT = "checkpoint.pt"  # enough to resume: model, optimizer, RNG, histories
MODEL = "model.pt"  # the final weights (the best epoch's under early stopping)
RESULT = "result.json"  # what the engine's run_single_experiment returned
LOG = "run.log"  # what the worker logged for the run, every attempt
# A run on several GPUs checkpoints as a torch.distributed.checkpoint directory (each rank
# writes its part; moe_core.sharded_checkpoint): resumable, not served (a folder of shards).
SHARDED_CHECKPOINT = "checkpoint.dcp"
RUN_FILES = (MODEL, CHECKPOINT, RESULT, LOG)
# TensorBoard's event files (worker.sinks, MOE_TENSORBOARD), one per attempt, listed and
# served as tensorboard/<file>.
TENSORBOARD = "tensorboard"
EVENT_FILE = re.compile(r"events\.out\.tfevents\.[A-Za-z0-9._-]+")
RunFile = Literal["model.pt", "checkpoint.pt", "result.json", "run.log"]  # RUN_FILES


# A run's outputs: written once it has trained to the end, and final only once it has
# succeeded. Any file of a run that has not succeeded is partial (a failed run's
# checkpoint.pt is its last epoch's, not a final model).
FINAL_FILES = (MODEL, RESULT)


def run_dir(settings: Settings, run_key: str) -> Path:
    return settings.artifact_dir / "runs" / run_key


def run_listing(
    settings: Settings, run_key: str, names: tuple[str, ...] = RUN_FILES, *, partial: bool = False
) -> list[dict[str, Any]]:
    """The run's files of `names` as open_run_file would serve them: plain files (not a
    symlink, nor a hard link), none from a run directory that leads out of the store; with
    their size and time, each marked `partial` as given."""
    if not _in_store(settings, run_key):
        return []
    directory = run_dir(settings, run_key)
    items = []
    for name in names:
        try:
            stat = (directory / name).stat(follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not _plain(stat):
            continue
        items.append({"name": name, "size": stat.st_size, "partial": partial,
                      "modified_at": datetime.fromtimestamp(stat.st_mtime, UTC)})  # fmt: skip
    return items


def event_file_listing(
    settings: Settings, run_key: str, *, partial: bool = False
) -> list[dict[str, Any]]:
    """The run's TensorBoard event files as run_listing lists files, named tensorboard/<file>;
    none from a `tensorboard/` that leads out of the store (a symlink)."""
    folder = f"{run_key}/{TENSORBOARD}"  # a run directory of its own, to run_listing
    try:
        names = sorted(p.name for p in run_dir(settings, folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = [name for name in names if EVENT_FILE.fullmatch(name)]
    return [
        {**item, "name": f"{TENSORBOARD}/{item['name']}"}
        for item in run_listing(settings, folder, tuple(names), partial=partial)
    ]


def open_event_file(settings: Settings, run_key: str, filename: str) -> BinaryIO:
    """One of the run's TensorBoard event files, opened as open_run_file opens a file."""
    if not EVENT_FILE.fullmatch(filename):
        raise FileNotFoundError(f"{filename} is not a TensorBoard event file")
    return open_run_file(settings, f"{run_key}/{TENSORBOARD}", filename)


class NotAPlainFile(FileNotFoundError):
    """What lies at a run file's path is not a plain file the worker wrote: a symlink, a
    directory, a FIFO, a socket, a device, or a hard link to a file elsewhere."""


def open_run_file(settings: Settings, run_key: str, name: str) -> BinaryIO:
    """A run's file, open for reading and never through a symlink: a link planted in the
    artifact store (run.log -> /etc/passwd) is not followed, for the file itself
    (O_NOFOLLOW) nor for the directories under the store (their resolved path must be
    where run_dir puts them), and only a regular file of one link (a hard link planted there
    names a file elsewhere). FileNotFoundError (NotAPlainFile for what was refused) when
    there is no such plain file; a refused file's descriptor is closed again."""
    directory = run_dir(settings, run_key)
    if not _in_store(settings, run_key):
        raise FileNotFoundError(f"{directory} is not a directory of the artifact store")
    # O_NONBLOCK: a FIFO planted there must not hang the request (no effect on a file)
    fd = _open_plain(directory / name, os.O_RDONLY | os.O_NONBLOCK)
    return os.fdopen(fd, "rb")


def open_run_log(path: Path) -> TextIO:
    """A run's log, open for appending (created if absent) as open_run_file opens a file:
    never through a symlink, never a hard link's other name; NotAPlainFile otherwise."""
    # O_NONBLOCK: a FIFO with no reader is refused at once rather than waited on
    fd = _open_plain(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK)
    return os.fdopen(fd, "a", encoding="utf-8")


def _open_plain(path: Path, flags: int) -> int:
    """The descriptor of the plain file at `path`, opened with `flags` and O_NOFOLLOW; what
    was opened is checked (fstat), not the path, and closed again when refused."""
    flags |= os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        # ELOOP: a symlink; ENXIO: a socket, or a FIFO with no reader; EISDIR: a directory
        # opened for writing
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.EMLINK):
            raise NotAPlainFile(f"{path} is not a plain file") from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileNotFoundError(f"{path}: no such plain file") from exc
        raise
    try:
        if not _plain(os.fstat(fd)):
            raise NotAPlainFile(f"{path} is not a plain file of one link")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _plain(stat: os.stat_result) -> bool:
    # More than one link: the same file has a name elsewhere, which a planted hard link
    # (model.pt -> a file outside the run) would serve. None is a file replaced (os.replace)
    # after it was opened: still the one the run wrote.
    return S_ISREG(stat.st_mode) and stat.st_nlink <= 1


def _in_store(settings: Settings, run_key: str) -> bool:
    # the store itself may be a link (a mount point); nothing under it may lead out of it
    directory = run_dir(settings, run_key)
    return directory.resolve() == settings.artifact_dir.resolve() / "runs" / run_key


def remove_run(settings: Settings, run_key: str) -> None:
    shutil.rmtree(run_dir(settings, run_key), ignore_errors=True)
