"""`moe-lab sweep` end to end: the CLI as a process, a real API server and a real worker on
Postgres and Redis, a micro grid sweep ranked as the API ranks it."""

from __future__ import annotations

import json

import pytest

from tests.moe_lab.test_cli_e2e import moe_lab

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def settings(deployment):
    return deployment(progress_interval=0.2)


SWEEP = """
name: cli-sweep
base_preset: micro
base: {max_train_tokens: 4096, max_val_tokens: 1024, num_epochs: 2}
overrides: {num_experts: 2, top_k: 2, capacity_factor: 2.0}
space:
  learning_rate: {choices: [0.003, 0.001]}
method: grid
seeds: 1
parallel: 2
"""


def test_sweep_submit_wait_ranks_the_trials_and_show_and_cancel_read_it(
    settings, start_api, start_worker, tmp_path
):
    server = start_api(settings).url
    start_worker(settings)
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP)
    plan = moe_lab(server, "sweep", "submit", str(path), "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.strip() == "2 trials, a grid of 2 points: 3 runs (at most 400)"

    done = moe_lab(server, "sweep", "submit", str(path), "--wait", timeout=300)
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        "sweep 1 'cli-sweep': finished, grid, 2 of 2 trials (2 complete) x 1 seed(s)"
    )
    shown = json.loads(moe_lab(server, "sweep", "show", "1", "--json").stdout)
    rows = [line.split() for line in lines if line.split() and line.split()[0] in ("0", "1")]
    assert [int(row[0]) for row in rows] == shown["ranking"]  # best first, as the API ranks
    for row, number in zip(rows, shown["ranking"], strict=True):
        mean = shown["trials"][number]["objective"]["mean"]
        assert row[1] == "complete" and row[2] == f"{mean:+.4f}"
    assert f"best: trial {shown['best_trial']}" in done.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(SWEEP.replace("learning_rate", "hidden_dim"))
    refused = moe_lab(server, "sweep", "submit", str(bad))
    assert (
        refused.returncode == 1
        and "hidden_dim" in refused.stderr
        and len(refused.stderr.splitlines()) == 1
    )
    cancelled = moe_lab(server, "sweep", "cancel", "1")
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == "sweep 1: finished"

    # a worker's paths are not a YAML's to choose: one line, naming the field
    paths = tmp_path / "paths.yaml"
    paths.write_text(SWEEP.replace("num_epochs: 2}", "num_epochs: 2, data_dir: /srv/data}"))
    refused = moe_lab(server, "sweep", "submit", str(paths))
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1
    assert "base.data_dir" in refused.stderr, refused.stderr
    deleted = moe_lab(server, "sweep", "delete", "1", "--yes")
    assert deleted.returncode == 0 and deleted.stdout.strip() == "deleted sweep 1"
    assert moe_lab(server, "sweep", "show", "1").returncode == 1
