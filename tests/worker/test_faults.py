"""Faults, with the real components: workers SIGKILLed or told to stop (SIGTERM), a pool
process killed again and again, the broker restarted with and without its data, the
database stopped, a database reset under kept artifacts. Each test is bounded in time and
asserts what the user sees: the run ends as it should, with exactly one row per epoch.

Settings are the tests' (tests/fixtures/services.py): MOE_HEARTBEAT_TIMEOUT 3 s, a sweep every
0.5 s, and the broker's visibility timeout at its default of hours, so that every takeover
here is the lease's doing."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from local_deployment.servers import PostgresCluster, RedisServer
from store.queue import TrainingQueue, create_celery
from tests.client import make_client, read_run, submit, wait_finished, wait_for_run
from tests.factories import assert_one_row_per_epoch, epoch_rows, fast_base
from tests.waiting import wait_for

pytestmark = pytest.mark.services  # real Postgres/Redis and workers (see tests/fixtures/)


def losses(api, experiment_id: int) -> list[tuple[float, ...]]:
    return [
        (e["train"]["loss"], e["train"]["ce_loss"], e["train"]["aux_loss"],
         e["val"]["loss"], e["val"]["ce_loss"], e["val"]["aux_loss"])
        for e in api.get(f"/experiments/{experiment_id}/metrics").json()["epochs"]
    ]  # fmt: skip


# ---------------------------------------------------------------------------- workers


def test_a_sigkilled_worker_is_resumed_by_another_within_the_heartbeat_timeout(
    deployment, start_worker
):
    settings = deployment()
    assert settings.visibility_timeout == 6 * 3600  # the default: no help from the broker
    with make_client(settings) as api:
        pool = {name: start_worker(settings, name=name) for name in ("left", "right")}
        run = submit(api, "lost", base=fast_base(num_epochs=8, max_train_tokens=8192))
        first = wait_for_run(
            api, run["id"], lambda r: r["current_epoch"] >= 2, timeout=90, what="two epochs"
        )
        owner = first["worker_name"].partition("@")[0]
        (rescuer,) = set(pool) - {owner}
        pool[owner].kill()  # main process and pool process: nothing can ack or hand back
        killed_at = time.monotonic()

        resumed = wait_for_run(
            api, run["id"], lambda r: r["attempts"] == 2, timeout=60, what="the takeover"
        )
        recovery = time.monotonic() - killed_at
        assert recovery < settings.heartbeat_timeout + 30, recovery
        assert resumed["worker_name"].startswith(f"{rescuer}@") and resumed["restarts"] == 1

        final = wait_finished(api, run["id"])
        assert final["status"] == "succeeded", final["error"]
        assert (final["attempts"], final["restarts"], final["current_epoch"]) == (2, 1, 8)
    assert_one_row_per_epoch(settings.database_url, final)


def test_a_killed_pool_process_is_resumed_at_once_by_its_own_worker(deployment, start_worker):
    """The worker's agent sees the process that held the run gone and re-queues the run
    (Celery requeues the task too; whichever comes first takes it, the other does nothing)."""
    settings = deployment()
    with make_client(settings) as api:
        worker = start_worker(settings, name="survivor")
        run = submit(api, "child", base=fast_base(num_epochs=5, max_train_tokens=8192))
        wait_for_run(api, run["id"], lambda r: r["current_epoch"] >= 1, timeout=90, what="an epoch")
        (child,) = worker.pool_pids
        os.kill(child, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for_run(api, run["id"], lambda r: r["attempts"] == 2, timeout=30, what="the takeover")
        assert time.monotonic() - killed_at < 15
        final = wait_finished(api, run["id"])
        assert final["status"] == "succeeded", final["error"]
        assert (final["attempts"], final["restarts"]) == (2, 1)
    assert_one_row_per_epoch(settings.database_url, final)


def test_a_pool_process_killed_on_every_attempt_fails_the_run_after_max_restarts(
    deployment, start_worker
):
    settings = deployment(max_restarts=2)
    with make_client(settings) as api:
        worker = start_worker(settings, name="oom")
        run = submit(api, "oom", base=fast_base(num_epochs=200, max_train_tokens=8192))
        for attempt in (1, 2, 3):
            wait_for_run(
                api,
                run["id"],
                lambda r, a=attempt: r["attempts"] == a and r["status"] == "running",
                timeout=60,
                what=f"attempt {attempt}",
            )
            pids = wait_for(lambda: worker.pool_pids, timeout=10, what="the pool process")
            os.kill(pids[0], signal.SIGKILL)
        final = wait_finished(api, run["id"], timeout=60)
    assert final["status"] == "failed"
    assert "MOE_MAX_RESTARTS=2" in final["error"] and "died 3 times" in final["error"]
    assert (final["attempts"], final["restarts"]) == (3, 3)


def test_sigterm_hands_the_run_back_mid_epoch_and_the_losses_are_an_uninterrupted_runs(
    deployment, start_worker
):
    settings = deployment()
    with make_client(settings) as api:
        first = start_worker(settings, name="first")
        reference = submit(api, "reference", base=fast_base(num_epochs=3, max_train_tokens=16384))
        assert wait_finished(api, reference["id"])["status"] == "succeeded"

        run = submit(api, "scaled-in", base=fast_base(num_epochs=3, max_train_tokens=16384))
        wait_for_run(api, run["id"], lambda r: r["current_epoch"] >= 1, timeout=60, what="an epoch")
        time.sleep(0.3)  # into the next epoch
        first.terminate()
        terminated_at = time.monotonic()
        first.process.wait(timeout=30)
        exited_after = time.monotonic() - terminated_at
        assert first.process.returncode == 0 and exited_after < 30, exited_after
        handed = read_run(api, run["id"])
        assert (handed["status"], handed["handbacks"], handed["restarts"]) == ("queued", 1, 0)
        where = re.search(r"after step (\d+)/(\d+) .*; handed back", first.output())
        assert where and 0 < int(where[1]) < int(where[2]), "not stopped mid-epoch"

        start_worker(settings, name="second")
        final = wait_finished(api, run["id"])
        assert final["status"] == "succeeded", final["error"]
        assert final["worker_name"].startswith("second@") and final["attempts"] == 2
        resumed, uninterrupted = losses(api, run["id"]), losses(api, reference["id"])
    assert len(resumed) == len(uninterrupted) == 3
    for got, want in zip(resumed, uninterrupted, strict=True):
        assert got == pytest.approx(want, abs=1e-6, rel=0)
    assert_one_row_per_epoch(settings.database_url, final)


def test_a_second_delivery_of_a_running_or_finished_run_does_nothing(deployment, start_worker):
    """The broker's redelivery (visibility timeout) is only a backstop, and harmless."""
    settings = deployment()
    queue = TrainingQueue(create_celery(settings))
    with make_client(settings) as api:
        start_worker(settings, name="one")
        start_worker(settings, name="two")
        run = submit(api, "once", base=fast_base(num_epochs=4, max_train_tokens=8192))
        wait_for_run(api, run["id"], lambda r: r["status"] == "running", timeout=60, what="start")
        queue.enqueue([run["id"]])  # as if Redis handed the task out again
        final = wait_finished(api, run["id"])
        queue.enqueue([run["id"]])  # and once more after it ended
        time.sleep(1)
        again = read_run(api, run["id"])
    assert final["status"] == "succeeded" and final["attempts"] == again["attempts"] == 1
    assert_one_row_per_epoch(settings.database_url, final)


