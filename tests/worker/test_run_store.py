"""The worker's writes to the store: idempotent epoch rows and run ownership, on Postgres
and on SQLite (the embedded default)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import delete, func, select

from api import crud
from api.db import session_scope
from api.migrate import upgrade_database
from api.models import EpochMetrics, ExpertStats, Status, utcnow
from moe_core.config import base_config, get_experiment_configs

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/conftest.py)


@pytest.fixture(params=["postgres", "sqlite"])
def database(request, tmp_path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("database_url")
    upgrade_database(url)
    return url


@pytest.fixture()
def experiment_id(database) -> int:
    base = base_config("micro")
    with session_scope(database) as session:
        experiment = crud.create_experiment(
            session=session, name="t", config=get_experiment_configs(base)["baseline"], base=base
        )
        session.commit()
        return experiment.id


def record(epoch: int, loss: float, layers: tuple[int, ...] = (2, 4)) -> dict:
    losses = {"loss": loss, "ce_loss": loss - 0.01, "aux_loss": 0.01}
    return {
        "epoch": epoch,
        "train": losses,
        "val": losses,
        "tokens_per_sec": 1000.0,
        "steps": 8,
        "forward_time": 0.1,
        "backward_time": 0.2,
        "optimizer_time": 0.05,
        "gating_temperature": 1.0,
        "expert_stats": [
            {
                "layer": layer,
                "entropy": 2.0,
                "min_usage": 10.0,
                "max_usage": 15.0,
                "usage": [12.5] * 8,
                "dropped": 0.1,
            }
            for layer in layers
        ],  # fmt: skip
        "best_val_loss": loss,
        "patience_counter": 0,
        "stopped_early": False,
    }


def claim(database: str, experiment_id: int, owner: str, *, stale_after: float = 60) -> bool:
    with session_scope(database) as session:
        return crud.claim_experiment(
            session=session,
            experiment_id=experiment_id,
            owner=owner,
            device="cpu",
            stale_before=utcnow() - timedelta(seconds=stale_after),
        )


def write(database: str, experiment_id: int, owner: str, rec: dict) -> None:
    with session_scope(database) as session:
        crud.record_epoch(session=session, experiment_id=experiment_id, owner=owner, record=rec)


def counts(database: str, experiment_id: int) -> tuple[int, int]:
    with session_scope(database) as session:
        epochs = session.scalar(
            select(func.count()).where(EpochMetrics.experiment_id == experiment_id)
        )
        stats = session.scalar(
            select(func.count()).where(ExpertStats.experiment_id == experiment_id)
        )
        return epochs, stats


def test_a_replayed_epoch_overwrites_its_rows(database, experiment_id):
    assert claim(database, experiment_id, "a")
    write(database, experiment_id, "a", record(1, 5.0))
    write(database, experiment_id, "a", record(2, 4.0))
    write(database, experiment_id, "a", record(2, 3.5))  # resumed from epoch 1's checkpoint

    assert counts(database, experiment_id) == (2, 4)
    with session_scope(database) as session:
        epochs = crud.epoch_records(session=session, experiment_id=experiment_id)
        assert [row["epoch"] for row in epochs] == [1, 2]
        assert epochs[1]["train"]["loss"] == 3.5
        assert [stats["layer"] for stats in epochs[1]["expert_stats"]] == [2, 4]
        run = crud.get_experiment(session=session, experiment_id=experiment_id)
        assert run.current_epoch == 2 and run.best_val_loss == 3.5


def test_an_epoch_is_written_whole_or_not_at_all(database, experiment_id):
    assert claim(database, experiment_id, "a")
    broken = record(1, 5.0)
    del broken["expert_stats"][1]["entropy"]
    with pytest.raises(KeyError):
        write(database, experiment_id, "a", broken)
    assert counts(database, experiment_id) == (0, 0)


def test_a_run_has_one_owner_until_its_heartbeat_stops(database, experiment_id):
    assert claim(database, experiment_id, "a")
    assert not claim(database, experiment_id, "b")  # "a" is alive
    write(database, experiment_id, "a", record(1, 5.0))

    assert claim(database, experiment_id, "b", stale_after=-1)  # "a" went silent: take over
    with pytest.raises(crud.LostOwnership):
        write(database, experiment_id, "a", record(2, 4.0))
    with session_scope(database) as session:
        assert crud.should_stop(session=session, experiment_id=experiment_id, owner="a")
        assert not crud.should_stop(session=session, experiment_id=experiment_id, owner="b")
        assert not crud.heartbeat(session=session, experiment_id=experiment_id, owner="a")
        assert not crud.finish_experiment(
            session=session, experiment_id=experiment_id, owner="a", status=Status.failed
        )
        assert crud.finish_experiment(
            session=session,
            experiment_id=experiment_id,
            owner="b",
            status=Status.succeeded,
            result={"metrics": {"best_val_loss": float("inf"), "stopped_early": True}, "params": 7},
        )
        run = crud.get_experiment(session=session, experiment_id=experiment_id)
        assert (run.status, run.attempts, run.params, run.stopped_early) == (
            "succeeded",
            2,
            7,
            True,
        )
        assert run.metrics["best_val_loss"] is None  # no Infinity in JSON
    assert counts(database, experiment_id) == (1, 2)
    assert not claim(database, experiment_id, "c", stale_after=-1)  # finished: nothing to do


def test_a_cancelled_queued_run_is_never_claimed(database, experiment_id):
    with session_scope(database) as session:
        crud.request_cancel(session=session, experiment_id=experiment_id, stale_before=utcnow())
    assert not claim(database, experiment_id, "a", stale_after=-1)


def test_cancelling_a_live_run_flags_it_for_its_worker(database, experiment_id):
    assert claim(database, experiment_id, "a")
    with session_scope(database) as session:
        crud.request_cancel(
            session=session, experiment_id=experiment_id, stale_before=utcnow() - timedelta(60)
        )
        run = crud.get_experiment(session=session, experiment_id=experiment_id)
        assert (run.status, run.cancel_requested) == ("running", True)
        assert crud.should_stop(session=session, experiment_id=experiment_id, owner="a")


def test_metrics_reads_follow_replays_and_answer_304_to_their_etag(
    database, experiment_id, tmp_path
):
    from api.settings import Settings
    from tests.conftest import make_client

    settings = Settings(home=tmp_path / "home", database_url=database, metrics_max_age=0)
    assert claim(database, experiment_id, "a")
    write(database, experiment_id, "a", record(1, 5.0))
    with make_client(settings) as api:
        first = api.get(f"/experiments/{experiment_id}/metrics")
        assert [e["train"]["loss"] for e in first.json()["epochs"]] == [5.0]
        etag = first.headers["etag"]
        assert (
            api.get(
                f"/experiments/{experiment_id}/metrics", headers={"If-None-Match": etag}
            ).status_code
            == 304
        )

        write(database, experiment_id, "a", record(2, 4.0))
        write(database, experiment_id, "a", record(1, 4.5))  # a replay rewrites epoch 1
        second = api.get(f"/experiments/{experiment_id}/metrics", headers={"If-None-Match": etag})
        assert second.status_code == 200 and second.headers["etag"] != etag
        assert [e["train"]["loss"] for e in second.json()["epochs"]] == [4.5, 4.0]
        assert api.get("/experiments/999999/metrics").status_code == 404


def test_epoch_writes_wait_out_a_database_outage(database, experiment_id, tmp_path, monkeypatch):
    from sqlalchemy.exc import InterfaceError, OperationalError

    from api.settings import Settings
    from worker import training

    settings = Settings(home=tmp_path / "home", database_url=database, db_outage_seconds=5)
    assert claim(database, experiment_id, "a")
    real, calls = crud.record_epoch, []

    def flaky(**kwargs):  # the database is away for two tries, then back
        calls.append(kwargs["record"]["epoch"])
        if len(calls) == 1:
            raise OperationalError("INSERT", {}, ConnectionRefusedError("server closed"))
        if len(calls) == 2:
            raise InterfaceError("INSERT", {}, ConnectionResetError("connection reset"))
        return real(**kwargs)

    monkeypatch.setattr(training, "FIRST_RETRY_DELAY", 0.01)
    monkeypatch.setattr(crud, "record_epoch", flaky)
    training._epoch_writer(experiment_id, owner="a", settings=settings)(record(1, 5.0))
    assert calls == [1, 1, 1] and counts(database, experiment_id) == (1, 2)

    # An outage longer than db_outage_seconds surfaces; other errors are never retried.
    monkeypatch.setattr(crud, "record_epoch", lambda **_: (_ for _ in ()).throw(
        OperationalError("INSERT", {}, ConnectionRefusedError("down"))))  # fmt: skip
    short = settings.model_copy(update={"db_outage_seconds": 0.05})
    with pytest.raises(OperationalError):
        training._epoch_writer(experiment_id, owner="a", settings=short)(record(2, 4.0))
    monkeypatch.setattr(crud, "record_epoch", real)
    with pytest.raises(crud.LostOwnership):
        training._epoch_writer(experiment_id, owner="b", settings=settings)(record(2, 4.0))


def test_metrics_of_a_running_run_are_cached_for_max_age_and_a_finished_runs_for_good(
    database, experiment_id, tmp_path
):
    from api.settings import Settings
    from tests.conftest import make_client

    settings = Settings(home=tmp_path / "home", database_url=database, metrics_max_age=0.5)
    path = f"/experiments/{experiment_id}/metrics"
    assert claim(database, experiment_id, "a")
    write(database, experiment_id, "a", record(1, 5.0))
    with make_client(settings) as api:
        assert len(api.get(path).json()["epochs"]) == 1
        write(database, experiment_id, "a", record(2, 4.0))
        assert len(api.get(path).json()["epochs"]) == 1  # within max_age: the cached answer
        time.sleep(0.6)
        assert len(api.get(path).json()["epochs"]) == 2  # older than max_age: read again
        with session_scope(database) as session:
            crud.finish_experiment(session=session, experiment_id=experiment_id, owner="a",
                                   status=Status.succeeded)  # fmt: skip
        time.sleep(0.6)
        final = api.get(path).json()
        assert final["status"] == "succeeded"
        with session_scope(database) as session:  # (a finished run's rows never change;
            session.execute(delete(ExpertStats))  # this only shows nobody asks again)
            session.execute(delete(EpochMetrics))
            session.commit()
        time.sleep(0.6)
        assert api.get(path).json() == final
