"""The ways a run ends other than by finishing, raised by the Trainer and the data pipeline
and caught by their callers (the study, the worker). Torch-free."""

from __future__ import annotations


class TrainingCancelled(Exception):
    """`should_stop()` turned true: training stopped at a step boundary (after writing a
    checkpoint there, when the Trainer has a checkpoint path), or data preparation did."""

    def __init__(self, message: str, *, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step  # the 1-based epoch, the steps done in it


class TrainingDiverged(FloatingPointError):
    """An epoch's mean loss is NaN or infinite: the run cannot go on meaningfully."""


class CheckpointMismatch(ValueError):
    """The checkpoint carries another tag: it belongs to another run."""
