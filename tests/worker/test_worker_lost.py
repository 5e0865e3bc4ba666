"""A worker killed mid-run (SIGKILL, main process and pool child together, as when a node
or container dies): its unacknowledged task comes back from Redis once the visibility
timeout has passed (here 4 s; kombu restores it when the next worker starts or at its
next sweep), and the new worker resumes the run from the last checkpoint."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from store.db import session_scope
from store.models import EpochMetrics, ExpertStats
from tests.conftest import make_client, micro_base, wait_for

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/conftest.py)

EPOCHS = 6


def submit_and_wait_for_epochs(api, name: str, *, epochs: int, finished: int) -> dict:
    """Submit a micro run of `epochs` epochs; return it once `finished` epochs are recorded."""
    base = micro_base(num_epochs=epochs, max_train_tokens=8192)
    run = api.post("/experiments", json={"name": name, "base_preset": "micro", "base": base}).json()
    wait_for(
        lambda: len(api.get(f"/experiments/{run['id']}/metrics").json()["epochs"]) >= finished,
        timeout=90,
        what=f"{finished} finished epochs",
    )
    return run


def test_killed_worker_is_resumed_by_another_with_one_row_per_epoch(worker_settings, start_worker):
    with make_client(worker_settings) as api:
        first = start_worker(worker_settings, name="doomed")
        run = submit_and_wait_for_epochs(api, "lost", epochs=EPOCHS, finished=2)
        first.kill()
        killed_at = time.time()
        state = api.get(f"/experiments/{run['id']}").json()
        assert state["status"] == "running" and state["current_epoch"] < EPOCHS

        start_worker(worker_settings, name="rescuer")

        def finished():
            body = api.get(f"/experiments/{run['id']}").json()
            return body if body["status"] != "running" else None

        final = wait_for(finished, timeout=120, interval=0.2, what="the resumed run")
        assert final["status"] == "succeeded", final["error"]
        assert final["attempts"] == 2 and final["current_epoch"] == EPOCHS

        epochs = api.get(f"/experiments/{run['id']}/metrics").json()["epochs"]
        assert [epoch["epoch"] for epoch in epochs] == list(range(1, EPOCHS + 1))

    with session_scope(worker_settings.database_url) as session:
        rows = session.execute(
            select(EpochMetrics.epoch, EpochMetrics.recorded_at).where(
                EpochMetrics.experiment_id == run["id"]
            )
        ).all()
        stats = session.execute(
            select(ExpertStats.epoch, func.count())
            .where(ExpertStats.experiment_id == run["id"])
            .group_by(ExpertStats.epoch)
        ).all()
    assert sorted(epoch for epoch, _ in rows) == list(range(1, EPOCHS + 1))  # no duplicates
    assert dict(stats) == {epoch: 2 for epoch in range(1, EPOCHS + 1)}  # two MoE layers each
    # Epoch 1's checkpoint was on disk before epoch 2's row: the resumed run started after
    # it, so epoch 1 was not trained (nor written) again.
    recorded = dict(rows)
    assert recorded[1].timestamp() < killed_at


def test_a_killed_pool_child_is_requeued_and_resumed_by_its_own_worker(
    worker_settings, start_worker
):
    """reject_on_worker_lost: the main process sees its child die and requeues at once."""
    with make_client(worker_settings) as api:
        worker = start_worker(worker_settings, name="survivor")
        run = submit_and_wait_for_epochs(api, "child", epochs=4, finished=1)
        children = Path(f"/proc/{worker.process.pid}/task/{worker.process.pid}/children")
        (child,) = map(int, children.read_text().split())
        os.kill(child, signal.SIGKILL)

        final = wait_for(
            lambda: (
                (body := api.get(f"/experiments/{run['id']}").json())["status"] != "running"
                and body
            ),
            timeout=120,
            interval=0.2,
            what="the requeued run",
        )
        assert final["status"] == "succeeded", final["error"]
        assert final["attempts"] == 2
        epochs = api.get(f"/experiments/{run['id']}/metrics").json()["epochs"]
        assert [epoch["epoch"] for epoch in epochs] == [1, 2, 3, 4]
    assert "WorkerLostError" in worker.output()
