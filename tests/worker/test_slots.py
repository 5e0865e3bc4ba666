"""Several runs per GPU (MOE_RUNS_PER_GPU), held on the CPU with two slots per worker: both
train at once in one worker, and the lease, the SIGTERM handback, a killed pool process and
running out of GPU memory beside a neighbour each act on their own run only."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from store.db import session_scope
from store.models import Experiment
from tests.client import make_client, read_run, submit, wait_finished, wait_for_run
from tests.environment import ROOT
from tests.factories import assert_one_row_per_epoch, fast_base
from tests.waiting import wait_for

pytestmark = pytest.mark.services  # real Postgres/Redis and workers (see tests/fixtures/)

FAULTS = ROOT / "tests" / "fault_injection"


def running_together(api, ids: list[int], timeout: float = 90) -> list[dict]:
    def both():
        runs = [read_run(api, i) for i in ids]
        return runs if all(r and r["status"] == "running" for r in runs) else None

    return wait_for(both, timeout=timeout, interval=0.1, what="both runs training at once")


def test_two_slots_train_two_runs_at_once_in_one_worker(deployment, start_worker):
    settings = deployment(runs_per_gpu=2)
    with make_client(settings) as api:
        start_worker(settings, name="pair")
        runs = [
            submit(api, f"slot-{i}", base=fast_base(num_epochs=4, max_train_tokens=8192))
            for i in (0, 1)
        ]
        together = running_together(api, [r["id"] for r in runs])
        assert {r["worker_name"] for r in together} == {together[0]["worker_name"]}
        (worker,) = api.get("/workers").json()["items"]
        assert (worker["slots"], worker["state"]) == (2, "busy")
        assert worker["slots_in_use"] >= 1  # the first to finish may already be done
        finals = [wait_finished(api, r["id"]) for r in runs]
    for final in finals:
        assert final["status"] == "succeeded", final["error"]
        assert (final["attempts"], final["precision"]) == (1, "fp32")
        assert_one_row_per_epoch(settings.database_url, final)


def test_sigterm_hands_back_every_slots_run_and_another_worker_finishes_both(
    deployment, start_worker
):
    settings = deployment(runs_per_gpu=2)
    with make_client(settings) as api:
        first = start_worker(settings, name="first")
        runs = [
            submit(api, f"scaled-in-{i}", base=fast_base(num_epochs=4, max_train_tokens=16384))
            for i in (0, 1)
        ]
        running_together(api, [r["id"] for r in runs])
        wait_for_run(
            api, runs[0]["id"], lambda r: r["current_epoch"] >= 1, timeout=60, what="an epoch"
        )
        first.terminate()
        first.process.wait(timeout=30)
        assert first.process.returncode == 0
        handed = [read_run(api, r["id"]) for r in runs]
        assert [(h["status"], h["handbacks"], h["restarts"]) for h in handed] == [
            ("queued", 1, 0), ("queued", 1, 0),
        ]  # fmt: skip
        start_worker(settings, name="second")
        finals = [wait_finished(api, r["id"]) for r in runs]
    for final in finals:
        assert final["status"] == "succeeded", final["error"]
        assert (final["attempts"], final["current_epoch"]) == (2, 4)
        assert final["worker_name"].startswith("second@")
        assert_one_row_per_epoch(settings.database_url, final)


def test_a_killed_pool_process_costs_only_its_own_run_a_restart(deployment, start_worker):
    settings = deployment(runs_per_gpu=2)
    with make_client(settings) as api:
        worker = start_worker(settings, name="pair")
        runs = [
            submit(api, f"kill-{i}", base=fast_base(num_epochs=5, max_train_tokens=8192))
            for i in (0, 1)
        ]
        running_together(api, [r["id"] for r in runs])
        # the lease's owner names its process: host:pid:nonce (worker.lease.new_owner_id)
        with session_scope(settings.database_url) as session:
            owner = session.get(Experiment, runs[0]["id"]).worker
        os.kill(int(owner.split(":")[1]), signal.SIGKILL)
        wait_for_run(
            api, runs[0]["id"], lambda r: r["attempts"] == 2, timeout=30, what="the takeover"
        )
        finals = [wait_finished(api, r["id"]) for r in runs]
        # Celery replaces the killed process: soon, not necessarily before the runs end
        wait_for(lambda: len(worker.pool_pids) == 2, timeout=30, interval=0.2,
                 what="the pool back to 2 processes")  # fmt: skip
    assert [f["status"] for f in finals] == ["succeeded", "succeeded"]
    assert [(f["attempts"], f["restarts"]) for f in finals] == [(2, 1), (1, 0)]
    for final in finals:
        assert_one_row_per_epoch(settings.database_url, final)


def oom_env(tmp_path: Path, run: str, step: int, times: int) -> dict[str, str]:
    (tmp_path / "oom").mkdir(exist_ok=True)
    pythonpath = os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": pythonpath, "MOE_TEST_OOM": f"{run}:{step}:{times}",
            "MOE_TEST_OOM_DIR": str(tmp_path / "oom")}  # fmt: skip


def test_out_of_gpu_memory_beside_a_neighbour_hands_the_run_back_not_a_crash(
    deployment, start_worker, tmp_path
):
    """torch.cuda.OutOfMemoryError injected at step 5 of one run, once: that run goes back
    to the queue (a handback, not a restart), is offered again after a pause and finishes
    with every epoch once; its neighbour never notices."""
    settings = deployment(runs_per_gpu=2)
    with make_client(settings) as api:
        start_worker(settings, name="pair", env=oom_env(tmp_path, "squeezed", 5, 1))
        squeezed = submit(api, "squeezed", base=fast_base(num_epochs=3, max_train_tokens=8192))
        neighbour = submit(api, "neighbour", base=fast_base(num_epochs=3, max_train_tokens=8192))
        handed = wait_for_run(
            api, squeezed["id"], lambda r: r["oom_handbacks"] == 1, timeout=90, what="the handback"
        )
        assert handed["restarts"] == 0 and handed["status"] in ("queued", "running")
        finals = [wait_finished(api, r["id"], timeout=120) for r in (squeezed, neighbour)]
    assert [f["status"] for f in finals] == ["succeeded", "succeeded"], finals[0]["error"]
    assert [(f["oom_handbacks"], f["handbacks"], f["restarts"]) for f in finals] == [
        (1, 1, 0), (0, 0, 0),
    ]  # fmt: skip
    assert len(list((tmp_path / "oom").iterdir())) == 1
    for final in finals:
        assert_one_row_per_epoch(settings.database_url, final)


def test_a_run_out_of_gpu_memory_on_every_try_fails_saying_so(deployment, start_worker, tmp_path):
    settings = deployment(max_oom_handbacks=1)
    with make_client(settings) as api:
        start_worker(settings, name="small", env=oom_env(tmp_path, "too-big", 2, 99))
        run = submit(api, "too-big", base=fast_base(num_epochs=2, max_train_tokens=8192))
        started = time.monotonic()
        final = wait_finished(api, run["id"], timeout=90)
    assert final["status"] == "failed"
    assert "out of GPU memory 2 times" in final["error"]
    assert "MOE_RUNS_PER_GPU" in final["error"] and "MOE_MAX_OOM_HANDBACKS" in final["error"]
    assert (final["oom_handbacks"], final["restarts"]) == (1, 0)
    assert time.monotonic() - started >= 10  # the retry waited (worker.gpu_memory.retry_delay)
