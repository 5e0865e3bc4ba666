"""worker.gpu_slot: N workers on one host get N different GPUs, for as long as they live."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

SHOW = ["sh", "-c", 'echo "visible=$CUDA_VISIBLE_DEVICES"; exec sleep 60']


def launch(lock_dir, *, gpus: int = 2, command=SHOW) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_")}
    if lock_dir is not None:
        env["MOE_GPU_LOCK_DIR"] = str(lock_dir)
    return subprocess.Popen(
        [sys.executable, "-m", "worker.gpu_slot", "--gpus", str(gpus), "--", *command],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def visible(process: subprocess.Popen) -> str:
    for line in process.stdout:
        if line.startswith("visible="):
            return line.strip().removeprefix("visible=")
    raise AssertionError(process.stderr.read())


def test_each_worker_gets_a_gpu_of_its_own_until_it_dies(tmp_path):
    first, second = launch(tmp_path), launch(tmp_path)
    third = None
    try:
        assert {visible(first), visible(second)} == {"0", "1"}
        third = launch(tmp_path)
        assert third.wait(timeout=30) == 2
        assert "all 2 GPUs are taken" in third.stderr.read()

        held_by_first = None
        for index in (0, 1):
            if (tmp_path / f"gpu{index}.lock").read_text().strip() == str(first.pid):
                held_by_first = index  # exec kept the pid: the worker holds the lock
        assert held_by_first is not None
        first.kill()  # SIGKILL: the kernel releases its lock
        first.wait()
        replacement = launch(tmp_path)
        try:
            assert visible(replacement) == str(held_by_first)
        finally:
            replacement.kill()
            replacement.wait()
    finally:
        for process in (first, second, third):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def test_without_a_lock_dir_the_command_runs_unchanged():
    process = launch(None, command=["sh", "-c", 'echo "visible=${CUDA_VISIBLE_DEVICES-unset}"'])
    assert visible(process) == "unset"
    assert process.wait(timeout=30) == 0


def test_the_launcher_imports_no_torch():
    code = "import sys, worker.gpu_slot; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
