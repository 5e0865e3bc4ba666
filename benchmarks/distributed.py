"""Part 8, `python -m benchmarks distributed` (issue 26): a run on several ranks against one
process training the same global batch, and what the ranks send each other per step.

On the CPU (gloo; writes results/distributed-cpu.json): the micro and small bases, the
`top2` preset (top-2, capacity 2.5: the padded all-to-all) and `dropless` (top-1, variable
splits), each trained by one plain process and under torchrun by 1 rank, 2 ranks data
parallel, 2 ranks expert parallel and 4 ranks (2 replicas x expert parallel 2), every
process on one thread. Per row: the median step time over the timed steps after warm-up,
each timed step over the plain process's median, and the bytes each rank handed to
all-to-all and all-reduce per step (benchmarks.distributed_ranks counts them as torch
dispatches them), beside the volumes computed from the configuration (`analytic`), which
`projection` carries to 8 GPUs at the spec's and the GPU-sized model's dimensions.

Several ranks share this machine's cores: a ratio here is the cost of the distributed
path (collectives, process scheduling) on a busy CPU, not the speed-up of more devices.

On a machine with a GPU the same command measures the distributed path's overhead on one
GPU instead: world size 1 through torchrun (DDP, the statistics' all-reduces, the stop
vote) against the plain run, bf16, at the small and spec bases, plus the CPU's layouts on
GPUs where there are enough (results/distributed-<GPU name>.json). Not yet measured: no
GPU was lent when it was written.

`--smoke`: micro, top2, 2 ranks (data parallel and expert parallel) and the plain
process, a few steps; in the test suite (tests/benchmarks/test_smoke.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moe_core.config import BaseConfig, ExperimentConfig, base_config, get_experiment_configs
from moe_core.runner import build_model

from .context import Context
from .harness import ROOT, device_name, environment, summarize

FLOAT32 = 4  # bytes: the rows the experts exchange are the residual stream's, float32
NVLINK_BYTES_PER_S = 450e9  # H100 SXM: NVLink 4, 900 GB/s per GPU, 450 each direction

Layout = tuple[int, int]  # (gpus, expert_parallel)


@dataclass(frozen=True)
class Plan:
    """What `run` trains: each base size x preset, in one plain process and in each launch
    (world size -> the layouts one torchrun launch of that many ranks trains), `rounds`
    times; each run `warmup` steps, `counted` ones whose collectives are counted, then
    `timed` ones."""

    sizes: tuple[str, ...]
    presets: tuple[str, ...]
    launches: dict[int, list[Layout]]
    warmup: int
    counted: int
    timed: int
    rounds: int
    device: str
    timeout_s: float  # per launch: a rank lost in a collective fails the run, not hangs it
    threads: int = 1  # per process


CPU = Plan(sizes=("micro", "small"), presets=("top2", "dropless"),
           launches={1: [(1, 1)], 2: [(2, 1), (2, 2)], 4: [(4, 2)]},
           warmup=5, counted=1, timed=15, rounds=4, device="cpu", timeout_s=1800)  # fmt: skip
SMOKE = Plan(sizes=("micro",), presets=("top2",), launches={2: [(2, 1), (2, 2)]},
             warmup=2, counted=1, timed=3, rounds=1, device="cpu", timeout_s=300)  # fmt: skip
GPU = Plan(sizes=("small", "spec"), presets=("top2", "dropless"), launches={1: [(1, 1)]},
           warmup=10, counted=1, timed=50, rounds=2, device="cuda", timeout_s=600)  # fmt: skip


def on_gpu(ctx: Context) -> bool:
    return torch.cuda.is_available() and not ctx.smoke


def output_name(device: torch.device) -> str:
    """results/distributed-cpu.json, or distributed-<GPU name>.json where a GPU is seen."""
    if not torch.cuda.is_available():
        return "distributed-cpu.json"
    name = "".join(c if c.isalnum() else "-" for c in device_name(torch.device("cuda")))
    return f"distributed-{'-'.join(filter(None, name.split('-')))}.json"


def layout_name(gpus: int, ep: int) -> str:
    if gpus == 1:
        return "1 rank (torchrun)"
    if ep == 1:
        return f"{gpus} ranks, data parallel"
    if ep == gpus:
        return f"{gpus} ranks, expert parallel {ep}"
    return f"{gpus} ranks, {gpus // ep} x {ep} (expert parallel {ep})"


# ------------------------------------------------------------------------------ volumes


def _configs(size: str, preset: str, **overrides: Any) -> tuple[BaseConfig, ExperimentConfig]:
    base = base_config(size, **overrides)
    return base, get_experiment_configs(base)[preset]


def parameter_bytes(config: ExperimentConfig, base: BaseConfig) -> tuple[int, int]:
    """(float32 bytes of the model's parameters outside the experts, of every expert's)."""
    with torch.device("meta"):  # counted, not allocated
        model = build_model(config, base)
    expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in f".{n}")
    dense = sum(p.numel() for p in model.parameters()) - expert
    return FLOAT32 * dense, FLOAT32 * expert


def analytic_bytes(config: ExperimentConfig, base: BaseConfig, gpus: int, ep: int) -> dict:
    """What each rank sends per training step, from the configuration alone.

    All-to-all (expert parallel only), per MoE layer: dispatch and combine, and the
    backward of each, each of one rank's rows. With a capacity the rows are padded to it:
    E x capacity rows of the hidden size, every step; dropless sends each of its k x tokens
    assignments, and the split sizes first (E int64). A rank keeps 1/ep of what it hands
    the all-to-all (its own experts' rows); the off-rank share of a dropless one assumes
    balanced routing.

    All-reduce: DDP's gradient buckets, the parameters it holds (every one when ep is 1,
    else those outside the experts) over all ranks; then each expert's gradient over its
    replicas (gpus / ep of them). `*_ring` weighs them by 2(W-1)/W, what a ring all-reduce
    sends per rank over W. The per-step scalars (losses, routing statistics, the stop
    vote) are left out: bytes, not kilobytes."""
    dense, expert = parameter_bytes(config, base)
    layers, experts, width = len(base.moe_layers), config.experts(base), base.hidden_dim
    tokens = config.batch_size // gpus * base.seq_len  # one rank's share of the batch
    if config.dropless:
        rows, splits = config.top_k * tokens, experts * 8
    else:
        capacity = math.ceil(config.capacity_factor * tokens / experts)
        rows, splits = experts * capacity, 0
    a2a = layers * (4 * rows * width * FLOAT32 + splits) if ep > 1 else 0
    ddp = dense if ep > 1 else dense + expert
    experts_local = expert // ep if ep > 1 else 0
    replicas = gpus // ep
    return {
        "all_to_all": a2a,
        "all_to_all_off_rank": a2a * (ep - 1) / ep,
        "ddp_all_reduce": ddp,
        "ddp_all_reduce_ring": 2 * (gpus - 1) / gpus * ddp,
        "expert_all_reduce": experts_local,
        "expert_all_reduce_ring": 2 * (replicas - 1) / replicas * experts_local,
    }


def projection(nvlink_bytes_per_s: float = NVLINK_BYTES_PER_S) -> list[dict[str, Any]]:
    """analytic_bytes at 8 GPUs, for the spec's model and the GPU-sized one (benchmarks.gpu's
    `big`), top2, and how long each volume takes at `nvlink_bytes_per_s` per direction: an
    all-to-all's off-rank share, a ring all-reduce's 2(W-1)/W."""
    from . import gpu

    rows = []
    for model, overrides, batch in (("spec", {}, None),
                                    ("GPU-sized", gpu.BIG, gpu.FULL["big_batch"])):  # fmt: skip
        base, config = _configs("spec", "top2", **overrides)
        if batch:
            config = config.model_copy(update={"batch_size": batch})
        for gpus, ep in ((8, 8), (8, 1)):
            volume = analytic_bytes(config, base, gpus, ep)
            a2a = volume["all_to_all_off_rank"] / nvlink_bytes_per_s
            ring = volume["ddp_all_reduce_ring"] + volume["expert_all_reduce_ring"]
            all_reduce = ring / nvlink_bytes_per_s
            rows.append({
                "name": f"{model} top2: {layout_name(gpus, ep)}",
                "params": {"model": model, "gpus": gpus, "expert_parallel": ep,
                           "global_batch": config.batch_size, "seq_len": base.seq_len,
                           "hidden_dim": base.hidden_dim, "moe_layers": len(base.moe_layers),
                           "tokens_per_step": config.batch_size * base.seq_len},
                "bytes_per_step": volume,
                "seconds_at_nvlink": {"all_to_all": a2a, "all_reduce": all_reduce,
                                      "total": a2a + all_reduce},
            })  # fmt: skip
    return rows


# ------------------------------------------------------------------------------ launches


def _launch(spec: dict[str, Any], world: int | None, layouts: list[Layout], tmp: Path,
            timeout_s: float) -> list[dict[str, Any]]:  # fmt: skip
    """One launch of benchmarks.distributed_ranks (torchrun of `world` ranks training
    `layouts`, or None: one plain process); its results."""
    out = tmp / f"out-{world or 'plain'}.json"
    path = tmp / f"spec-{world or 'plain'}.json"
    path.write_text(json.dumps({**spec, "out": str(out), "layouts": layouts}))
    runner = [sys.executable]
    if world:
        runner += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(spec["threads"])}
    done = subprocess.run([*runner, "-m", "benchmarks.distributed_ranks", str(path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{world or 'plain'} launch failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def _mean_over(records: list[list[dict[str, Any]]], key: str) -> float:
    return statistics.fmean(step[key] for rank in records for step in rank)


def _row(size: str, preset: str, gpus: int, ep: int, plan: Plan,
         plain: list[float], steps: list[float], counted: list[list[dict[str, Any]]],
         ) -> dict[str, Any]:  # fmt: skip
    base, config = _configs(size, preset)
    name = layout_name(gpus, ep)
    one = statistics.median(plain)
    measured: dict[str, Any] = {key: _mean_over(counted, key) for key in
                ("all_to_all", "all_to_all_off_rank", "all_reduce", "all_reduce_ring")}  # fmt: skip
    measured["all_to_all_off_rank_max"] = max(s["all_to_all_off_rank"] for r in counted for s in r)
    measured["dtypes"] = sorted({d for rank in counted for s in rank for d in s["dtypes"]})
    measured["calls"] = counted[0][-1]["calls"]  # rank 0's last counted step
    return {
        "name": f"{size} {preset}: {name}",
        "params": {
            "base": size,
            "preset": preset,
            "gpus": gpus,
            "expert_parallel": ep,
            "replicas": gpus // ep,
            "global_batch": config.batch_size,
            "seq_len": base.seq_len,
            "hidden_dim": base.hidden_dim,
            "experts": config.experts(base),
            "top_k": config.top_k,
            "capacity_factor": None if config.dropless else config.capacity_factor,
            "dropless": config.dropless,
            "threads_per_rank": plan.threads,
            "device": plan.device,
            "warmup_steps": plan.warmup,
            "timed_steps": len(steps),
        },  # fmt: skip
        "ratio_of": "step time / one process's median step",
        "ratio": summarize([s / one for s in steps]),
        "times_s": {"one process": summarize(plain), name: summarize(steps)},
        # per rank and step: the mean over the ranks and the counted steps
        "bytes_per_step": measured,
        "analytic_bytes_per_step": analytic_bytes(config, base, gpus, ep),
    }


def run(ctx: Context) -> dict[str, Any]:
    gpu = on_gpu(ctx)
    plan = GPU if gpu else SMOKE if ctx.smoke else CPU
    if gpu:  # the CPU's layouts too, on GPUs where there are enough of them
        more = {w: ls for w, ls in CPU.launches.items() if 1 < w <= torch.cuda.device_count()}
        plan = dataclasses.replace(plan, launches={**plan.launches, **more})
    runs: list[dict[str, Any]] = [
        {"name": f"{size} {preset}", "base": {"preset": size}, "preset": preset}
        for size in plan.sizes
        for preset in plan.presets
    ]
    spec = {"device": plan.device, "threads": plan.threads, "warmup": plan.warmup,
            "counted": plan.counted, "timed": plan.timed, "runs": runs}  # fmt: skip
    plain: dict[str, list[float]] = {r["name"]: [] for r in runs}
    steps: dict[tuple, list[float]] = {}
    counted: dict[tuple, list[list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="moe-bench-distributed-") as tmp:
        # Rounds of every launch, the order rotated by one each round (benchmarks.harness's
        # method, a launch for a variant): a neighbour's burst of load lands on all alike.
        order: list[int | None] = [None, *sorted(plan.launches)]
        for r in range(plan.rounds):
            for world in order[r % len(order) :] + order[: r % len(order)]:
                layouts = plan.launches[world] if world else []
                for result in _launch(spec, world, layouts, Path(tmp), plan.timeout_s):
                    if world is None:
                        plain[result["run"]] += result["steps_s"][0]
                        continue
                    key = (result["run"], *result["layout"])
                    steps.setdefault(key, []).extend(result["steps_s"][0])  # rank 0's clock
                    ranks = counted.setdefault(key, [[] for _ in result["bytes"]])
                    for mine, more_steps in zip(ranks, result["bytes"], strict=True):
                        mine.extend(more_steps)
    rows = []
    for run_spec in runs:
        for world in sorted(plan.launches):
            for gpus, ep in plan.launches[world]:
                key = (run_spec["name"], gpus, ep)
                size, preset = run_spec["base"]["preset"], run_spec["preset"]
                rows.append(_row(size, preset, gpus, ep, plan, plain[run_spec["name"]],
                                 steps[key], counted[key]))  # fmt: skip
    body: dict[str, Any] = {
        "rows": rows,
        "projection": projection(),
        "nvlink_bytes_per_s": NVLINK_BYTES_PER_S,
        "plan": json.loads(json.dumps(dataclasses.asdict(plan))),  # as the JSON holds it
        "launch": "plain process vs python -m torch.distributed.run --standalone "
        "-m benchmarks.distributed_ranks",
    }
    body["load_avg_at_end"] = list(os.getloadavg())
    if gpu:
        body["machine"] = environment(torch.device("cuda"))
        body["gpu_count"] = torch.cuda.device_count()
    return body