# ---------------------------------------------------------------------------- the broker


@pytest.fixture()
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.mark.parametrize("empty", [False, True], ids=["with-its-data", "empty"])
def test_a_restarted_broker_loses_no_run(deployment, start_worker, own_redis, empty):
    settings = deployment(broker_url=own_redis.url, broker_key_prefix="")
    with make_client(settings) as api:
        start_worker(settings, name="steady")
        running = submit(api, "running", base=fast_base(num_epochs=6, max_train_tokens=8192))
        waiting = [
            submit(api, f"waiting-{i}", base=fast_base(num_epochs=2, max_train_tokens=8192))
            for i in range(2)
        ]
        wait_for_run(
            api, running["id"], lambda r: r["current_epoch"] >= 1, timeout=60, what="an epoch"
        )
        own_redis.stop()
        time.sleep(1)
        own_redis.start(empty=empty)
        runs = [wait_finished(api, r["id"], timeout=120) for r in (running, *waiting)]
    for run in runs:
        assert run["status"] == "succeeded", run
        assert_one_row_per_epoch(settings.database_url, run)


# ---------------------------------------------------------------------------- the database


def test_the_database_stopped_for_10_s_mid_run_costs_a_pause_not_the_run(deployment, start_worker):
    cluster = PostgresCluster().start()
    try:
        settings = deployment(database_url=cluster.url)
        with make_client(settings) as api:
            start_worker(settings, name="patient")
            run = submit(api, "outage", base=fast_base(num_epochs=8, max_train_tokens=8192))
            wait_for_run(
                api, run["id"], lambda r: r["current_epoch"] >= 2, timeout=60, what="two epochs"
            )
            cluster.stop()
            down = api.get(f"/experiments/{run['id']}")
            assert down.status_code == 503 and down.headers["retry-after"]
            time.sleep(10)  # over three heartbeat timeouts (3 s here): nobody may be judged dead
            cluster.start()
            final = wait_finished(api, run["id"], timeout=120)
        assert final["status"] == "succeeded", final["error"]
        assert (final["attempts"], final["restarts"]) == (1, 0)  # nobody took it for dead
        assert_one_row_per_epoch(settings.database_url, final)
    finally:
        cluster.destroy()


def test_a_run_id_reused_after_a_database_reset_trains_from_scratch(
    deployment, start_worker, empty_postgres
):
    settings = deployment()
    with make_client(settings) as api:
        worker = start_worker(settings, name="before")
        old = submit(api, "old", base=fast_base(num_epochs=2, max_train_tokens=8192))
        assert wait_finished(api, old["id"])["status"] == "succeeded"
    worker.stop()

    reset = settings.model_copy(update={"database_url": empty_postgres()})  # artifacts kept
    deployment_after = deployment(database_url=reset.database_url,
                                  artifact_dir=settings.artifact_dir)  # fmt: skip
    with make_client(deployment_after) as api:
        start_worker(deployment_after, name="after")
        new = submit(api, "new", base=fast_base(num_epochs=3, max_train_tokens=8192))
        assert new["id"] == old["id"] and new["run_key"] != old["run_key"]
        final = wait_finished(api, new["id"])
    assert final["status"] == "succeeded" and final["current_epoch"] == 3
    assert epoch_rows(deployment_after.database_url, new["id"]) == [1, 2, 3]  # all trained here
