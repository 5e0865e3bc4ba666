"""The benchmark suite at smoke sizes: every section runs and reports sane figures."""

import json
import math

import pytest
import torch

from benchmarks.moe_references import REFERENCES
from benchmarks.report import TARGETS
from benchmarks.suite import SECTIONS, run_suite
from moe_core.config import MoEConfig
from moe_core.model import MoELayer
from tests.corpus import write_corpus

LIVE = {"service", "recovery"}  # need live servers and workers: run by hand
# The gpu section's parts at smoke size; `slots` and `study_service` train through an
# embedded worker (15 s each here), the paths tests/worker/test_slots.py and the studies'
# API tests hold: they run on the device, and by hand with `--smoke`.
GPU_PARTS = ["step", "big", "study_engine", "together", "study_together"]


def _finite_positive(stats):
    assert stats["n"] >= 1
    for key in ("median", "q1", "q3", "min", "max"):
        assert math.isfinite(stats[key]) and stats[key] > 0, (key, stats)
    assert stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    # A small generated corpus, so the data section runs without WikiText-2 too.
    corpus = write_corpus(tmp_path_factory.mktemp("bench-corpus"))
    mp = pytest.MonkeyPatch()
    mp.setenv("MOE_DATA_DIR", str(corpus))
    try:
        names = [n for n in SECTIONS if n not in LIVE]
        return run_suite(names, smoke=True, write=False, verbose=False,
                         options={"gpu_parts": GPU_PARTS})  # fmt: skip
    finally:
        mp.undo()


def test_every_section_ran_without_error(results):
    assert set(results["sections"]) == set(SECTIONS) - LIVE
    for name, body in results["sections"].items():
        assert "error" not in body, (name, body.get("traceback"))
        assert body["rows"], name
    env = results["environment"]
    assert env["torch"] == torch.__version__ and env["torch_threads"] >= 1


def test_ratios_and_times_are_positive_and_finite(results):
    for body in results["sections"].values():
        for row in body["rows"]:
            if "ratio" in row:
                _finite_positive(row["ratio"])
                for stats in row["times_s"].values():
                    _finite_positive(stats)
            else:
                _finite_positive(row["seconds"])


def test_moe_layer_rows_cover_routings_and_references(results):
    rows = results["sections"]["moe_layer"]["rows"]
    assert {(r["params"]["top_k"], r["params"]["capacity_factor"]) for r in rows} == {
        (1, 1.25), (1, 2.5), (2, 1.25), (2, 2.5)
    }  # fmt: skip
    for row in rows:
        assert set(row["references"]) | set(row["skipped"]) == set(REFERENCES)
        assert 0 <= row["dropped_fraction"] < 1


def test_every_target_is_reported(results):
    targets = results["targets"]
    assert [t["target"] for t in targets] == [t.name for t in TARGETS]
    trainer = next(t for t in targets if t["target"].startswith("Trainer"))
    assert trainer["value"] is not None and trainer["met"] in (True, False)


@pytest.mark.parametrize("top_k,capacity_factor", [(1, 1.25), (1, 0.5), (2, 1.0), (2, 2.5)])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_references_compute_what_the_engine_computes(name, top_k, capacity_factor):
    """Same weights, same routing and capacity rules: the comparison is like for like."""
    torch.manual_seed(0)
    layer = MoELayer(
        16, MoEConfig(num_experts=4, expert_dim=32, top_k=top_k, capacity_factor=capacity_factor)
    )
    x = torch.randn(2, 24, 16)
    out, stats = layer(x)
    ref_out, ref_balance = REFERENCES[name](layer, x)
    torch.testing.assert_close(ref_out, out)
    torch.testing.assert_close(ref_balance, stats.balance_loss)


