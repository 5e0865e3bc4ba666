"""What a run would be, from its config alone: sizes and steps, torch-free (the API has no
torch): moe_core.sizing's counts, which tests/moe_core/test_sizing.py holds to the model's
modules."""

from __future__ import annotations

from typing import Any, Literal

from moe_core.config import BaseConfig, ExperimentConfig
from moe_core.sizing import memory_estimate, parameters


def plan(config: ExperimentConfig, base: BaseConfig, *, dense: bool) -> dict[str, Any]:
    """A dry run's answer: the resolved configs, the model's size, an epoch's steps and
    tokens (with a token cap; without one the corpus decides, and they are null)."""
    total, active = parameters(config, base, dense=dense)
    steps = tokens = None
    if base.max_train_tokens is not None:
        blocks = base.max_train_tokens // (base.seq_len + 1)
        steps = blocks // config.batch_size  # training drops a last partial batch
        tokens = steps * config.batch_size * base.seq_len
    # auto: bf16 on a GPU
    precision: Literal["bf16", "fp32"] = "fp32" if base.precision == "fp32" else "bf16"
    return {
        "gpu_memory": memory_estimate(config, base, dense=dense, precision=precision),
        "config": config.model_dump(mode="json"),
        "base": base.model_dump(mode="json"),
        "dense": dense,
        "params": total,
        "active_params": active,
        "steps_per_epoch": steps,
        "tokens_per_epoch": tokens,
        "num_epochs": base.num_epochs,
    }
