"""The engine's sweep: one dense run per seed shared by every trial, objectives paired by
seed, pruning that stops a trial and keeps its epochs, collapsed routers never best."""

import json
import subprocess
import sys

import pytest

from moe_core.criteria import best_val_loss
from moe_core.search import SweepConfig
from moe_core.sweep import RESULTS, SweepRefused, rank, run_sweep

FAST = {"max_train_tokens": 4096, "max_val_tokens": 1024, "num_epochs": 3}
# Two experts, both chosen by every token: a router that cannot collapse, so trials complete.
HEALTHY = {"num_experts": 2, "top_k": 2, "capacity_factor": 2.0}


def run(tmp_path, corpus_dir, cache_dir, **fields):
    sweep = SweepConfig(**{"base_preset": "micro", "base": FAST, "overrides": HEALTHY, **fields})
    return run_sweep(sweep, tmp_path, data_dir=str(corpus_dir), cache_dir=str(cache_dir),
                     device="cpu", verbose=False)  # fmt: skip


def test_a_grid_sweep_judges_every_trial_against_the_dense_run_of_each_seed(
    tmp_path, corpus_dir, cache_dir
):
    report = run(tmp_path, corpus_dir, cache_dir, method="grid", seeds=2, prune=False,
                 space={"learning_rate": {"choices": [0.003, 0.001]}})  # fmt: skip
    assert len(report["dense"]) == 2 and [d["seed"] for d in report["dense"]] == [1337, 1338]
    assert [t["params"] for t in report["trials"]] == [
        {"learning_rate": 0.003},
        {"learning_rate": 0.001},
    ]
    for trial in report["trials"]:
        assert trial["state"] == "complete" and [r["seed"] for r in trial["runs"]] == [1337, 1338]
        deltas = [best_val_loss(r["metrics"]) - best_val_loss(d["metrics"])
                  for r, d in zip(trial["runs"], report["dense"], strict=True)]  # fmt: skip
        objective = trial["objective"]
        assert objective["values"] == pytest.approx(deltas)
        assert objective["mean"] == pytest.approx(sum(deltas) / 2)
        assert objective["se"] is not None and objective["significant"] in (True, False)
        assert trial["verdict"]["seeds"] == 2 and trial["verdict"]["tertiary"]["passed"]
    means = {t["number"]: t["objective"]["mean"] for t in report["trials"]}
    assert (
        report["ranking"] == sorted(means, key=means.get) and report["best"] == report["ranking"][0]
    )
    written = json.loads((tmp_path / RESULTS).read_text())
    assert written["ranking"] == report["ranking"] and len(written["trials"]) == 2


def test_pruning_stops_a_clearly_bad_trial_and_keeps_its_epochs(tmp_path, corpus_dir, cache_dir):
    report = run(tmp_path, corpus_dir, cache_dir, method="grid", seeds=1,
                 space={"learning_rate": {"choices": [0.003, 0.002, 1e-7]}})  # fmt: skip
    done, also, bad = report["trials"]
    assert done["state"] == also["state"] == "complete"
    assert bad["state"] == "pruned" and bad["pruned_at_epoch"] == 2
    assert [e["epoch"] for e in bad["epochs"]] == [1, 2] and bad["runs"] == []
    assert bad["number"] not in report["ranking"]


def test_a_trial_whose_router_collapsed_is_never_best():
    def trial(number, state, mean):
        return {"number": number, "state": state, "objective": {"mean": mean}}

    trials = [trial(0, "complete", -0.01), trial(1, "tertiary_failed", -0.5),
              trial(2, "pruned", None), trial(3, "complete", -0.02), trial(4, "failed", None)]  # fmt: skip
    assert rank(trials) == [3, 0]


def test_a_sweep_that_cannot_run_is_refused_before_anything_trains(tmp_path):
    sweep = SweepConfig(base_preset="micro", method="grid", space={"top_k": {"choices": [1, 16]}})
    with pytest.raises(SweepRefused, match="top_k=16"):
        run_sweep(sweep, tmp_path, device="cpu", verbose=False)
    assert not (tmp_path / RESULTS).exists()


def test_the_command_names_what_is_wrong_in_the_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("base_preset: micro\nspace:\n  hidden_dim: {choices: [64]}\n")
    done = subprocess.run([sys.executable, "-m", "moe_core", "sweep", str(path), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "hidden_dim" in done.stderr and "Traceback" not in done.stderr
