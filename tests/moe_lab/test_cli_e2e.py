"""`moe-lab submit --wait` end to end: the CLI as a process, a real API server (uvicorn) and a
real worker on Postgres and Redis, training micro runs on the generated corpus."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from moe_lab.client import Client
from tests.environment import ROOT

pytestmark = pytest.mark.services  # real Postgres/Redis and processes (see tests/fixtures/)


@pytest.fixture(scope="module")
def settings(deployment):
    # Progress every 0.1 s, and streams that look as often: a micro epoch lasts half a second.
    return deployment(progress_interval=0.1, event_poll_seconds=0.1)


def moe_lab(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_")}
    env.update(MOE_API_URL=url, COLUMNS="120")
    return subprocess.run(
        [sys.executable, "-m", "moe_lab", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


MICRO = ["--base-preset", "micro", "--set", "base.max_train_tokens=8192",
         "--set", "base.max_val_tokens=1024"]  # fmt: skip


def test_submit_wait_shows_progress_epochs_and_the_verdict(settings, start_api, start_worker):
    server = start_api(settings).url
    start_worker(settings)
    started = time.monotonic()
    dense = moe_lab(server, "submit", "dense", "--dense", *MICRO, "--set", "base.num_epochs=1",
                    "--wait")  # fmt: skip
    print(dense.stdout, dense.stderr)
    assert dense.returncode == 0, dense.stderr
    dense_id = int(re.match(r"submitted experiment (\d+) 'dense'", dense.stdout).group(1))
    assert f"experiment {dense_id} succeeded: best val CE " in dense.stdout

    moe = moe_lab(server, "submit", "moe", "--preset", "top2", *MICRO,
                  "--set", "base.num_epochs=3", "--baseline", str(dense_id),
                  "--tag", "e2e", "--wait")  # fmt: skip
    print(moe.stdout, moe.stderr)
    assert moe.returncode == 0, moe.stderr
    lines = moe.stdout.splitlines()
    moe_id = int(
        re.match(r"submitted experiment (\d+) 'moe': top2 on micro, 3 epochs", lines[0]).group(1)
    )
    # the progress, as lines off a terminal: the phase and epoch as the run enters them
    progress = [line.strip() for line in lines if line.startswith("  epoch ")]
    assert progress and all(
        re.match(r"epoch [123]/3 (preparing data|training|evaluating)", line) for line in progress
    ), lines
    assert any(re.fullmatch(r"epoch \d/3 training: step \d+/\d+, [\d,]+ tok/s, ETA .+", line)
               for line in progress), lines  # fmt: skip
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"]  # each once, in order
    for line in epochs:
        assert re.match(
            r"epoch \d/3  train loss \d+\.\d{4}  val CE \d+\.\d{4}  val loss \d+\.\d{4}  "
            r"[\d,]+ tok/s", line
        ), line  # fmt: skip
    assert f"experiment {moe_id} succeeded: best val CE " in moe.stdout
    assert f"verdict against dense run {dense_id}: " in moe.stdout
    marks = {line.split()[1]: line.split()[0] for line in lines
             if len(line.split()) > 1 and line.split()[1] in ("primary", "secondary", "tertiary")}  # fmt: skip
    assert set(marks) == {"primary", "secondary", "tertiary"}
    assert marks["primary"] in "✓✗" and marks["tertiary"] in "✓✗"
    # what the CLI printed is what the API judged
    verdict = Client(server).verdict(moe_id)
    assert marks["primary"] == ("✓" if verdict["primary"]["passed"] else "✗")
    assert ("passed" if verdict["passed"] else "not passed") in moe.stdout
    assert time.monotonic() - started < 60
