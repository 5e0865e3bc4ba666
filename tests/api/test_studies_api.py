"""Studies over seeds against real Postgres and Redis, no worker: runs are finished in the
store with hand-made results (docs/verdicts-contract.md's shape), as a worker would."""

from __future__ import annotations

import math

import pytest

from moe_core.verdict_records import PairedTest, ServedSeedsVerdict, ServedVerdict
from tests.factories import queued_messages, result, succeed
from tests.record_check import assert_is

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)


def create(client, **body) -> dict:
    response = client.post("/studies", json={"name": "seeded", "base_preset": "micro", **body})
    assert response.status_code == 201, response.text
    return response.json()


def test_a_study_runs_dense_and_each_preset_once_per_seed(client, redis_client, broker_prefix):
    queued = queued_messages(redis_client, broker_prefix)
    study = create(client, base={"seed": 7}, experiments=["baseline", "top2"], seeds=3)

    assert study["seeds"] == 3 and study["base"]["seed"] == 7
    assert queued_messages(redis_client, broker_prefix) == queued + 9  # 3 x (dense + 2)
    members = study["members"]
    assert [m["name"] for m in members] == [
        f"{name} (seed {seed})" for seed in (7, 8, 9) for name in ("dense", "baseline", "top2")
    ]
    dense_of = {m["seed"]: m["id"] for m in members if m["dense"]}
    assert study["dense_ids"] == [dense_of[7], dense_of[8], dense_of[9]]
    assert study["dense_id"] == dense_of[7]
    for member in members:
        run = client.get(f"/experiments/{member['id']}").json()
        assert run["base"]["seed"] == member["seed"] and run["study_id"] == study["id"]
        # every MoE run is judged against the dense run of its own seed
        expected = None if member["dense"] else dense_of[member["seed"]]
        assert run["baseline_id"] == member["baseline_id"] == expected
    assert [(row["name"], row["seed"], row["baseline_id"]) for row in study["verdicts"]] == [
        (f"{preset} (seed {seed})", seed, dense_of[seed])
        for seed in (7, 8, 9)
        for preset in ("baseline", "top2")
    ]
    for row in study["preset_verdicts"]:
        assert row["seeds"] == [7, 8, 9] and row["verdict"] is None
        assert "every seed's pair" in row["detail"] and "queued" in row["detail"]


def test_a_presets_verdict_pairs_each_seed_with_its_own_dense_run(client, service_settings):
    """Seeds differ more than the preset does; paired by seed the difference is clear."""
    study = create(client, experiments=["top2"], seeds=2)
    database = service_settings.database_url
    dense = {m["seed"]: m for m in study["members"] if m["dense"]}
    top2 = {m["seed"]: m for m in study["members"] if not m["dense"]}
    first, second = sorted(dense)
    dense_ce = {first: 5.0, second: 4.0}
    top2_ce = {first: 4.9, second: 3.91}  # paired deltas -0.1 and -0.09
    for seed in (first, second):
        succeed(database, dense[seed]["id"], result(dense_ce[seed], dense=True))
        partial = client.get(f"/studies/{study['id']}").json()["preset_verdicts"][0]
        assert partial["passed"] is None and "queued" in partial["detail"]
        succeed(database, top2[seed]["id"], result(top2_ce[seed]))

    body = client.get(f"/studies/{study['id']}").json()
    assert body["status"] == "succeeded"
    (row,) = body["preset_verdicts"]
    assert row["preset"] == "top2" and row["detail"] is None
    assert row["experiment_ids"] == [top2[first]["id"], top2[second]["id"]]
    delta = row["val_loss_delta"]
    assert delta["n"] == 2 and delta["mean"] == pytest.approx(-0.095)
    assert delta["se"] == pytest.approx(0.005)  # stdev(-0.1, -0.09) / sqrt(2)
    # 2 seeds, 1 degree of freedom: significant at 95% needs |t| > 12.706; here t = -19
    assert delta["df"] == 1 and delta["t"] == pytest.approx(-19.0)
    assert delta["t_critical"] == pytest.approx(12.7062, abs=1e-4)
    assert delta["ci_low"] == pytest.approx(-0.095 - 12.7062047 * 0.005)
    assert delta["ci_high"] == pytest.approx(-0.095 + 12.7062047 * 0.005)
    assert delta["p_value"] == pytest.approx(1 - 2 * math.atan(19) / math.pi)  # t(1): Cauchy
    assert delta["confidence"] == 0.95 and delta["significant"] is True
    assert row["significant"] is True and row["significance_of"] == "val_loss_delta"
    assert row["passed"] is True and row["primary_passed"] is True
    assert row["tertiary_passed"] is True
    assert row["gap_delta"]["n"] == 2
    assert [(s["seed"], s["experiment_id"], s["baseline_id"]) for s in row["per_seed"]] == [
        (seed, top2[seed]["id"], dense[seed]["id"]) for seed in (first, second)
    ]
    assert [s["val_loss_delta"] for s in row["per_seed"]] == [
        pytest.approx(-0.1),
        pytest.approx(-0.09),
    ]
    assert row["verdict"]["seeds"] == 2 and len(row["verdict"]["per_seed"]) == 2
    # served as declared (moe_core.verdict_records), every key and no other
    assert_is(row["verdict"], ServedSeedsVerdict)
    assert_is(row["val_loss_delta"], PairedTest)
    assert_is(row["gap_delta"], PairedTest)
    assert row["lines"] == row["verdict"]["lines"]
    # the per-run table still judges each run, against its own seed's dense run
    for member_row in body["verdicts"]:
        verdict = member_row["verdict"]
        assert verdict["baseline_id"] == dense[member_row["seed"]]["id"]
        assert verdict["significant"] is None and verdict["seeds"] == 1
        assert verdict["primary"]["val_loss_delta"] == pytest.approx(
            top2_ce[member_row["seed"]] - dense_ce[member_row["seed"]]
        )
        single = client.get(f"/experiments/{member_row['experiment_id']}/verdict").json()
        assert single == verdict
        assert_is(single, ServedVerdict)


