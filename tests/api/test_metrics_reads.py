"""GET /experiments/{id}/metrics: follows replays, answers 304 to its ETag, and caches a
running run's answer for MOE_METRICS_MAX_AGE and a finished run's for a minute."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import delete

from store import leases
from store.db import session_scope
from store.models import EpochMetrics, ExpertStats, Status
from store.settings import Settings
from tests.client import make_client
from tests.factories import claim, record, write

pytestmark = pytest.mark.services  # real Postgres (see tests/fixtures/services.py)


def test_metrics_reads_follow_replays_and_answer_304_to_their_etag(
    database, experiment_id, tmp_path
):

    settings = Settings(home=tmp_path / "home", database_url=database, metrics_max_age=0)
    claim(database, experiment_id, "a")
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


def test_metrics_of_a_running_run_are_cached_for_max_age_and_a_finished_runs_for_good(
    database, experiment_id, tmp_path
):

    settings = Settings(home=tmp_path / "home", database_url=database, metrics_max_age=0.5)
    path = f"/experiments/{experiment_id}/metrics"
    claim(database, experiment_id, "a")
    write(database, experiment_id, "a", record(1, 5.0))
    with make_client(settings) as api:
        assert len(api.get(path).json()["epochs"]) == 1
        write(database, experiment_id, "a", record(2, 4.0))
        assert len(api.get(path).json()["epochs"]) == 1  # within max_age: the cached answer
        time.sleep(0.6)
        assert len(api.get(path).json()["epochs"]) == 2  # older than max_age: read again
        with session_scope(database) as session:
            leases.finish_experiment(session=session, experiment_id=experiment_id, owner="a",
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


def test_metrics_serve_training_and_evaluation_statistics_apart_and_say_which_is_which(
    database, experiment_id, tmp_path
):
    from api.schemas import MetricsRead

    settings = Settings(home=tmp_path / "home", database_url=database, metrics_max_age=0)
    path = f"/experiments/{experiment_id}/metrics"
    claim(database, experiment_id, "a")
    write(database, experiment_id, "a", record(1, 5.0))
    with make_client(settings) as api:
        first = api.get(path)
        body = first.json()
        # serialised by hand, still exactly the documented model
        assert MetricsRead.model_validate(body).model_dump(mode="json") == body
        (epoch,) = body["epochs"]
        assert epoch["train_eval"] == {"ce_loss": 4.95}
        assert [s["max_step_load"] for s in epoch["expert_stats"]] == [30.0, 30.0]
        assert [s["min_usage"] for s in epoch["eval_expert_stats"]] == [0.0, 0.0]
        assert all("max_step_load" not in s for s in epoch["eval_expert_stats"])
        assert [s["z_loss"] for s in epoch["expert_stats"]] == [3.1, 3.1]
        assert [s["imbalance"] for s in epoch["eval_expert_stats"]] == [2.2, 2.2]

        # A replay that changes only the evaluation's statistics is a new answer.
        replay = record(1, 5.0)
        replay["eval_expert_stats"][1]["dropped"] = 0.5
        write(database, experiment_id, "a", replay)
        second = api.get(path, headers={"If-None-Match": first.headers["etag"]})
        assert second.status_code == 200 and second.headers["etag"] != first.headers["etag"]
        assert second.json()["epochs"][0]["eval_expert_stats"][1]["dropped"] == 0.5

        schema = api.get("/openapi.json").json()["components"]["schemas"]["EpochFigures"]
        described = {name: field.get("description", "") for name, field in
                     schema["properties"].items()}  # fmt: skip
        assert "training steps, as routed during training" in described["expert_stats"]
        assert "whole validation set in eval mode" in described["eval_expert_stats"]
        assert "training capacity" in described["eval_expert_stats"]


def test_a_finished_runs_entry_ages_out_so_a_delete_elsewhere_shows(monkeypatch):
    import time
    from types import SimpleNamespace

    from api import read_cache

    cache = read_cache.ReadCache()
    entry = SimpleNamespace(final=True, at=time.monotonic())
    cache.put("run", entry)
    assert cache.get("run", max_age=0) is entry  # finished: served past the running max age
    monkeypatch.setattr(read_cache, "FINAL_MAX_AGE", 0.0)
    assert cache.get("run", max_age=0) is None  # but not for good
