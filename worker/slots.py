"""A worker's GPUs (on a CPU worker: process slots), shared by the runs its pool trains.

A run asking for k > 1 GPUs holds k slots alone while its ranks train (torchrun starts one
process per slot); a one-GPU run shares its GPU's slot with other one-GPU runs (several
runs per GPU, MOE_RUNS_PER_GPU), or on a CPU holds a slot of its own, since there a slot
is a process. Slot i is GPU i of those the worker sees.

The pool's processes are separate processes, so a slot is an advisory lock (flock) on a
file of the worker's own folder: exclusive for a multi-GPU run (and a CPU run), shared for
one-GPU runs on a GPU. The kernel drops a lock with its holder however the holder ends,
SIGKILL included, so a dead pool process never keeps a GPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path

from store.settings import Settings
from worker.gpu_slot import count_gpus


@functools.cache
def visible_gpus() -> int:
    """The GPUs this process may use (CUDA_VISIBLE_DEVICES, else what nvidia-smi lists),
    read without initialising CUDA (the worker forks its pool after this)."""
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if seen is not None:
        return len([n for n in seen.split(",") if n.strip() and n.strip() != "-1"])
    return count_gpus()


def slot_count(settings: Settings, *, on_gpu: bool) -> int:
    """This worker's slots: MOE_GPUS_PER_WORKER, else the GPUs it sees, else (a CPU worker)
    the runs its pool trains at once."""
    if settings.gpus_per_worker is not None:
        return settings.gpus_per_worker
    gpus = visible_gpus() if on_gpu else 0
    return gpus if gpus > 0 else settings.runs_per_gpu


def folder(settings: Settings, worker_name: str | None) -> Path:
    """The worker's lock files: its own folder under the home (a name per Celery node)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", worker_name or f"pid{os.getppid()}")
    return settings.home / "slots" / name


class Held:
    """Slots this process holds until `release()` (or its end)."""

    def __init__(self, indices: list[int], fds: list[int]) -> None:
        self.indices = indices
        self._fds = fds

    def release(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing drops the lock
        self._fds = []


def _lock(path: Path, mode: int) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def take(
    directory: Path, *, count: int, gpus: int, on_gpu: bool, gpu_index: int = 0
) -> Held | None:
    """Take the slots a run needs now, or None when they are not free (nothing held).

    `gpus` > 1: that many slots, exclusively. One GPU on a GPU worker: slot `gpu_index`
    shared. One run on a CPU worker: the first free slot, exclusively."""
    if gpus > count:
        raise ValueError(f"the run asks for {gpus} GPUs and this worker has {count} "
                         "(MOE_GPUS_PER_WORKER); MOE_MAX_GPUS_PER_RUN must not exceed the "
                         "GPUs of every worker")  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    if gpus == 1 and on_gpu:
        fd = _lock(directory / f"slot{gpu_index}.lock", fcntl.LOCK_SH)
        return None if fd is None else Held([gpu_index], [fd])
    indices, fds = [], []
    for index in range(count):
        fd = _lock(directory / f"slot{index}.lock", fcntl.LOCK_EX)
        if fd is None:
            continue
        indices.append(index)
        fds.append(fd)
        if len(indices) == gpus:
            return Held(indices, fds)
    Held(indices, fds).release()  # too few free: hold none rather than some
    return None


@contextlib.contextmanager
def holding(held: Held) -> Iterator[Held]:
    try:
        yield held
    finally:
        held.release()
