"""What a caller plugs into the Trainer, which knows nothing of what they do (minGPT's
callbacks): the service stores epochs and step points and reports progress through them,
and asks through `should_stop` whether to go on. Torch-free: the records they receive are
declared in moe_core.records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .records import EpochRecord, ProgressReport, StepPoint

EpochCallback = Callable[[EpochRecord], None]
ProgressCallback = Callable[[ProgressReport], None]
StepsCallback = Callable[[list[StepPoint]], None]


@dataclass
class TrainerHooks:
    """The Trainer's callbacks, passed whole (each optional)."""

    # Each finished epoch's complete record, before that epoch's checkpoint is written (a
    # crash between the two replays the epoch: a consumer upserting by epoch sees each).
    on_epoch_end: EpochCallback | None = None
    # Where training stands after every step and as each evaluation starts: host values,
    # so that it costs no device sync.
    on_progress: ProgressCallback | None = None
    # The step points taken every `step_metrics_every` steps (moe_core.step_points), in
    # order, a few at a time; None takes none.
    on_steps: StepsCallback | None = None
    # None: often enough for the run's length to give at most ~2,000 points.
    step_metrics_every: int | None = None
    # Consulted before every training step and evaluation batch: when it answers true, the
    # Trainer checkpoints at that step boundary and raises TrainingCancelled.
    should_stop: Callable[[], bool] | None = None

    def stop_requested(self) -> bool:
        return self.should_stop is not None and bool(self.should_stop())
