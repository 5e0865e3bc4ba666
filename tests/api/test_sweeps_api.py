"""POST /sweeps through the whole service: the API in-process, a real Celery worker, real
Postgres and Redis, the engine on the micro base and a generated corpus."""

from __future__ import annotations

import pytest

from tests.factories import fast_base
from tests.waiting import wait_for

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("worker")]

# Two experts, both chosen by every token: a router that cannot collapse, so trials complete.
HEALTHY = {"num_experts": 2, "top_k": 2, "capacity_factor": 2.0}


@pytest.fixture(scope="module")
def settings(deployment):
    return deployment(progress_interval=0.2)


def body(**fields):
    return {"name": "sw", "base_preset": "micro", "base": fast_base(num_epochs=3),
            "overrides": HEALTHY, **fields}  # fmt: skip


def finished(client, sweep_id, timeout=360):
    def done():
        read = client.get(f"/sweeps/{sweep_id}").json()
        return read if read["status"] != "running" else None

    return wait_for(done, timeout=timeout, interval=0.5, what=f"sweep {sweep_id}")


def test_a_grid_sweep_runs_every_point_judged_against_dense_and_prunes_a_bad_one(client):
    response = client.post("/sweeps", json=body(
        method="grid", seeds=1, parallel=1,
        space={"learning_rate": {"choices": [0.003, 0.002, 1e-7]}},
    ))  # fmt: skip
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert len(sweep["dense_run_ids"]) == 1 and [t["number"] for t in sweep["trials"]] == [0]
    read = finished(client, sweep["id"])
    assert read["status"] == "finished"
    states = {t["number"]: t["state"] for t in read["trials"]}
    assert states == {0: "complete", 1: "complete", 2: "pruned"}, read["trials"]
    pruned = read["trials"][2]
    assert pruned["pruned_at_epoch"] == 2
    (run_id,) = pruned["run_ids"]
    run = client.get(f"/experiments/{run_id}").json()
    assert run["status"] == "cancelled"
    assert len(client.get(f"/experiments/{run_id}/metrics").json()["epochs"]) == 2  # its rows stay
    dense_ce = client.get(f"/experiments/{read['dense_run_ids'][0]}").json()["best_val_ce_loss"]
    for trial in read["trials"][:2]:
        (own,) = trial["run_ids"]
        ce = client.get(f"/experiments/{own}").json()["best_val_ce_loss"]
        assert trial["objective"]["mean"] == pytest.approx(ce - dense_ce)
        assert trial["passed"] in (True, False)
    means = {t["number"]: t["objective"]["mean"] for t in read["trials"][:2]}
    assert (
        read["ranking"] == sorted(means, key=means.get) and read["best_trial"] == read["ranking"][0]
    )
    assert set(read["importance"] or {}) <= {"learning_rate"}
    assert "first seed's val CE" in read["prune_rule"]  # the service's seeds are runs apart


def test_a_sweeps_seeds_asked_together_train_as_stacks_and_are_pruned_on_their_mean(client):
    response = client.post("/sweeps", json=body(
        method="grid", seeds=2, parallel=1, base=fast_base(num_epochs=3, seeds_together=True),
        space={"learning_rate": {"choices": [0.003, 0.002, 1e-7]}},
    ))  # fmt: skip
    assert response.status_code == 201, response.text
    read = finished(client, response.json()["id"])
    assert "mean val CE of the trial's 2 seeds" in read["prune_rule"]
    states = {t["number"]: t["state"] for t in read["trials"]}
    assert states == {0: "complete", 1: "complete", 2: "pruned"}, read["trials"]
    assert read["trials"][2]["pruned_at_epoch"] == 2
    for trial in read["trials"]:  # each trial's two seeds, and the two dense runs, one stack
        for run_id in trial["run_ids"]:
            log = client.get(f"/experiments/{run_id}/logs").text
            assert "seeds [1337, 1338] trained together as one stack" in log, run_id
    for run_id in read["trials"][2]["run_ids"]:  # both seeds stopped, their epochs kept
        assert client.get(f"/experiments/{run_id}").json()["status"] == "cancelled"
        assert len(client.get(f"/experiments/{run_id}/metrics").json()["epochs"]) == 2
    dense = [client.get(f"/experiments/{i}").json() for i in read["dense_run_ids"]]
    assert [d["status"] for d in dense] == ["succeeded"] * 2


