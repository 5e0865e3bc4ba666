"""How a run shares its GPU with the other runs of its worker (MOE_RUNS_PER_GPU): the
memory it may take, whether it can fit at all, and how long it waits before trying again
when the GPU ran out of memory beside its neighbours."""

from __future__ import annotations

import logging

import torch

from moe_core.config import BaseConfig, ExperimentConfig
from moe_core.runner import resolve_precision
from moe_core.sizing import GiB, memory_estimate
from store.settings import Settings

log = logging.getLogger(__name__)


class GPUTooSmall(RuntimeError):
    """The run cannot fit on this GPU even alone: trying again would not help."""


def memory_fraction(*, estimate: int, total: int, slots: int) -> float:
    """The share of the GPU's memory the run's process may allocate: its slot's, 1/slots,
    when the run's estimate fits in that (so that it cannot starve a neighbour); all of it
    when the run needs more than a slot (it may then run out beside busy neighbours, and is
    handed back to try again). Raises GPUTooSmall when it cannot fit even alone."""
    if estimate > total:
        raise GPUTooSmall(
            f"the run needs an estimated {estimate / GiB:.1f} GiB of GPU memory (weights, "
            f"gradients, AdamW state and one step's activations) and the GPU has "
            f"{total / GiB:.1f} GiB: lower batch_size, seq_len or the model's sizes"
        )
    share = 1.0 / slots
    return share if estimate <= share * total else 1.0


def retry_delay(oom_handbacks: int) -> float:
    """Seconds before a run handed back for want of memory is offered again: 10, 20, 40 ...
    up to 5 minutes, so that its neighbours have finished or shrunk meanwhile."""
    return min(10.0 * 2**oom_handbacks, 300.0)


def share_the_gpu(
    config: ExperimentConfig, base: BaseConfig, *, dense: bool, device: torch.device,
    settings: Settings, replicas: int = 1,
) -> None:  # fmt: skip
    """Cap this process's share of the GPU's memory (memory_fraction), or refuse the run
    (a stack of `replicas` seeds: worker.together) at once when it cannot fit even alone."""
    # base.precision is pinned (bf16 or fp32) by now; resolving it again keeps it
    precision = resolve_precision(base.precision, device)
    estimate = memory_estimate(config, base, dense=dense, precision=precision,
                               replicas=replicas)["total"]  # fmt: skip
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = memory_fraction(estimate=estimate, total=total, slots=settings.runs_per_gpu)
    # It takes an index (torch.device("cuda") raises there): the current device's if none.
    index = torch.cuda.current_device() if device.index is None else device.index
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    log.info("GPU memory: an estimated %.2f GiB of %.1f GiB; this run may use %.0f%%",
             estimate / GiB, total / GiB, 100 * fraction)  # fmt: skip
