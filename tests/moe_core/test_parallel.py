"""One run on several ranks (moe_core.parallel, moe_core.expert_parallel), for real: torchrun
launches 2 and 4 CPU processes on gloo, on the micro base and the generated corpus.

What "the same run" means, stated:
- where no rank decides anything alone (no dropout; dropless, or a capacity no expert
  reaches), the run is the single-process run, every loss and expert statistic, up to the
  order of float sums: EXACT, 1e-4 relative. This holds the data split, the gradient
  averaging, the expert all-to-all (padded to the capacity, and by split sizes when
  dropless), the statistics' sums and the clipping norm to the single-process run;
- with the preset's capacity (top-2, capacity 2.5) each rank applies it to its own shard
  of the batch, as Megatron-Core and GShard do, so other assignments are dropped than when
  one process sees the whole batch: after two epochs the run is within CLOSE_NATS of the
  single-process run's CE, its share of dropped assignments within CLOSE_DROPPED, and its
  routing's normalised entropy within CLOSE_ENTROPY.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from moe_core.__main__ import main as moe_core_main
from moe_core.config import base_config, dense_config, get_experiment_configs
from moe_core.data import build_datasets
from moe_core.runner import run_single_experiment

ROOT = Path(__file__).resolve().parents[2]
EXACT = 1e-4
CLOSE_NATS = 0.05
CLOSE_DROPPED = 0.05
CLOSE_ENTROPY = 0.05
BASE = {"max_train_tokens": 4096, "max_val_tokens": 1024}
NO_DROPOUT = {"dropout": 0.0}
ROOMY = {"dropout": 0.0, "capacity_factor": 8.0}  # capacity 8N/8: no expert overflows
RUNS = {
    "dense": {"dense": True, "set": NO_DROPOUT},
    "top1": {"preset": "baseline", "set": ROOMY},
    "top2": {"preset": "top2", "set": ROOMY},
    "dropless": {"preset": "dropless", "set": NO_DROPOUT},
    "top2_capacity": {"preset": "top2"},  # as the preset is: dropout 0.1, capacity 2.5
}
EXACT_RUNS = ("dense", "top1", "top2", "dropless")


def torchrun(n: int, *args: str, timeout: float = 300, **popen) -> subprocess.Popen | dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={n}", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if popen:
        return subprocess.Popen(command, cwd=ROOT, env=env, text=True, **popen)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return {}


@pytest.fixture(scope="module")
def micro(corpus_dir, cache_dir) -> dict:
    return {**BASE, "data_dir": str(corpus_dir), "cache_dir": str(cache_dir)}


@pytest.fixture(scope="module")
def single(micro) -> dict[str, dict]:
    """Each run of RUNS in this process, as one process trains it."""
    base = base_config("micro", **micro)
    data = build_datasets(base)
    out = {}
    for name, run in RUNS.items():
        dense = run.get("dense", False)
        start = dense_config(base) if dense else get_experiment_configs(base)[run["preset"]]
        config = start.model_copy(update=run.get("set", {}))
        out[name] = run_single_experiment(config, data.train, data.val, base, "cpu",
                                          dense=dense, verbose=False)  # fmt: skip
    return out


def launched(tmp_path: Path, micro: dict, gpus: int, expert_parallel: int) -> dict[str, dict]:
    spec = tmp_path / f"spec-{gpus}-{expert_parallel}.json"
    out = tmp_path / f"out-{gpus}-{expert_parallel}"
    out.mkdir()
    spec.write_text(json.dumps({"out": str(out), "runs": RUNS,
                                "base": {**micro, "gpus": gpus, "expert_parallel": expert_parallel}}))  # fmt: skip
    torchrun(gpus, str(ROOT / "tests" / "moe_core" / "parallel_driver.py"), str(spec))
    return {name: json.loads((out / f"{name}.json").read_text()) for name in RUNS}


def curves(result: dict) -> dict[str, list[float]]:
    m = result["metrics"]
    return {key: m[key] for key in ("train_ce_losses", "val_ce_losses", "train_eval_ce_losses",
                                    "train_aux_losses", "val_aux_losses")}  # fmt: skip


def usage(result: dict) -> list[float]:
    history = result["metrics"]["eval_expert_stats_history"]
    return [u for layer in history[-1]["layers"] for u in layer["usage"]] if history else []


def train_usage(result: dict) -> list[float]:
    history = result["metrics"]["expert_stats_history"]
    return [u for layer in history[-1]["layers"] for u in layer["usage"]] if history else []


def assert_exact(mine: dict, theirs: dict) -> None:
    for key, values in curves(mine).items():
        assert values == pytest.approx(curves(theirs)[key], rel=EXACT), key
    assert usage(mine) == pytest.approx(usage(theirs), rel=EXACT, abs=1e-6)
    assert train_usage(mine) == pytest.approx(train_usage(theirs), rel=EXACT, abs=1e-6)
    assert mine["metrics"]["steps"] == theirs["metrics"]["steps"]


def routing(result: dict) -> tuple[float, float]:
    """(normalised entropy, share dropped) of the last epoch's training routing, over the
    MoE layers."""
    layers = result["metrics"]["expert_stats_history"][-1]["layers"]
    entropy = sum(layer["entropy"] / math.log(len(layer["usage"])) for layer in layers)
    return entropy / len(layers), max(layer["dropped"] for layer in layers)


def assert_close(mine: dict, theirs: dict) -> None:
    for key in ("train_ce_losses", "val_ce_losses"):
        assert curves(mine)[key] == pytest.approx(curves(theirs)[key], abs=CLOSE_NATS), key
    (entropy, dropped), (their_entropy, their_dropped) = routing(mine), routing(theirs)
    assert entropy == pytest.approx(their_entropy, abs=CLOSE_ENTROPY)
    assert dropped == pytest.approx(their_dropped, abs=CLOSE_DROPPED)
    assert mine["metrics"]["steps"] == theirs["metrics"]["steps"]


@pytest.mark.parametrize(
    ("gpus", "expert_parallel"),
    [(2, 1), (2, 2), (4, 2)],
    ids=["2-data-parallel", "2-expert-parallel", "4-ranks-2x2"],
)
def test_a_run_on_several_ranks_is_the_single_process_run(
    tmp_path, micro, single, gpus, expert_parallel
):
    ranks = launched(tmp_path, micro, gpus, expert_parallel)
    for name in EXACT_RUNS:
        assert_exact(ranks[name], single[name])
    assert_close(ranks["top2_capacity"], single["top2_capacity"])
    # tokens/s counts every rank's tokens, and the layout is recorded with the result
    assert ranks["top2"]["parallel"] == {"gpus": gpus, "expert_parallel": expert_parallel}


def test_a_run_stopped_on_2_ranks_finishes_on_1_and_a_1_rank_checkpoint_resumes_on_4(
    tmp_path, micro
):
    args = ["--base", "micro", "--preset", "dropless", "--set", "dropout=0.0",
            "--data-dir", micro["data_dir"], "--cache-dir", micro["cache_dir"],
            "--base-set", f"max_train_tokens={micro['max_train_tokens']}",
            "--base-set", f"max_val_tokens={micro['max_val_tokens']}"]  # fmt: skip
    whole = tmp_path / "whole"
    assert moe_core_main(["train", *args, "--epochs", "3", "--out", str(whole), "--quiet"]) == 0

    # 2 ranks (experts split), SIGTERM once the first epoch is reported: every rank stops at
    # the same step and writes its part of the checkpoint
    out = tmp_path / "resumed"
    launch = torchrun(2, "-m", "moe_core", "train", *args, "--epochs", "3", "--out", str(out),
                      "--base-set", "gpus=2", "--base-set", "expert_parallel=2",
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    for line in launch.stdout:
        if "] epoch 1/3 " in line:
            launch.send_signal(signal.SIGTERM)
            break
    launch.wait(timeout=120)
    assert launch.returncode != 0 and (out / "checkpoint.dcp" / ".metadata").is_file()
    assert not (out / "result.json").exists()
    # the rest on one process: it reads the 2 ranks' checkpoint
    assert moe_core_main(["train", *args, "--epochs", "3", "--out", str(out), "--quiet"]) == 0
    assert_exact(json.loads((out / "result.json").read_text()),
                 json.loads((whole / "result.json").read_text()))  # fmt: skip

    # and a one-process checkpoint taken on by 4 ranks (2 x 2)
    four = tmp_path / "four"
    assert moe_core_main(["train", *args, "--epochs", "2", "--out", str(four), "--quiet"]) == 0
    torchrun(4, "-m", "moe_core", "train", *args, "--epochs", "3", "--out", str(four),
             "--base-set", "gpus=4", "--base-set", "expert_parallel=2", "--quiet")  # fmt: skip
    assert_exact(json.loads((four / "result.json").read_text()),
                 json.loads((whole / "result.json").read_text()))  # fmt: skip


def test_a_run_asking_for_ranks_it_was_not_launched_with_says_how(tmp_path, micro, capsys):
    code = moe_core_main(["train", "--base", "micro", "--base-set", "gpus=2",
                          "--data-dir", micro["data_dir"], "--out", str(tmp_path)])  # fmt: skip
    assert code == 2
    assert "torchrun --standalone --nproc-per-node 2" in capsys.readouterr().err