def test_a_sweep_is_checked_whole_before_anything_is_stored(client):
    before = client.get("/experiments").json()["total"], client.get("/sweeps").json()["total"]
    bad = client.post("/sweeps", json=body(method="grid", space={"top_k": {"choices": [1, 16]}}))
    assert bad.status_code == 422 and "top_k=16" in bad.text
    huge = client.post("/sweeps", json=body(method="random", trials=400, seeds=3,
                                            space={"aux_weight": {"low": 0.001, "high": 0.1}}))  # fmt: skip
    assert huge.status_code == 422 and "1203 runs" in huge.text
    unknown = client.post("/sweeps", json=body(space={"hidden_dim": {"choices": [64]}}, trials=2))
    assert unknown.status_code == 422 and "hidden_dim" in unknown.text
    plan = client.post("/sweeps?dry_run=true", json=body(method="grid", seeds=2,
                       space={"learning_rate": {"choices": [0.003, 0.002]}}))  # fmt: skip
    assert plan.status_code == 200 and plan.json() == {
        "trials": 2,
        "runs": 6,
        "max_runs": 400,
        "grid_points": 2,
    }
    assert (
        client.get("/experiments").json()["total"],
        client.get("/sweeps").json()["total"],
    ) == before


def test_cancelling_a_sweep_cancels_its_queued_and_running_trials(client):
    sweep = client.post("/sweeps", json=body(
        method="random", trials=6, seeds=1, parallel=2, base=fast_base(num_epochs=30),
        space={"aux_weight": {"low": 0.001, "high": 0.1}},
    )).json()  # fmt: skip
    read = client.post(f"/sweeps/{sweep['id']}/cancel").json()
    assert read["status"] == "cancelled"
    assert {t["state"] for t in read["trials"]} == {"cancelled"}
    ids = read["dense_run_ids"] + [i for t in read["trials"] for i in t["run_ids"]]

    def all_ended():
        runs = [client.get(f"/experiments/{i}").json()["status"] for i in ids]
        return runs if all(s in ("cancelled", "succeeded", "failed") for s in runs) else None

    statuses = wait_for(all_ended, timeout=120, interval=0.5, what="the sweep's runs")
    assert "cancelled" in statuses
    assert len(client.get(f"/sweeps/{sweep['id']}").json()["trials"]) == 2  # nothing new proposed


def test_a_sweeps_runs_are_deleted_only_with_it_once_it_has_ended(client):
    sweep = client.post("/sweeps", json=body(
        method="random", trials=3, seeds=1, parallel=1, base=fast_base(num_epochs=30),
        space={"aux_weight": {"low": 0.001, "high": 0.1}},
    )).json()  # fmt: skip
    dense, (trial_run,) = sweep["dense_run_ids"][0], sweep["trials"][0]["run_ids"]
    # its dense run judges every trial: deleting it would stall the sweep
    for run_id in (dense, trial_run):
        refused = client.delete(f"/experiments/{run_id}")
        assert refused.status_code == 409, refused.text
        assert f"sweep {sweep['id']}" in refused.json()["detail"]
    assert client.delete(f"/sweeps/{sweep['id']}").status_code == 409  # still running
    client.post(f"/sweeps/{sweep['id']}/cancel")
    ids = [dense, trial_run]

    def all_ended():
        runs = [client.get(f"/experiments/{i}").json()["status"] for i in ids]
        return runs if all(s in ("cancelled", "succeeded", "failed") for s in runs) else None

    wait_for(all_ended, timeout=120, interval=0.5, what="the sweep's runs")
    assert client.delete(f"/experiments/{dense}").status_code == 409  # a sweep's, even now
    assert client.delete(f"/sweeps/{sweep['id']}").status_code == 204
    assert client.get(f"/sweeps/{sweep['id']}").status_code == 404
    assert [client.get(f"/experiments/{i}").status_code for i in ids] == [404, 404]
