"""Timing: interleaved variants, per-round ratios, robust summaries, and the environment.

Every figure the suite reports is a ratio of variants timed side by side in one process:
each round runs every variant once, in an order rotated from round to round, so that a
burst of load from a neighbour on a shared machine lands on all variants alike and the
per-round ratio cancels most of it. Summaries are the median with the interquartile range
and min/max, never a mean (one descheduled sample would drag a mean anywhere).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from moe_core.provenance import source_commit

ROOT = Path(__file__).resolve().parent.parent


def summarize(samples: list[float]) -> dict[str, float]:
    """median, quartiles, min, max and count of `samples`."""
    xs = sorted(samples)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {
        "median": statistics.median(xs),
        "q1": q1,
        "q3": q3,
        "min": xs[0],
        "max": xs[-1],
        "n": len(xs),
    }


class DeviceTimer:
    """Times a callable: wall clock on the CPU, CUDA events on a GPU.

    On CUDA the clock is a pair of events around the call and one synchronize on the end
    event, so the time is the GPU's, not the launch queue's.
    """

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def interleave(
    variants: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int,
    timer: Callable[[Callable[[], Any]], float],
) -> dict[str, list[float]]:
    """Seconds per call of each variant: `warmup` untimed rounds, then `repeats` rounds,
    each running every variant once in an order rotated by one each round."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(timer(variants[name]))
    return samples


def ratio_samples(samples: Mapping[str, list[float]], num: str, den: str) -> list[float]:
    """Per-round ratios samples[num][i] / samples[den][i] (same round, so same load)."""
    return [a / b for a, b in zip(samples[num], samples[den], strict=True)]


def times_summary(samples: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    return {name: summarize(xs) for name, xs in samples.items()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def environment(device: torch.device) -> dict[str, Any]:
    """What a figure depends on: machine, device, torch build, threads, load, commit."""
    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": source_commit(),
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu_peak_bf16_flops"] = gpu_peak_flops(device)
    return env


# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets. Keys are
# matched as substrings of torch.cuda.get_device_name, most specific first.
GPU_PEAK_BF16_FLOPS = (
    ("H200", 989e12),  # H200 SXM: same SM count and clocks as H100 SXM
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # H100 SXM5
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
)


def gpu_peak_flops(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device)
    for key, flops in GPU_PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return None
