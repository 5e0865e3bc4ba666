"""worker.gpu_slot: N workers on one host get N different GPUs (or N different sets of
MOE_GPUS_PER_WORKER), for as long as they live."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.environment import ROOT
from worker.gpu_slot import NoFreeGPU, claim

SHOW = ["sh", "-c", 'echo "visible=$CUDA_VISIBLE_DEVICES"; exec sleep 60']


def launch(
    lock_dir, *, gpus: int | None = 2, command=SHOW, path=None, per_worker: int | None = None
) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MOE_") and k != "CUDA_VISIBLE_DEVICES"}  # fmt: skip
    if lock_dir is not None:
        env["MOE_GPU_LOCK_DIR"] = str(lock_dir)
    if per_worker is not None:
        env["MOE_GPUS_PER_WORKER"] = str(per_worker)
    if path is not None:
        env["PATH"] = f"{path}{os.pathsep}{env['PATH']}"
    count = [] if gpus is None else ["--gpus", str(gpus)]
    return subprocess.Popen(
        [sys.executable, "-m", "worker.gpu_slot", *count, "--", *command],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def visible(process: subprocess.Popen) -> str | None:
    """What the command saw in CUDA_VISIBLE_DEVICES; None if the launcher exited instead."""
    for line in process.stdout:
        if line.startswith("visible="):
            return line.strip().removeprefix("visible=")
    return None


def stop(*processes: subprocess.Popen | None) -> None:
    for process in processes:
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait()


def test_each_worker_gets_a_gpu_of_its_own_until_it_dies(tmp_path):
    # three at once on two GPUs: the locks, not the timing, decide
    launchers = [launch(tmp_path) for _ in range(3)]
    try:
        seen = {process.pid: visible(process) for process in launchers}
        assert sorted(filter(None, seen.values())) == ["0", "1"]
        (refused,) = [process for process in launchers if seen[process.pid] is None]
        assert refused.wait(timeout=30) == 2
        message = refused.stderr.read().strip()
        assert len(message.splitlines()) == 1  # one line that says why and where
        assert "all 2 GPUs are taken" in message and str(tmp_path) in message

        first = next(process for process in launchers if seen[process.pid] is not None)
        # exec kept the launcher's pid: the worker itself holds the lock
        lock = tmp_path / f"gpu{seen[first.pid]}.lock"
        assert lock.read_text().strip() == str(first.pid)
        first.kill()  # SIGKILL: the kernel releases its lock
        first.wait()
        replacement = launch(tmp_path)
        try:
            assert visible(replacement) == seen[first.pid]
        finally:
            stop(replacement)
    finally:
        stop(*launchers)


def test_a_worker_of_several_gpus_gets_as_many_of_its_own(tmp_path):
    # compose's MOE_GPUS_PER_WORKER=2 on a 4-GPU host: two workers, two GPUs each
    launchers = [launch(tmp_path, gpus=4, per_worker=2) for _ in range(3)]
    try:
        seen = {process.pid: visible(process) for process in launchers}
        assert sorted(filter(None, seen.values())) == ["0,1", "2,3"]
        (refused,) = [process for process in launchers if seen[process.pid] is None]
        assert refused.wait(timeout=30) == 2
        message = refused.stderr.read()
        assert "all 4 GPUs are taken" in message and "2 GPUs per worker" in message
    finally:
        stop(*launchers)


def test_a_claim_is_all_or_none(tmp_path):
    """A worker that finds fewer free GPUs than it needs keeps none of them: the one free
    GPU stays free for a worker that needs one."""
    first = claim(tmp_path, 3, 2)
    try:
        assert sorted(first) == [0, 1]
        with pytest.raises(NoFreeGPU, match="only 1 of 3 GPUs are free"):
            claim(tmp_path, 3, 2)
        last = claim(tmp_path, 3, 1)  # flock: a second open of the file is another holder
        assert list(last) == [2]
        for fd in last.values():
            os.close(fd)
    finally:
        for fd in first.values():
            os.close(fd)


def test_the_gpus_are_counted_with_nvidia_smi(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)"\n'
        'echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb)"\n'
        'echo "GPU 2: NVIDIA H100 80GB HBM3 (UUID: GPU-cccc)"\n'
    )
    fake.chmod(0o755)
    locks = tmp_path / "locks"
    launchers = [launch(locks, gpus=None, path=bin_dir) for _ in range(3)]
    try:
        assert sorted(visible(process) for process in launchers) == ["0", "1", "2"]
        fourth = launch(locks, gpus=None, path=bin_dir)
        assert fourth.wait(timeout=30) == 2
        assert "all 3 GPUs are taken" in fourth.stderr.read()
    finally:
        stop(*launchers)


def test_no_gpu_at_all_is_a_clear_error(tmp_path):
    process = launch(tmp_path, gpus=0)
    assert process.wait(timeout=30) == 2
    assert "no GPU to claim" in process.stderr.read()


def test_without_a_lock_dir_the_command_runs_unchanged():
    process = launch(None, command=["sh", "-c", 'echo "visible=${CUDA_VISIBLE_DEVICES-unset}"'])
    assert visible(process) == "unset"
    assert process.wait(timeout=30) == 0


def test_the_launcher_imports_no_torch():
    code = "import sys, worker.gpu_slot; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
