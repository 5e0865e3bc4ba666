"""A run on several GPUs through the service, held on the CPU: a worker with two slots
trains a `gpus: 2` run under torchrun (two gloo processes); rank 0 streams its epochs and
the run is judged against a dense run like any other. A SIGTERM hands it back and another
worker resumes it; a killed rank costs one restart."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from store.db import session_scope
from store.models import Experiment
from tests.client import make_client, read_run, submit, wait_finished, wait_for_run
from tests.factories import assert_one_row_per_epoch, fast_base
from tests.waiting import wait_for

pytestmark = pytest.mark.services  # real Postgres/Redis, workers and torchrun

TOP2 = {"preset": "top2", "config": {"dropout": 0.0}}


def ranked_base(**overrides):
    return fast_base(gpus=2, expert_parallel=2, **overrides)


def rank_pids(worker_pid: int) -> list[int]:
    """The worker's rank processes: `-m worker.ranks` anywhere below it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker.ranks" in argv and b"torch.distributed.run" not in argv:
            found.append(int(entry.name))
    return found


def test_a_two_gpu_run_trains_on_two_ranks_and_is_judged_against_dense(deployment, start_worker):
    settings = deployment(runs_per_gpu=2, max_gpus_per_run=2)
    with make_client(settings) as api:
        start_worker(settings, name="pair")
        dense = submit(api, "dense", dense=True, base=fast_base(num_epochs=2))
        dense_final = wait_finished(api, dense["id"])
        assert dense_final["status"] == "succeeded", dense_final["error"]
        moe = submit(api, "ranked", baseline_id=dense["id"], base=ranked_base(num_epochs=2),
                     **TOP2)  # fmt: skip
        final = wait_finished(api, moe["id"], timeout=240)
        assert final["status"] == "succeeded", final["error"]
        assert (final["attempts"], final["restarts"]) == (1, 0)
        assert_one_row_per_epoch(settings.database_url, final)
        result = api.get(f"/experiments/{moe['id']}/result").json()
        assert result["parallel"] == {"gpus": 2, "expert_parallel": 2}
        verdict = api.get(f"/experiments/{moe['id']}/verdict")
        assert verdict.status_code == 200, verdict.text
        assert verdict.json()["baseline_id"] == dense["id"]
        # the run's whole model was gathered by rank 0: every expert, as one process has them
        listing = api.get(f"/experiments/{moe['id']}/artifacts").json()["items"]
        files = {f["name"] for f in listing}
        assert {"model.pt", "result.json", "run.log"} <= files


def test_gpus_beyond_the_deployment_are_refused_before_queueing(deployment):
    settings = deployment(max_gpus_per_run=2)
    with make_client(settings) as api:
        response = api.post("/experiments", json={"name": "big", "base_preset": "micro",
                                                  "base": fast_base(gpus=4)})  # fmt: skip
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "base", "gpus"]
        assert api.get("/experiments").json()["total"] == 0


def test_sigterm_hands_a_ranked_run_back_and_another_worker_resumes_it(deployment, start_worker):
    settings = deployment(runs_per_gpu=2, max_gpus_per_run=2)
    with make_client(settings) as api:
        first = start_worker(settings, name="first")
        run = submit(api, "ranked-handback", base=ranked_base(num_epochs=4), **TOP2)
        wait_for_run(api, run["id"], lambda r: r["current_epoch"] >= 1, timeout=180,
                     what="an epoch on two ranks")  # fmt: skip
        first.terminate()
        first.process.wait(timeout=60)
        assert first.process.returncode == 0
        handed = read_run(api, run["id"])
        assert (handed["status"], handed["handbacks"], handed["restarts"]) == ("queued", 1, 0)
        assert not rank_pids(first.process.pid)  # no rank outlives its worker
        start_worker(settings, name="second")
        final = wait_finished(api, run["id"], timeout=240)
    assert final["status"] == "succeeded", final["error"]
    assert (final["attempts"], final["current_epoch"]) == (2, 4)
    assert final["worker_name"].startswith("second@")
    assert_one_row_per_epoch(settings.database_url, final)


def test_a_killed_rank_costs_one_restart(deployment, start_worker):
    settings = deployment(runs_per_gpu=2, max_gpus_per_run=2)
    with make_client(settings) as api:
        worker = start_worker(settings, name="kills")
        run = submit(api, "ranked-kill", base=ranked_base(num_epochs=3), **TOP2)
        wait_for_run(api, run["id"], lambda r: r["current_epoch"] >= 1, timeout=180,
                     what="an epoch on two ranks")  # fmt: skip
        ranks = wait_for(lambda: rank_pids(worker.process.pid) or None, timeout=30,
                         what="the rank processes")  # fmt: skip
        os.kill(max(ranks), signal.SIGKILL)  # the higher pid: not necessarily rank 0
        final = wait_finished(api, run["id"], timeout=240)
    assert final["status"] == "succeeded", final["error"]
    assert (final["restarts"], final["attempts"], final["current_epoch"]) == (1, 2, 3)
    assert_one_row_per_epoch(settings.database_url, final)
    with session_scope(settings.database_url) as session:
        assert session.get(Experiment, run["id"]).handbacks == 0


def test_a_run_checkpointed_on_two_ranks_finishes_on_one(deployment, start_worker):
    """The checkpoint of a run on several ranks is a DCP directory that any number of ranks
    reads (moe_core.sharded_checkpoint): here an operator moved a handed-back run to one
    GPU (its row's layout edited, as no request may), and one process finishes it."""
    settings = deployment(runs_per_gpu=2, max_gpus_per_run=2)
    with make_client(settings) as api:
        first = start_worker(settings, name="two")
        run = submit(api, "ranked-to-one", base=ranked_base(num_epochs=3), **TOP2)
        wait_for_run(api, run["id"], lambda r: r["current_epoch"] >= 1, timeout=180,
                     what="an epoch on two ranks")  # fmt: skip
        first.terminate()
        first.process.wait(timeout=60)
        assert read_run(api, run["id"])["status"] == "queued"
        with session_scope(settings.database_url) as session:
            row = session.get(Experiment, run["id"])
            row.base = {**row.base, "gpus": 1, "expert_parallel": 1}
            session.commit()
        start_worker(settings.model_copy(update={"runs_per_gpu": 1}), name="one")
        final = wait_finished(api, run["id"], timeout=240)
        log = api.get(f"/experiments/{run['id']}/logs").text
    assert final["status"] == "succeeded", final["error"]
    assert (final["attempts"], final["current_epoch"]) == (2, 3)
    assert "resuming from checkpoint.dcp (several ranks')" in log
    assert_one_row_per_epoch(settings.database_url, final)
