"""Seeds trained together when their worker dies (worker.together): a real Celery worker
SIGKILLed mid-stack, another taking the study's runs over, each from its own checkpoint,
with exactly one row per epoch. Settings as tests/worker/test_faults.py's (a heartbeat
timeout of 3 s)."""

from __future__ import annotations

import pytest

from tests.client import make_client, wait_finished
from tests.factories import assert_one_row_per_epoch, fast_base
from tests.waiting import wait_for

pytestmark = pytest.mark.services  # real Postgres/Redis and workers (see tests/fixtures/)

EPOCHS = 6


def test_a_sigkilled_worker_mid_stack_leaves_each_seed_to_resume_from_its_checkpoint(
    deployment, start_worker
):
    settings = deployment()
    with make_client(settings) as api:
        left = start_worker(settings, name="left")
        response = api.post("/studies", json={
            "name": "stacked", "base_preset": "micro", "experiments": ["baseline"], "seeds": 3,
            "base": fast_base(num_epochs=EPOCHS, max_train_tokens=8192, seeds_together=True),
        })  # fmt: skip
        assert response.status_code == 201, response.text
        members = [m["id"] for m in response.json()["members"]]

        def a_stack_two_epochs_in() -> list[int] | None:
            runs = [api.get(f"/experiments/{i}").json() for i in members]
            stack = [r["id"] for r in runs if r["status"] == "running" and r["current_epoch"] >= 2]
            return stack if len(stack) == 3 else None  # three seeds, one process

        killed = wait_for(a_stack_two_epochs_in, timeout=120, interval=0.2, what="a stack")
        left.kill()  # main process and pool process: nothing hands anything back
        start_worker(settings, name="right")
        for i in members:  # the killed stack's runs taken over, the others trained once
            final = wait_finished(api, i, timeout=180)
            assert final["status"] == "succeeded", final["error"]
            assert (final["restarts"], final["current_epoch"]) == (int(i in killed), EPOCHS)
            assert final["worker_name"].startswith("right@")
            assert_one_row_per_epoch(settings.database_url, final)
            assert api.get(f"/experiments/{i}/result").json()["together"]["replicas"] == 3
            log = api.get(f"/experiments/{i}/logs").text
            assert log.count("trained together as one stack") == 1 + (i in killed), i
            # each from its own checkpoint, together again
            assert ("resuming from checkpoint.pt" in log) == (i in killed), i
