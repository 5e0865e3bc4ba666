"""Give each worker on a host GPUs of its own (MOE_GPUS_PER_WORKER, default one), then run it:

    python -m worker.gpu_slot -- celery -A worker.celery_app worker -Q gpu ...

docker compose's `count: N` device reservation is not exclusive: `--scale worker=4` would
put four workers on the same GPUs. Each replica instead sees every GPU and claims the first
free ones by an exclusive lock on `$MOE_GPU_LOCK_DIR/gpu<N>.lock` each (a volume the
replicas share), sets CUDA_VISIBLE_DEVICES to them and execs the command. The worker keeps
the locks' files open, so the GPUs are held exactly as long as the worker lives: the kernel
releases the locks however it ends, SIGKILL included. Without MOE_GPU_LOCK_DIR the command
runs unchanged.

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


def claim(lock_dir: Path, gpus: int, count: int = 1) -> dict[int, int]:
    """Lock the first `count` free GPUs of `gpus`; returns each one's index and its lock's
    (inheritable) descriptor. All or none: a worker that finds too few free releases what
    it took, so two half-served workers never sit on the GPUs one of them could use."""
    if gpus < 1:
        raise NoFreeGPU(f"no GPU to claim (locks in {lock_dir}): nvidia-smi -L lists none; "
                        "pass --gpus N, or unset MOE_GPU_LOCK_DIR to run without claiming")  # fmt: skip
    lock_dir.mkdir(parents=True, exist_ok=True)
    held: dict[int, int] = {}
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
        held[index] = fd
        if len(held) == count:
            return held
    for fd in held.values():
        os.close(fd)  # closing the descriptor releases its lock
    free = f"only {len(held)} of {gpus} GPUs are free" if held else f"all {gpus} GPUs are taken"
    each = "one worker per GPU" if count == 1 else f"{count} GPUs per worker (MOE_GPUS_PER_WORKER)"
    raise NoFreeGPU(f"{free} (locks in {lock_dir}): {each}")


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
    settings = Settings()
    if settings.gpu_lock_dir is not None:
        gpus = args.gpus if args.gpus is not None else count_gpus()
        try:
            held = claim(settings.gpu_lock_dir, gpus, settings.gpus_per_worker or 1)
        except NoFreeGPU as exc:
            print(f"gpu_slot: {exc}", file=sys.stderr)
            return 2
        visible = ",".join(str(index) for index in held)
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
        print(f"gpu_slot: GPU {visible} of {gpus} (CUDA_VISIBLE_DEVICES={visible})", flush=True)
    os.execvp(command[0], command)  # PID 1 stays the worker: it gets SIGTERM directly


if __name__ == "__main__":
    sys.exit(main())
