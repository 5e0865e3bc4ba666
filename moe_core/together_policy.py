"""When a study's or sweep's seeds train together (moe_core.together: one stacked model of
k replicas) rather than one after another: where asked, as asked; otherwise on a GPU, when
the stack of every configuration fits the memory the run may use. Not on the CPU unless
asked: there a stack is k times the work of one run in one process, with nothing to gain
from fewer kernel launches."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

from .config import BaseConfig, ExperimentConfig
from .sizing import memory_estimate


def resolve_together(
    asked: bool | None,
    configs: Iterable[tuple[ExperimentConfig, bool]],
    base: BaseConfig,
    device: torch.device,
    *,
    replicas: int,
    share: float = 1.0,
) -> bool:
    """Whether `replicas` seeds of each (config, dense) in `configs` train as one stack.
    `share`: the part of the device's memory this process may use (a parallel study's)."""
    if replicas < 2:
        return False
    if asked is not None:
        return asked
    if device.type != "cuda":
        return False
    room = torch.cuda.get_device_properties(device).total_memory * share
    precision: Literal["bf16", "fp32"] = "bf16" if base.precision == "bf16" else "fp32"
    need = max(
        memory_estimate(config, base, dense=dense, precision=precision, replicas=replicas)["total"]
        for config, dense in configs
    )
    return need <= room
