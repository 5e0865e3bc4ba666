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
