"""One seed's run within a stack of seeds trained together (moe_core.together): what a
Trainer keeps for its run, and how it left the stack."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import BaseConfig
from .epoch import EpochProgress, Loader
from .hooks import TrainerHooks
from .records import MetricsHistory
from .reporting import ConsoleReporter
from .step_points import StepPoints


@dataclass
class Replica:
    """One seed's run within the stack: what a Trainer keeps for its run."""

    index: int  # its place in base_configs (and in the results)
    base: BaseConfig
    hooks: TrainerHooks
    loader: Loader
    points: StepPoints
    reporter: ConsoleReporter | None = None
    history: MetricsHistory = field(default_factory=MetricsHistory)
    progress: EpochProgress | None = None
    batches: Iterator[Any] | None = None
    best_state: dict[str, torch.Tensor] | None = None  # early stopping's weights
    kept: dict[str, torch.Tensor] | None = None  # the weights its result keeps, once done
    outcome: BaseException | None = None  # how it failed or was cancelled

    @property
    def running(self) -> bool:
        return self.outcome is None and self.kept is None

    def running_loss(self) -> float:
        p = self.progress
        return (p.totals[0] / max(p.steps, 1)).item() if p is not None else math.nan
