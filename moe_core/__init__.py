"""moe_core: a GPT with Mixture-of-Experts layers, WikiText-2 data, and the spec's Trainer,
experiment configs, success criteria and study pipeline.

Names are exported lazily so that `import moe_core.config` (what the API uses) stays
free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExperimentConfig": "config",
    "BaseConfig": "config",
    "GatingTempSchedule": "config",
    "base_config": "config",
    "get_experiment_configs": "config",
    "MoEConfig": "config",
    "RoutingConfig": "config",
    "Trainer": "trainer",
    "TrainerHooks": "hooks",
    "Checkpointing": "checkpoint",
    "TrainingCancelled": "errors",
    "TrainingDiverged": "errors",
    "GPT": "model",
    "GPTConfig": "model",
    "MoELayer": "model",
    "build_datasets": "data",
    "count_parameters": "runner",
    "run_single_experiment": "runner",
    "evaluate_success_criteria": "study",
    "main": "study",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'moe_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
