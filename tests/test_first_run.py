"""The README's "First run of the service", as written: its commands start an API and a
worker on the embedded default that train a run offline (no hub: MOE_DATA_DIR comes from
./run), and the CLI reaches the API through MOE_API_URL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from local_deployment.servers import free_port
from tests.environment import ROOT, unavailable
from tests.waiting import wait_for

SHARED_TEXT = ROOT.parent / "shared" / "data" / "wikitext-2" / "train.txt"


def first_run_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## First run of the service\n")[1].split("\n## ")[0]
    blocks = section.split("```bash\n")[1:]
    return [line.split("#")[0].strip() for block in blocks
            for line in block.split("```")[0].splitlines() if line.split("#")[0].strip()]  # fmt: skip


def test_the_first_run_names_the_run_commands():
    commands = first_run_commands()
    assert commands[:3] == ["./run setup", "./run api", "./run worker"]
    assert commands[3].startswith(".venv/bin/moe-lab study submit")


@pytest.fixture()
def offline_env(tmp_path) -> dict[str, str]:
    if not SHARED_TEXT.is_file():
        unavailable(f"no offline WikiText-2 beside the checkout ({SHARED_TEXT})")
    # Nothing of the tests' deployment: the embedded default under a home of its own, and
    # the hub unreachable (its offline switches, no cache of it), so a worker that reached for
    # it fails.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_")}
    return {**env, "MOE_HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1"}  # fmt: skip


def started(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_first_run_trains_offline_as_written(offline_env, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**offline_env, "MOE_API_URL": url}
    # the README's commands, the API on a port of the test's own (as its note says)
    api = started(["./run", "api", "--port", str(port)], env, tmp_path / "api.log")
    worker = started(["./run", "worker", "--concurrency", "1"], env, tmp_path / "worker.log")
    try:
        wait_for(lambda: _ready(url), timeout=60, what="the API started by ./run api")
        submit = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "moe-lab"), "submit", "offline", "--base-preset",
             "micro", "--set", "base.max_train_tokens=4096", "--set", "base.max_val_tokens=1024",
             "--set", "base.num_epochs=1", "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stdout + submit.stderr
        run_id = json.loads(submit.stdout)["id"]

        def ended():
            run = httpx.get(f"{url}/experiments/{run_id}", timeout=10).json()
            return run if run["status"] in ("succeeded", "failed", "cancelled") else None

        final = wait_for(ended, timeout=180, interval=0.5, what="the run to end")
        assert final["status"] == "succeeded", (
            final["error"], (tmp_path / "worker.log").read_text()[-3000:]
        )  # fmt: skip
    finally:
        stop(worker)
        stop(api)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_run_worker_is_the_readmes_celery_command():
    # ./run worker stands for the command the README names beside it
    text = (ROOT / "run").read_text()
    assert 'celery" -A worker.celery_app worker -Q gpu --prefetch-multiplier 1' in text
    assert 'uvicorn" api.main:app --port 8000' in text
