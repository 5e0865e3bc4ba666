"""A sweep survives its workers: one SIGKILLed mid-trial, the sweep still ends with its
budget of trials, each proposed once, each run resumed by the other worker."""

from __future__ import annotations

import pytest

from tests.client import make_client
from tests.factories import assert_one_row_per_epoch, epoch_rows, fast_base
from tests.waiting import wait_for

pytestmark = pytest.mark.services  # real Postgres/Redis and workers (see tests/fixtures/)


def test_a_worker_sigkilled_mid_sweep_costs_no_trial_and_counts_none_twice(
    deployment, start_worker
):
    settings = deployment()
    with make_client(settings) as api:
        pool = {name: start_worker(settings, name=name) for name in ("left", "right")}
        sweep = api.post("/sweeps", json={
            "name": "survivor", "base_preset": "micro",
            "base": fast_base(num_epochs=4, max_train_tokens=8192),
            "overrides": {"num_experts": 2, "top_k": 2, "capacity_factor": 2.0},
            "space": {"aux_weight": {"low": 0.001, "high": 0.1, "log": True}},
            "method": "random", "trials": 4, "seeds": 1, "parallel": 2, "prune": False,
        }).json()  # fmt: skip

        def a_trial_run_mid_epoch():
            read = api.get(f"/sweeps/{sweep['id']}").json()
            for trial in read["trials"]:
                for run_id in trial["run_ids"]:
                    run = api.get(f"/experiments/{run_id}").json()
                    if run["status"] == "running" and run["current_epoch"] >= 1:
                        return run
            return None

        run = wait_for(
            a_trial_run_mid_epoch, timeout=120, interval=0.2, what="a trial's run training"
        )
        owner = run["worker_name"].partition("@")[0]
        pool[owner].kill()  # main and pool process: nothing can finish, hand back or advance

        def done():
            read = api.get(f"/sweeps/{sweep['id']}").json()
            return read if read["status"] != "running" else None

        read = wait_for(done, timeout=420, interval=0.5, what="the sweep")
        assert read["status"] == "finished"
        assert [t["number"] for t in read["trials"]] == [0, 1, 2, 3]
        assert {t["state"] for t in read["trials"]} == {"complete"}, read["trials"]
        assert all(len(t["run_ids"]) == 1 for t in read["trials"])
        ids = read["dense_run_ids"] + [i for t in read["trials"] for i in t["run_ids"]]
        assert len(set(ids)) == len(ids) == 5
        killed = api.get(f"/experiments/{run['id']}").json()
        assert killed["status"] == "succeeded" and killed["restarts"] == 1
        for run_id in ids[1:]:  # the trials' runs (the dense one has no expert statistics)
            assert_one_row_per_epoch(
                settings.database_url, api.get(f"/experiments/{run_id}").json()
            )
        assert epoch_rows(settings.database_url, ids[0]) == [1, 2, 3, 4]
        assert len(read["ranking"]) == 4 and read["best_trial"] == read["ranking"][0]


def test_a_sweep_whose_dense_run_vanished_ends_and_slows_no_takeover(deployment, start_worker):
    """One sweep's fault is its own: a running sweep whose dense run is gone ends with its
    trials failed, and the workers' passes over the store, where dead workers' runs are
    taken over, go on as before (the fault once read as a lost database and held every
    takeover back)."""
    from moe_core.search import SweepConfig
    from store import sweeps
    from store.db import session_scope
    from store.models import Experiment, Status

    settings = deployment()
    config = SweepConfig(base_preset="micro", method="grid", seeds=1,
                         space={"learning_rate": {"choices": [0.003, 0.002]}})  # fmt: skip
    with session_scope(settings.database_url) as session:
        broken, runs = sweeps.create_sweep(
            session=session, config=config, base=config.base_config(), parallel=1
        )
        session.flush()
        dense = next(r.id for r in runs if r.dense)
        # its trial's run ended (never queued) and its dense run removed under it
        session.query(Experiment).filter(Experiment.sweep_id == broken.id).update(
            {"status": Status.cancelled, "published": True}, synchronize_session=False
        )
        session.query(Experiment).filter(Experiment.id == dense).delete()
        session.commit()
        broken_id = broken.id

    with make_client(settings) as api:
        pool = {name: start_worker(settings, name=name) for name in ("left", "right")}
        run = api.post("/experiments", json={"name": "lost", "base_preset": "micro",
                                             "base": fast_base(num_epochs=8, max_train_tokens=8192)}).json()  # fmt: skip

        def two_epochs():
            read = api.get(f"/experiments/{run['id']}").json()
            return read if read["current_epoch"] >= 2 else None

        first = wait_for(two_epochs, timeout=90, interval=0.2, what="two epochs")
        owner = first["worker_name"].partition("@")[0]
        pool[owner].kill()

        def taken_over():
            read = api.get(f"/experiments/{run['id']}").json()
            return read if read["attempts"] == 2 else None

        # a takeover needs heartbeat_timeout of good contact: a fault read as a lost
        # database resets it at every pass, and no takeover would come at all
        resumed = wait_for(taken_over, timeout=60, interval=0.2, what="the takeover")
        assert resumed["restarts"] == 1
        ended = wait_for(
            lambda: (s := api.get(f"/sweeps/{broken_id}").json())["status"] != "running" and s,
            timeout=30, interval=0.2, what="the broken sweep's end",
        )  # fmt: skip
        assert ended["status"] == "finished"
        assert [t["state"] for t in ended["trials"]] == ["failed"]
        rescuer = next(w for name, w in pool.items() if name != owner)
        assert "lost the database or broker" not in rescuer.output()
