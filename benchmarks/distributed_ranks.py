"""The processes benchmarks/distributed.py starts, one launch at a time:

    python -m torch.distributed.run --standalone --nproc-per-node N \\
        -m benchmarks.distributed_ranks SPEC.json     # every layout of N ranks in SPEC
    python -m benchmarks.distributed_ranks SPEC.json  # the plain run: one process

Every run of SPEC goes through run_single_experiment, as `python -m moe_core train` takes it
(under torchrun: Parallel, DDP, the experts' all-to-all; without: one process), on random
tokens the same on every rank, and is stopped after its last timed step. The Trainer's
`should_stop` hook, consulted at every step boundary on every rank, marks the time and
counts what this rank hands to collectives (CollectiveBytes); rank 0 writes OUT: per run and
layout, every rank's timed steps (seconds) and counted steps' bytes.

SPEC: {"out", "device": "cpu" | "cuda", "threads", "counted", "warmup", "timed",
"runs": [{"name", "base": {preset, **BaseConfig fields}, "preset", "set"}],
"layouts": [[gpus, expert_parallel], ...]} (layouts: for a torchrun launch only).
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from moe_core.config import base_config, get_experiment_configs
from moe_core.data import TokenBlocks
from moe_core.errors import TrainingCancelled
from moe_core.hooks import TrainerHooks
from moe_core.parallel import Parallel, launched, local_device
from moe_core.runner import run_single_experiment

ALL_TO_ALL = "_c10d_functional.all_to_all_single.default"
ALL_REDUCE = {"_c10d_functional.all_reduce.default", "c10d.allreduce_.default"}
BOOKKEEPING = {"_c10d_functional.wait_tensor.default",
               "_c10d_functional._wrap_tensor_autograd.default"}  # fmt: skip


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class CollectiveBytes(TorchDispatchMode):
    """What this rank hands to collectives while it is active, as torch dispatches them,
    whoever calls them: every all-to-all (the experts' dispatch and combine, the backward
    of each, the dropless split sizes) and every all-reduce (DDP's gradient buckets, the
    experts' gradients over their replicas, the losses, routing statistics and stop vote).

    Bytes are the tensors' sizes; `off_rank` leaves out the slice an all-to-all keeps on
    this rank, and `ring` weighs each all-reduce by 2(W-1)/W, what a ring all-reduce sends
    per rank over a group of W. Intercepting every op slows the step: the steps counted
    are not the ones timed."""

    def __init__(self) -> None:
        super().__init__()
        self.totals = {"all_to_all": 0, "all_to_all_off_rank": 0, "all_reduce": 0,
                       "all_reduce_ring": 0.0}  # fmt: skip
        self.calls: dict[str, int] = {}
        self.dtypes: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if "c10d" in name and name not in BOOKKEEPING:
            self.calls[name] = self.calls.get(name, 0) + 1
            if name == ALL_TO_ALL:
                self._all_to_all(*args[:4])
            elif name in ALL_REDUCE:
                self._all_reduce(name, args)
        return func(*args, **(kwargs or {}))

    def _all_to_all(self, x: torch.Tensor, _out_splits, in_splits, group_name: Any) -> None:
        group = dist.distributed_c10d._resolve_process_group(group_name)
        size, me = group.size(), dist.get_rank(group)
        rows = list(in_splits) if in_splits else [x.size(0) // size] * size
        row_bytes = _bytes(x) // max(x.size(0), 1)
        self.totals["all_to_all"] += _bytes(x)
        self.totals["all_to_all_off_rank"] += _bytes(x) - rows[me] * row_bytes
        self.dtypes.add(str(x.dtype).removeprefix("torch."))

    def _all_reduce(self, name: str, args: tuple) -> None:
        if name.startswith("c10d."):  # (tensors, ProcessGroup as a script object, ...)
            sent = sum(_bytes(t) for t in args[0])
            size = dist.ProcessGroup.unbox(args[1]).size()
        else:  # (tensor, reduce op, group name)
            sent = _bytes(args[0])
            size = dist.distributed_c10d._resolve_process_group(args[2]).size()
        self.totals["all_reduce"] += sent
        self.totals["all_reduce_ring"] += 2 * (size - 1) / size * sent

    def record(self) -> dict[str, Any]:
        return {**self.totals, "calls": dict(sorted(self.calls.items())),
                "dtypes": sorted(self.dtypes)}  # fmt: skip


class StepMarks:
    """TrainerHooks.should_stop for a benchmark: at each training step's boundary it marks
    the time (after a device sync, so a GPU step is its work, not its launches); after
    `warmup` steps it counts the collectives of `counted` steps (past DDP's first two, which
    broadcast and rebuild its buckets), then leaves `timed` steps alone and stops the run.
    Evaluation batches (no grad) are not steps: left alone."""

    def __init__(self, *, warmup: int, counted: int, timed: int, device: torch.device) -> None:
        self.counting = range(warmup, warmup + counted)
        self.timed = range(warmup + counted, warmup + counted + timed)
        self.last = self.timed.stop
        self.device = device
        self.times: list[float] = []
        self.bytes: list[dict[str, Any]] = []
        self.mode: CollectiveBytes | None = None

    def __call__(self) -> bool:
        if not torch.is_grad_enabled():
            return False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        step = len(self.times)  # the step about to start
        self.times.append(time.perf_counter())
        self.close()
        if step in self.counting:
            self.mode = CollectiveBytes()
            self.mode.__enter__()
        return step == self.last

    def timed_steps(self) -> list[float]:
        """Seconds of each timed step."""
        return [self.times[i + 1] - self.times[i] for i in self.timed]

    def close(self) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.bytes.append(self.mode.record())
            self.mode = None


def random_blocks(base, blocks: int) -> TokenBlocks:
    """`blocks` blocks of random tokens, the same in every process (one seed)."""
    g = torch.Generator().manual_seed(base.seed)
    tokens = torch.randint(0, base.vocab_size, (blocks * (base.seq_len + 1),), generator=g)
    return TokenBlocks(tokens, base.seq_len)


def train(spec: dict[str, Any], run: dict[str, Any], device: torch.device,
          parallel: Parallel | None) -> StepMarks:  # fmt: skip
    """One run, until StepMarks stops it; its marks."""
    fields = dict(run["base"])
    gpus, ep = (parallel.world_size, parallel.expert_parallel) if parallel else (1, 1)
    base = base_config(fields.pop("preset"), **fields, gpus=gpus, expert_parallel=ep)
    config = get_experiment_configs(base)[run["preset"]].model_copy(update=run.get("set", {}))
    marks = StepMarks(counted=spec["counted"], warmup=spec["warmup"], timed=spec["timed"],
                      device=device)  # fmt: skip
    steps = marks.last + 1  # one batch past the stop: the epoch never ends on its own
    train_blocks = random_blocks(base, steps * config.batch_size)
    try:
        run_single_experiment(config, train_blocks, train_blocks.head(config.batch_size), base,
                              device, verbose=False, parallel=parallel,
                              hooks=TrainerHooks(should_stop=marks))  # fmt: skip
    except TrainingCancelled:
        pass
    finally:
        marks.close()
    # The stop's traceback holds the Trainer (and DDP's reducer, with its process group) in
    # reference cycles: freed now, while the process group lives. Left to the interpreter's
    # exit, gloo's threads are torn down unjoined and a rank aborts ("terminate called
    # without an active exception"; half of the 4-rank launches here).
    gc.collect()
    if len(marks.times) != marks.last + 1:
        raise RuntimeError(f"{run['name']}: {len(marks.times)} step marks, not {marks.last + 1}")
    return marks


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    results: list[dict[str, Any]] = []
    if not launched():
        device = torch.device(spec["device"])
        for run in spec["runs"]:
            marks = train(spec, run, device, None)
            results.append({"run": run["name"], "layout": [1, 1], "launch": "plain",
                            "steps_s": [marks.timed_steps()], "bytes": [marks.bytes]})  # fmt: skip
        Path(spec["out"]).write_text(json.dumps(results))
        return
    ranks = None
    try:
        for gpus, ep in spec["layouts"]:
            # One process group for the launch; a mesh (and its groups) per layout.
            ranks = Parallel.start(gpus=gpus, expert_parallel=ep,
                                   device=local_device(spec["device"]))  # fmt: skip
            for run in spec["runs"]:
                marks = train(spec, run, ranks.device, ranks)
                every: list[Any] = [None] * ranks.world_size
                mine = (marks.timed_steps(), marks.bytes)
                dist.all_gather_object(every, mine, group=ranks.control)
                results.append({"run": run["name"], "layout": [gpus, ep], "launch": "torchrun",
                                "steps_s": [t for t, _ in every],
                                "bytes": [b for _, b in every]})  # fmt: skip
        if ranks is not None and ranks.main:
            Path(spec["out"]).write_text(json.dumps(results))
    finally:
        if ranks is not None:
            ranks.stop()


if __name__ == "__main__":
    main(sys.argv[1])