def test_the_gpu_section_runs_every_part_through_the_real_paths(results):
    """`python -m benchmarks gpu --smoke` on the CPU: the steps through the Trainer in every
    mode (compiled ones traced), the GPU-sized model, the study through the engine, and
    seeds trained together (GPU_PARTS)."""
    body = results["sections"]["gpu"]
    assert body["parts"] == GPU_PARTS
    names = [row["name"] for row in body["rows"]]
    for mode in ("fp32", "bf16", "bf16+graphs"):
        for model in ("dense", "baseline", "top2"):
            assert f"micro step: {model} {mode}" in names
    assert [n for n in names if n.startswith("GPU-sized")] == [
        "GPU-sized: dense bf16+graphs", "GPU-sized: top2 bf16+graphs",
    ]  # fmt: skip
    studies = [row for row in body["rows"] if row["name"].startswith("the spec's study:")]
    assert len(studies) == 1
    for row in studies:  # dense + the spec's four, every one trained
        assert row["params"]["epochs_trained"] == [1] * 5 and row["params"]["precision"] == "fp32"
    # issue 29's rows: k seeds stacked against one run alone, and the study with seeds together
    alone, two = [row for row in body["rows"] if row["name"].startswith("seeds together")]
    assert alone["per_seed_of_alone"] == 1 and two["params"]["seeds"] == 2
    assert two["aggregate_tokens_per_s"] > 0 and two["target"]["per_seed_of_alone_at_least"] == 0.8
    assert two["target"]["met"] is None  # a CPU smoke's speed means nothing
    (together,) = [
        row for row in body["rows"] if row["name"].startswith("the spec's study, 2 seeds")
    ]
    assert together["params"]["epochs_trained"] == [1] * 10  # 5 configurations x 2 seeds


def test_the_gpu_section_writes_the_gpu_named_file(tmp_path):
    from benchmarks.gpu import output_name

    name = output_name(torch.device("cpu"))
    assert name.startswith("gpu-") and name.endswith(".json") and " " not in name


def test_the_distributed_section_counts_what_the_ranks_send(results):
    """`python -m benchmarks distributed --smoke`: micro top2 on 2 CPU ranks (gloo), data
    parallel and expert parallel, against one process. Data parallel sends no all-to-all;
    expert parallel sends exactly the padded volume its configuration implies, half of it to
    the other rank; DDP's buckets hold every parameter it averages, and nothing else is
    more than a few hundred bytes of scalars."""
    body = results["sections"]["distributed"]
    assert json.loads(json.dumps(body)) == body  # what the suite writes as JSON
    rows = {row["name"]: row for row in body["rows"]}
    assert set(rows) == {
        "micro top2: 2 ranks, data parallel",
        "micro top2: 2 ranks, expert parallel 2",
    }
    scalars = 4096  # losses, routing statistics, the stop vote: a few hundred bytes
    for row in rows.values():
        sent, analytic = row["bytes_per_step"], row["analytic_bytes_per_step"]
        assert row["params"]["gpus"] == 2 and row["params"]["timed_steps"] >= 1
        assert row["times_s"]["one process"]["median"] > 0
        assert sent["all_to_all"] == analytic["all_to_all"]
        assert sent["all_to_all_off_rank"] == analytic["all_to_all_off_rank"]
        held = analytic["ddp_all_reduce"] + analytic["expert_all_reduce"]
        assert held <= sent["all_reduce"] < held + scalars
    dp = rows["micro top2: 2 ranks, data parallel"]
    assert dp["bytes_per_step"]["all_to_all"] == 0 and dp["bytes_per_step"]["dtypes"] == []
    assert dp["bytes_per_step"]["all_reduce"] > 0
    ep = rows["micro top2: 2 ranks, expert parallel 2"]
    sent = ep["bytes_per_step"]
    assert sent["all_to_all"] > 0 and sent["all_to_all_off_rank"] == sent["all_to_all"] / 2
    assert sent["dtypes"] == ["float32"]
    # DDP holds only the dense parameters once the experts are split: less to all-reduce
    assert (
        ep["analytic_bytes_per_step"]["ddp_all_reduce"]
        < dp["analytic_bytes_per_step"]["ddp_all_reduce"]
    )
    # the 8-GPU projection: expert parallel moves its rows, data parallel every gradient
    for row in body["projection"]:
        seconds, volume = row["seconds_at_nvlink"], row["bytes_per_step"]
        assert seconds["total"] == pytest.approx(seconds["all_to_all"] + seconds["all_reduce"])
        assert (volume["all_to_all"] > 0) == (row["params"]["expert_parallel"] > 1)
