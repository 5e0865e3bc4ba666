"""Per-step figures, every `every` steps, for the Trainer's `on_steps` (StepPoint).

A point is taken from what the step computed anyway: its losses, the learning rate it used,
and the total gradient norm that clipping returned (before clipping). None of it is read
back per step: on a GPU the point's four values are stacked on the device and copied into
pinned host memory without blocking, with an event recorded after the copy; a point is
delivered at the first step whose check finds that event complete (it is by then: the
device runs a few steps behind the host at most), and every point still waiting is
delivered when the segment of steps closes (its device sync: the epoch's end, a stop). On
the CPU a point is delivered at its step. Its time is the device's own (the event's time
from the segment's start), so tokens/s between points measures the device, not the host
running ahead of it.

The run's clock and token count (training only, continuing over epochs and resumes) and
the last point are part of the Trainer's checkpoint, so a resumed run's points go on
where the stopped run's ended.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from .hooks import StepsCallback
from .records import StepPoint
from .records import step_metrics_every as default_every


@dataclass
class _Pending:
    """A point taken, its values still on their way to the host."""

    step: int
    epoch: int
    tokens: int
    learning_rate: float
    values: torch.Tensor  # loss, ce, aux, grad norm: on the host (pinned, on CUDA)
    done: torch.cuda.Event | float  # the copy's completion event (CUDA) or perf_counter


class StepPoints:
    """A run's step points: taken, timed and delivered to the `on_steps` hook each call
    names (TrainerHooks.on_steps, read where it is used); None takes none."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.every: int | None = None  # set by plan(), once the run's length is known
        # The run so far, as of the last closed segment (checkpointed): training seconds,
        # and the last point's (step, wall time, tokens) for the next one's tokens/s.
        self.seconds = 0.0
        self.tokens = 0
        self.last: tuple[int, float, int] = (0, 0.0, 0)
        self._pending: deque[_Pending] = deque()
        self._start: torch.cuda.Event | float = 0.0

    def plan(self, every: int | None, total_steps: int) -> None:
        """Every `every` steps, else as often as keeps a run of `total_steps` at ~2,000
        points; once: what train() plans holds for each of its epochs."""
        if self.every is None:
            self.every = every or default_every(total_steps)

    def begin_segment(self) -> None:
        """Steps start (after the Trainer's device sync): the clock of the points."""
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def after_step(self, on_steps: StepsCallback | None, *, step: int, epoch: int, tokens: int,
                   learning_rate: float, loss: torch.Tensor, ce: torch.Tensor,
                   aux: torch.Tensor, grad_norm: torch.Tensor) -> None:  # fmt: skip
        """Every step: count its tokens, take a point on every `every`-th step, deliver
        the points whose values have arrived to `on_steps`."""
        self.tokens += tokens
        if on_steps is None:
            return
        if step % (self.every or 1) == 0:
            values = torch.stack([loss.detach().float(), ce.detach().float(),
                                  aux.detach().float(), grad_norm.detach().float()])  # fmt: skip
            done: torch.cuda.Event | float
            if self.cuda:
                host = torch.empty(4, pin_memory=True)
                host.copy_(values, non_blocking=True)
                done = torch.cuda.Event(enable_timing=True)
                done.record()
                values = host
            else:
                done = time.perf_counter()
            self._pending.append(_Pending(step, epoch, self.tokens, learning_rate, values, done))
        ready = 0
        for pending in self._pending:
            if isinstance(pending.done, float) or pending.done.query():
                ready += 1
            else:
                break  # events complete in order
        self._deliver(ready, on_steps)

    def close_segment(self, seconds: float, on_steps: StepsCallback | None) -> None:
        """The segment's steps are done and the device synced: deliver every waiting point,
        then add the segment's `seconds` (the Trainer's wall clock of it) to the run's."""
        self._deliver(len(self._pending), on_steps)
        self.seconds += seconds

    def _deliver(self, n: int, on_steps: StepsCallback | None) -> None:
        if n == 0:
            return
        points: list[StepPoint] = []
        for _ in range(n):
            p = self._pending.popleft()
            if isinstance(p.done, float):
                assert isinstance(self._start, float), "a CPU point in a CUDA segment"
                wall = self.seconds + p.done - self._start
            else:
                assert isinstance(self._start, torch.cuda.Event), "a CUDA point in a CPU segment"
                wall = self.seconds + self._start.elapsed_time(p.done) / 1e3
            loss, ce, aux, norm = p.values.tolist()
            step, wall_then, tokens_then = self.last
            elapsed = wall - wall_then
            points.append({
                "step": p.step, "epoch": p.epoch, "tokens": p.tokens, "wall_time": wall,
                "loss": _finite(loss), "ce_loss": _finite(ce), "aux_loss": _finite(aux),
                "learning_rate": p.learning_rate, "grad_norm": _finite(norm),
                "tokens_per_sec": (p.tokens - tokens_then) / elapsed if elapsed > 0 else None,
            })  # fmt: skip
            self.last = (p.step, wall, p.tokens)
        assert on_steps is not None, "points taken for a hook that is gone"
        on_steps(points)

    def state(self) -> dict[str, Any]:
        assert not self._pending, "checkpointed with points undelivered"
        return {"seconds": self.seconds, "tokens": self.tokens, "last": self.last}

    def load_state(self, state: dict[str, Any] | None) -> None:
        if state:  # checkpoints written before points were taken have none
            self.seconds, self.tokens = state["seconds"], state["tokens"]
            self.last = tuple(state["last"])


def _finite(value: float) -> float | None:
    # JSON and the store have no NaN: a diverged step's losses are null (the epoch's end
    # raises TrainingDiverged anyway).
    return value if math.isfinite(value) else None
