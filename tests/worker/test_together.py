"""A study's seeds trained together by a worker (worker.together): one pool process claims
the runs that differ in their seed alone and trains them as one stack, each still a run
of its own. The attempts run in-process (worker.training.run_experiment: the leases, their
monitors, the store and the engine, for real), at dropout 0, where a stack gives what
separate runs give."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from store import artifacts, catalogue, leases, results
from store.db import session_scope
from store.models import Experiment, utcnow
from store.queue import TrainingQueue
from tests.factories import epoch_rows, new_study, run_row
from worker import lease as lease_module
from worker.training import run_experiment

pytestmark = pytest.mark.services

SEEDS = (1337, 1338, 1339)
EPOCHS = 3


def study(settings, *, together: bool | None) -> dict[int, int]:
    """A 3-seed study of the baseline preset alone: {seed: run id}."""
    runs = new_study(settings.database_url, seeds=len(SEEDS), dense=False,
                     config={"dropout": 0.0}, num_epochs=EPOCHS, seeds_together=together)  # fmt: skip
    return {seed: runs[("baseline", seed)] for seed in SEEDS}


def attempt(settings, experiment_id: int) -> None:
    run_experiment(experiment_id, settings=settings, queue=TrainingQueue.for_settings(settings))


def curve(settings, experiment_id: int) -> list[float]:
    with session_scope(settings.database_url) as session:
        run = catalogue.get_experiment(session=session, experiment_id=experiment_id)
        assert run is not None and run.metrics is not None
        return run.metrics["val_ce_losses"]


@pytest.fixture(scope="module")
def apart(deployment) -> list[list[float]]:
    """Each seed's validation curve trained as a run of its own (seeds_together unset: on a
    CPU the policy keeps them apart, one run to an attempt)."""
    settings = deployment()
    ids = study(settings, together=None)
    attempt(settings, ids[SEEDS[0]])
    assert [run_row(settings.database_url, i).status for i in ids.values()] == [
        "succeeded", "queued", "queued"]  # fmt: skip
    for seed in SEEDS[1:]:
        attempt(settings, ids[seed])
    return [curve(settings, ids[seed]) for seed in SEEDS]


def assert_same_curves(settings, ids: dict[int, int], apart: list[list[float]]) -> None:
    for seed, expected in zip(SEEDS, apart, strict=True):
        assert curve(settings, ids[seed]) == pytest.approx(expected, abs=1e-4), seed


def test_a_studys_seeds_train_as_one_stack_each_a_run_of_its_own(deployment, apart):
    settings = deployment()
    ids = study(settings, together=True)
    attempt(settings, ids[SEEDS[0]])  # one attempt trains the three
    for seed in SEEDS:
        run = run_row(settings.database_url, ids[seed])
        assert (run.status, run.attempts, run.current_epoch) == ("succeeded", 1, EPOCHS)
        assert epoch_rows(settings.database_url, ids[seed]) == list(range(1, EPOCHS + 1))
        directory = artifacts.run_dir(settings, run.run_key)
        # its own weights, result and a one-process checkpoint any later attempt resumes
        for name in (artifacts.MODEL, artifacts.RESULT, artifacts.CHECKPOINT):
            assert (directory / name).is_file(), (seed, name)
        log = (directory / artifacts.LOG).read_text()
        assert "trained together as one stack" in log
        assert log.count("epoch 1: train loss") == 1  # its own epochs, not its siblings' too
        assert results.stored_result(run)["together"] == {"replicas": 3, "index": SEEDS.index(seed)}
    assert_same_curves(settings, ids, apart)


def test_a_stack_stopped_by_a_shutdown_resumes_each_run_from_its_checkpoint(
    deployment, apart, monkeypatch
):
    settings = deployment()
    ids = study(settings, together=True)
    stopping = []
    record_epoch = lease_module.RunLease.record_epoch

    def record_then_stop(self, record):  # the worker is told to stop after epoch 1
        record_epoch(self, record)
        stopping.append(record["epoch"])

    monkeypatch.setattr(lease_module.RunLease, "record_epoch", record_then_stop)
    monkeypatch.setattr(lease_module.shutdown, "requested", lambda: bool(stopping))
    attempt(settings, ids[SEEDS[0]])
    for seed in SEEDS:  # each handed back at epoch 1, its checkpoint there
        run = run_row(settings.database_url, ids[seed])
        assert (run.status, run.current_epoch, run.handbacks) == ("queued", 1, 1)
    monkeypatch.setattr(lease_module.shutdown, "requested", lambda: False)
    stopping.clear()
    attempt(settings, ids[SEEDS[0]])  # a later attempt takes the three again, and resumes:
    assert sorted(stopping) == [2, 2, 2, 3, 3, 3]  # epoch 1 is not trained again
    for seed in SEEDS:
        run = run_row(settings.database_url, ids[seed])
        assert (run.status, run.attempts, run.current_epoch) == ("succeeded", 2, EPOCHS)
        assert epoch_rows(settings.database_url, ids[seed]) == list(range(1, EPOCHS + 1))
    assert_same_curves(settings, ids, apart)


def test_a_seed_cancelled_leaves_the_stack_and_the_others_go_on(deployment, apart, monkeypatch):
    settings = deployment()
    ids = study(settings, together=True)
    cancelled = ids[SEEDS[1]]
    record_epoch = lease_module.RunLease.record_epoch

    seen = []

    def record_then_cancel(self, record):  # its user cancels it after its first epoch
        record_epoch(self, record)
        if self.experiment_id == cancelled and record["epoch"] == 1:
            with session_scope(settings.database_url) as session:
                catalogue.request_cancel(session=session, experiment_id=cancelled,
                                         stale_before=leases.stale_cutoff(60))  # fmt: skip
        if record["epoch"] == EPOCHS:  # the others' last epoch: is it ended already?
            seen.append(run_row(settings.database_url, cancelled).status)

    monkeypatch.setattr(lease_module.RunLease, "record_epoch", record_then_cancel)
    attempt(settings, ids[SEEDS[0]])
    # ended as it left the stack, not when the stack was done
    assert seen == ["cancelled", "cancelled"]
    assert run_row(settings.database_url, cancelled).status == "cancelled"
    for seed in (SEEDS[0], SEEDS[2]):
        assert run_row(settings.database_url, ids[seed]).status == "succeeded"
        assert curve(settings, ids[seed]) == pytest.approx(apart[SEEDS.index(seed)], abs=1e-4)


def test_a_seed_stopped_within_an_epoch_is_left_to_resume_alone(deployment, apart, monkeypatch):
    # Seed 1338 trained alone (its siblings not due yet) and a shutdown stopped it within
    # its first epoch: its checkpoint is a step's, which a stack cannot resume.
    settings = deployment()
    ids = study(settings, together=True)
    later = utcnow() + timedelta(hours=1)
    with session_scope(settings.database_url) as session:
        session.execute(update(Experiment).where(Experiment.id.in_([ids[1337], ids[1339]]))
                        .values(queued_at=later))  # fmt: skip
        session.commit()
    stepped = []
    report = lease_module.RunLease.report_progress

    def report_then_stop(self, info):
        report(self, info)
        stepped.append(info["step"])

    monkeypatch.setattr(lease_module.RunLease, "report_progress", report_then_stop)
    monkeypatch.setattr(lease_module.shutdown, "requested", lambda: any(stepped))
    attempt(settings, ids[1338])
    assert (run_row(settings.database_url, ids[1338]).status, stepped[-1] > 0) == ("queued", True)
    monkeypatch.setattr(lease_module.shutdown, "requested", lambda: False)
    with session_scope(settings.database_url) as session:
        session.execute(update(Experiment).values(queued_at=utcnow()))
        session.commit()
    attempt(settings, ids[1337])  # 1337 and 1339 as a stack; 1338 handed back
    seed_1338 = run_row(settings.database_url, ids[1338])
    assert (seed_1338.status, seed_1338.handbacks) == ("queued", 2)
    log = (artifacts.run_dir(settings, seed_1338.run_key) / artifacts.LOG).read_text()
    assert "not at the epoch's end the runs it would train with resume from" in log
    attempt(settings, ids[1338])  # alone, from its step
    assert [run_row(settings.database_url, ids[s]).status for s in SEEDS] == ["succeeded"] * 3
    assert_same_curves(settings, ids, apart)


def test_a_stack_out_of_gpu_memory_comes_back_half_as_large(deployment, monkeypatch):
    import torch

    from worker import together

    settings = deployment()
    ids = study(settings, together=True)

    def out_of_memory(*args, **kwargs):  # the stack of three does not fit beside neighbours
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (a test's)")

    with monkeypatch.context() as patched:
        patched.setattr(together, "run_together", out_of_memory)
        attempt(settings, ids[SEEDS[0]])
    for seed in SEEDS:  # each handed back, to be offered again after a pause
        run = run_row(settings.database_url, ids[seed])
        assert (run.status, run.oom_handbacks) == ("queued", 1)
    with session_scope(settings.database_url) as session:  # the pause is over
        session.execute(update(Experiment).values(queued_at=utcnow()))
        session.commit()
    attempt(settings, ids[SEEDS[0]])  # one seed now: 3 halved is 1
    assert [run_row(settings.database_url, ids[s]).status for s in SEEDS] == [
        "succeeded", "queued", "queued"]  # fmt: skip