def test_a_presets_verdict_over_seeds_keeps_tertiary_failing_when_one_seed_collapses(
    client, service_settings
):
    """Tertiary must hold for every seed: one collapsed router fails the preset."""
    study = create(client, experiments=["baseline"], seeds=2)
    database = service_settings.database_url
    collapsed = (30.0, 0.0, 10.0, 10.0, 10.0, 10.0, 15.0, 15.0)
    for index, member in enumerate(study["members"]):
        if member["dense"]:
            succeed(database, member["id"], result(5.0, dense=True))
        else:
            usage = collapsed if index > 2 else (12.5,) * 8
            succeed(database, member["id"], result(4.0, eval_usage=usage))
    (row,) = client.get(f"/studies/{study['id']}").json()["preset_verdicts"]
    assert row["primary_passed"] is True and row["tertiary_passed"] is False
    assert row["passed"] is False
    assert [s["tertiary_passed"] for s in row["per_seed"]] == [True, False]


def test_a_one_seed_study_says_significance_is_unknown(client, service_settings):
    study = create(client, experiments=["top2"])
    dense, top2 = study["members"]
    assert dense["name"] == "dense" and top2["name"] == "top2"
    succeed(service_settings.database_url, dense["id"], result(5.0, dense=True))
    succeed(service_settings.database_url, top2["id"], result(4.9))

    body = client.get(f"/studies/{study['id']}").json()
    (row,) = body["preset_verdicts"]
    assert row["significant"] is None and "no standard error" in row["significance_note"]
    assert row["val_loss_delta"]["mean"] == pytest.approx(-0.1)
    assert row["val_loss_delta"]["se"] is None and row["val_loss_delta"]["n"] == 1
    assert row["val_loss_delta"]["p_value"] is None and row["val_loss_delta"]["ci_low"] is None
    assert row["passed"] is True and len(row["per_seed"]) == 1
    # the old per-member fields, as before
    (member_row,) = body["verdicts"]
    assert member_row["passed"] is True and member_row["primary_passed"] is True
    assert member_row["verdict"]["baseline_id"] == dense["id"]


def test_a_presets_verdict_says_which_seed_failed(client, service_settings):
    study = create(client, experiments=["top2"], seeds=2)
    database = service_settings.database_url
    dense_first, top2_first, dense_second, top2_second = study["members"]
    for member in (dense_first, top2_first, dense_second):
        succeed(database, member["id"], result(5.0, dense=member["dense"]))
    client.post(f"/experiments/{top2_second['id']}/cancel")

    body = client.get(f"/studies/{study['id']}").json()
    assert body["status"] == "cancelled"
    (row,) = body["preset_verdicts"]
    assert row["passed"] is None and row["verdict"] is None
    assert f"experiment {top2_second['id']} is cancelled" in row["detail"]
    first_row = next(r for r in body["verdicts"] if r["experiment_id"] == top2_first["id"])
    assert first_row["verdict"] is not None  # the seed that finished is judged on its own
