"""Runs through the whole service: the API in-process, a real Celery worker process, real
Postgres and Redis, the engine on the micro base and a generated corpus."""

from __future__ import annotations

import json
import time

import pytest

from api.schemas import MetricsRead, StepsRead
from moe_core.records import step_metrics_every
from tests.client import FINISHED, submit, wait_finished
from tests.factories import fast_base
from tests.waiting import wait_for

# Real Postgres/Redis (see tests/fixtures/services.py); one worker for the module's tests.
pytestmark = [pytest.mark.services, pytest.mark.usefixtures("worker")]


@pytest.fixture(scope="module")
def settings(deployment):
    # A store and queue of their own: the API tests leave queued runs (spec-sized ones).
    # Progress written often enough to be seen in a run of seconds.
    return deployment(progress_interval=0.2)


def test_a_run_goes_queued_running_succeeded_with_epochs_visible_as_they_end(client, settings):
    run = submit(client, "e2e", base=fast_base(num_epochs=4, max_train_tokens=8192))
    assert run["status"] == "queued"

    seen: list[tuple[str, int]] = []  # (status, epochs in /metrics) at each poll
    progress: list[dict] = []  # GET /experiments/{id}'s progress while running
    points_seen: list[tuple[int, int]] = []  # (epochs, step points) while running
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        metrics = client.get(f"/experiments/{run['id']}/metrics").json()
        seen.append((metrics["status"], len(metrics["epochs"])))
        shown = client.get(f"/experiments/{run['id']}").json()["progress"]
        if shown is not None and shown not in progress:
            progress.append(shown)
        if metrics["status"] == "running":
            points = client.get(f"/experiments/{run['id']}/steps").json()["points"]
            points_seen.append((len(metrics["epochs"]), len(points)))
        if metrics["status"] in FINISHED:
            break
        time.sleep(0.03)

    statuses = [status for status, _ in seen]
    assert statuses[-1] == "succeeded", seen[-5:]
    assert "running" in statuses
    # rows appear while the run is still going, one epoch at a time
    assert any(status == "running" and 0 < count < 4 for status, count in seen), seen
    counts = [count for _, count in seen]
    assert counts == sorted(counts)

    epochs = metrics["epochs"]
    # The endpoint serialises rows itself; they must still be exactly the documented model.
    assert MetricsRead.model_validate(metrics).model_dump(mode="json") == metrics
    assert [epoch["epoch"] for epoch in epochs] == [1, 2, 3, 4]
    for epoch in epochs:
        assert epoch["train"]["loss"] > 0 and epoch["val"]["ce_loss"] > 0
        assert epoch["train_eval"]["ce_loss"] > 0  # eval mode, on a training subset
        assert epoch["steps"] > 0 and epoch["tokens_per_sec"] > 0 and epoch["duration"] > 0
        assert epoch["gating_temperature"] == 1.0
        # two kinds of routing statistics: over the training steps, and the epoch's weights
        # over the validation set
        for kind in ("expert_stats", "eval_expert_stats"):
            assert [stats["layer"] for stats in epoch[kind]] == [2, 4], kind
            usage = epoch[kind][0]["usage"]
            assert len(usage) == 8 and sum(usage) == pytest.approx(100, abs=0.5)
        for stats in epoch["expert_stats"]:  # a step's peak is at least the epoch's
            assert stats["max_step_load"] >= stats["max_usage"] - 1e-6
            # the imbalance metrics, stored as the engine keeps them
            assert 0 <= stats["imbalance"] <= stats["max_imbalance"]
            assert 0 <= stats["pad_ratio"] < 1 and stats["z_loss"] > 0
        assert all(stats["imbalance"] >= 0 for stats in epoch["eval_expert_stats"])

    final = client.get(f"/experiments/{run['id']}").json()
    assert final["current_epoch"] == final["num_epochs"] == 4
    assert final["device"] == "cpu" and final["attempts"] == 1
    assert final["params"] > 0 and final["best_val_loss"] > 0
    assert 0 < final["active_params"] < final["params"]  # top-1 of 8 experts
    assert final["best_val_ce_loss"] > 0 and final["test_ce_loss"] > 0
    assert final["test_loss"] >= final["test_ce_loss"]  # plus the aux loss
    assert final["started_at"] <= final["finished_at"]
    result = client.get(f"/experiments/{run['id']}/result").json()
    assert result["test"]["ce_loss"] == pytest.approx(final["test_ce_loss"])
    assert 1 <= result["test"]["epoch"] <= 4 and result["evaluation"] is not None
    assert result["active_params"] == final["active_params"]
    assert result["metrics"]["best_val_ce_loss"] == pytest.approx(final["best_val_ce_loss"])
    checkpoint = settings.artifact_dir / "runs" / final["run_key"] / "checkpoint.pt"
    assert checkpoint.is_file()

    # Progress was live: steps within an epoch, a pace and an ETA, through the heartbeat.
    training = [p for p in progress if p["phase"] == "training"]
    assert training, progress
    assert all(0 <= p["step"] <= p["steps_per_epoch"] for p in training)
    assert any(p["tokens_per_sec"] and p["eta_seconds"] is not None for p in training)
    assert final["progress"] is None  # finished: no position
    # Step points: every K steps of the whole run, each once, written while it ran.
    steps = client.get(f"/experiments/{run['id']}/steps").json()
    assert StepsRead.model_validate(steps).model_dump(mode="json") == steps
    total = result["metrics"]["current_step"]
    assert steps["every"] == step_metrics_every(total) == 1  # a short run: every step
    points = steps["points"]
    assert [p["step"] for p in points] == list(range(1, total + 1))
    per_epoch = result["metrics"]["steps"][0]
    assert [p["epoch"] for p in points] == [1 + (p["step"] - 1) // per_epoch for p in points]
    assert all(p["grad_norm"] > 0 and p["loss"] > 0 and p["tokens_per_sec"] > 0 for p in points)
    assert {p["learning_rate"] for p in points} == {final["base"]["learning_rate"]}
    for key in ("tokens", "wall_time"):
        values = [p[key] for p in points]
        assert values == sorted(values) and len(set(values)) == total, key
    assert any(0 < count < total and epochs < 4 for epochs, count in points_seen), points_seen
    # Every run keeps its final weights, its result and its log.
    listed = client.get(f"/experiments/{run['id']}/artifacts").json()["items"]
    assert {a["name"] for a in listed} == {"model.pt", "checkpoint.pt", "result.json", "run.log"}
    kept = client.get(f"/experiments/{run['id']}/artifacts/result.json").json()
    assert kept["metrics"]["best_val_ce_loss"] == pytest.approx(final["best_val_ce_loss"])
    log = client.get(f"/experiments/{run['id']}/logs").text
    assert "attempt 1" in log and "succeeded" in log
    assert "tokenising" not in log  # no progress bars: the run's progress is on its row
    assert [line for line in log.splitlines() if ": epoch " in line][-1].split(": epoch ")[1][
        :2
    ] == "4:"


def test_a_two_seed_study_reports_each_presets_delta_with_its_standard_error(client, settings):
    """Issue 8's "done when": a 2-seed micro study reports Δ ± SE and `significant`, each
    run judged against the dense run of its own seed; the per-run table stays as it was."""
    response = client.post(
        "/studies",
        json={
            "name": "mini",
            "base_preset": "micro",
            "base": fast_base(),
            "experiments": ["baseline", "top2"],
            "seeds": 2,
        },
    )
    assert response.status_code == 201, response.text
    study = response.json()

    def study_done():
        body = client.get(f"/studies/{study['id']}").json()
        return body if body["status"] in FINISHED else None

    body = wait_for(study_done, timeout=360, interval=0.3, what="the study")
    print(json.dumps(body["preset_verdicts"], indent=1)[:6000])  # shown when it fails
    assert body["status"] == "succeeded", body["members"]
    assert body["precision"] == "fp32"  # precision auto, fixed by the first run to start
    seeds = [study["base"]["seed"], study["base"]["seed"] + 1]
    assert [(row["preset"], row["seed"]) for row in body["verdicts"]] == [
        (preset, seed) for seed in seeds for preset in ("baseline", "top2")
    ]
    dense_of = dict(zip(seeds, body["dense_ids"], strict=True))
    for row in body["verdicts"]:
        verdict = row["verdict"]
        assert row["name"] == f"{row['preset']} (seed {row['seed']})"
        assert verdict["baseline_id"] == row["baseline_id"] == dense_of[row["seed"]]
        assert isinstance(verdict["primary"]["passed"], bool)
        assert verdict["primary"]["dense_val_loss"] > 0
        assert isinstance(verdict["tertiary"]["passed"], bool)
        assert verdict["passed"] == (verdict["primary"]["passed"] and verdict["tertiary"]["passed"])
        assert row["passed"] == verdict["passed"] and verdict["significant"] is None
        # the same verdict from the experiment's own route
        single = client.get(f"/experiments/{row['experiment_id']}/verdict")
        assert single.status_code == 200 and single.json() == verdict
    assert [row["preset"] for row in body["preset_verdicts"]] == ["baseline", "top2"]
    for row in body["preset_verdicts"]:
        assert row["detail"] is None and row["seeds"] == seeds
        delta = row["val_loss_delta"]
        assert delta["n"] == 2 and delta["se"] > 0 and isinstance(delta["mean"], float)
        # its paired t-test at 95%, 1 degree of freedom: the interval is mean ± 12.706 SE
        assert delta["df"] == 1 and 0 < delta["p_value"] <= 1
        half = delta["ci_high"] - delta["mean"]
        assert half == pytest.approx(delta["mean"] - delta["ci_low"])
        assert half == pytest.approx(12.7062 * delta["se"], rel=1e-4)
        assert delta["significant"] is (delta["p_value"] < 0.05)
        assert isinstance(row["significant"], bool)
        assert row["significant"] == row["verdict"]["significant"]
        assert isinstance(row["passed"], bool) and isinstance(row["tertiary_passed"], bool)
        per_seed = {entry["seed"]: entry for entry in row["per_seed"]}
        assert list(per_seed) == seeds
        for seed, entry in per_seed.items():
            assert entry["baseline_id"] == dense_of[seed]
            member = next(
                r for r in body["verdicts"] if r["experiment_id"] == entry["experiment_id"]
            )
            assert member["seed"] == seed and member["passed"] == entry["passed"]
            assert entry["val_loss_delta"] == pytest.approx(
                member["verdict"]["primary"]["val_loss_delta"]
            )
        assert delta["mean"] == pytest.approx(
            sum(entry["val_loss_delta"] for entry in row["per_seed"]) / 2
        )
    # the two seeds really are two runs: different initialisations, different losses
    dense_runs = [client.get(f"/experiments/{i}").json() for i in body["dense_ids"]]
    assert [run["base"]["seed"] for run in dense_runs] == seeds
    assert dense_runs[0]["best_val_ce_loss"] != dense_runs[1]["best_val_ce_loss"]
    # the engine's own result of each run is kept whole
    result = client.get(f"/experiments/{study['dense_id']}/result").json()
    assert result["params"] > 0 and result["config"]["name"] == "dense"
    assert result["active_params"] == result["params"]  # dense: every parameter is active
    assert result["seed"] == seeds[0] and result["test"]["ce_loss"] > 0
    assert len(result["metrics"]["train_losses"]) == 2  # get_metrics(), one entry per epoch
    assert result["metrics"]["best_val_loss"] == pytest.approx(dense_runs[0]["best_val_loss"])
    # the dense baselines' weights are kept as artifacts
    for dense in dense_runs:
        model = settings.artifact_dir / "runs" / dense["run_key"] / "model.pt"
        assert model.is_file() and model.stat().st_size > 0


def test_cancel_mid_run_keeps_finished_epochs(client):
    run = submit(client, "e2e", base=fast_base(num_epochs=40))
    wait_for(
        lambda: client.get(f"/experiments/{run['id']}/metrics").json()["epochs"],
        timeout=60,
        what="the first epoch",
    )

    response = client.post(f"/experiments/{run['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["cancel_requested"] is True
    cancelled_at = time.monotonic()
    final = wait_finished(client, run["id"], timeout=30)
    assert time.monotonic() - cancelled_at < 10

    assert final["status"] == "cancelled"
    epochs = client.get(f"/experiments/{run['id']}/metrics").json()["epochs"]
    assert 1 <= len(epochs) < 40
    assert [epoch["epoch"] for epoch in epochs] == list(range(1, len(epochs) + 1))
    assert final["current_epoch"] == len(epochs)
    assert client.post(f"/experiments/{run['id']}/cancel").status_code == 200  # idempotent


def test_an_exception_in_training_marks_the_run_failed_with_its_text(client):
    # More sequences per batch than the corpus has: the engine refuses to train. (A token
    # cap below one batch is a 422 at the API; only the corpus' own size is left to find.)
    base = fast_base(max_train_tokens=None, seq_len=512)
    run = submit(client, "e2e", base=base, config={"batch_size": 1024})
    final = wait_finished(client, run["id"])
    assert final["status"] == "failed"
    assert "ValueError" in final["error"] and "fewer than one batch" in final["error"]
    log = client.get(f"/experiments/{run['id']}/logs").text
    assert "Traceback" in log and "fewer than one batch" in log  # the failure, whole
    assert client.post(f"/experiments/{run['id']}/cancel").status_code == 409
