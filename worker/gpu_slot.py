"""Give each worker on a host a GPU of its own, then run it:

    python -m worker.gpu_slot -- celery -A worker.celery_app worker -Q gpu ...

docker compose's `count: 1` device reservation is not exclusive: `--scale worker=4` would
put four workers on one GPU. Each replica instead sees every GPU and claims the first free
one by an exclusive lock on `$MOE_GPU_LOCK_DIR/gpu<N>.lock` (a volume the replicas share),
sets CUDA_VISIBLE_DEVICES to it and execs the command. The worker keeps the lock's file
open, so the GPU is held exactly as long as the worker lives: the kernel releases the lock
however it ends, SIGKILL included. Without MOE_GPU_LOCK_DIR the command runs unchanged.

No torch here: CUDA must not be initialised before the worker forks its pool.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
from pathlib import Path

from store.settings import Settings


class NoFreeGPU(RuntimeError):
    pass


def count_gpus() -> int:
    """GPUs this container can see, as `nvidia-smi -L` lists them (0 without it)."""
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def claim(lock_dir: Path, gpus: int) -> tuple[int, int]:
    """Lock the first free GPU; returns its index and the lock's (inheritable) descriptor."""
    if gpus < 1:
        raise NoFreeGPU(f"no GPU to claim (locks in {lock_dir}): nvidia-smi -L lists none; "
                        "pass --gpus N, or unset MOE_GPU_LOCK_DIR to run without claiming")  # fmt: skip
    lock_dir.mkdir(parents=True, exist_ok=True)
    for index in range(gpus):
        fd = os.open(lock_dir / f"gpu{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious operator
        os.set_inheritable(fd, True)  # held on across exec, by the worker itself
        return index, fd
    raise NoFreeGPU(f"all {gpus} GPUs are taken (locks in {lock_dir}): one worker per GPU")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.gpu_slot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--gpus", type=int, default=None,
                        help="GPUs on this host (default: count `nvidia-smi -L`)")  # fmt: skip
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    lock_dir = Settings().gpu_lock_dir
    if lock_dir is not None:
        gpus = args.gpus if args.gpus is not None else count_gpus()
        try:
            index, _fd = claim(lock_dir, gpus)
        except NoFreeGPU as exc:
            print(f"gpu_slot: {exc}", file=sys.stderr)
            return 2
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
        print(f"gpu_slot: GPU {index} of {gpus} (CUDA_VISIBLE_DEVICES={index})", flush=True)
    os.execvp(command[0], command)  # PID 1 stays the worker: it gets SIGTERM directly


if __name__ == "__main__":
    sys.exit(main())
