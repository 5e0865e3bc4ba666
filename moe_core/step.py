"""A training step's forward and its losses, in the run's precision, compiled or not; and
the clock that times a step's phases without draining the GPU's queue."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import CompileMode
from .model import compile_ready
from .routing import RoutingStats

StepResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[RoutingStats]]
Mark = float | torch.cuda.Event  # a point in time (PhaseClock.now)


class LossStep:
    """`step(x, y, smoothing)` -> (objective, ce, aux, routing): ce is plain cross-entropy,
    in float32; the objective adds the aux loss and label smoothing; routing has each MoE
    layer's RoutingStats (empty for a model without them).

    `amp_dtype` runs the forward under autocast (bf16 on a GPU; the router and the losses
    stay float32). `compile` turns forward and losses into one compiled graph (MoELayer's
    shapes do not depend on the routing); `graphs` replays it as CUDA graphs, which removes
    the launch cost of its few hundred small kernels at the spec's sizes. `eager` is the
    same computation uncompiled, for a batch of another size (a short last evaluation
    batch), which would otherwise compile a second graph for one batch per pass."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        *,
        routed: bool,
        amp_dtype: torch.dtype | None = None,
        compile: CompileMode = "off",
        mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model, self.device, self.routed, self.amp_dtype = model, device, routed, amp_dtype
        # On several ranks (moe_core.parallel): each rank's losses are its shard's; they are
        # reported as the batch's (their mean over the ranks), the gradient left the shard's.
        self.mean = mean
        self.graphs = compile == "graphs" and device.type == "cuda"
        self.compiled: Callable[..., StepResult] = self.eager
        if compile != "off":
            compile_ready()
            mode = "reduce-overhead" if self.graphs else None
            self.compiled = torch.compile(self.eager, mode=mode, dynamic=False)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, smoothing: float) -> StepResult:
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are consumed
        return self.compiled(x, y, smoothing)

    def eager(self, x: torch.Tensor, y: torch.Tensor, smoothing: float) -> StepResult:
        with self.autocast():
            if self.routed:
                logits, aux, routing = self.model(x, output_routing=True)
            else:
                (logits, aux), routing = self.model(x), []
            objective, ce = self.losses(logits, y, smoothing)
        objective = objective + aux
        # (a DDP wrapper keeps a training flag of its own: its module's is the Trainer's)
        if self.mean is not None and getattr(self.model, "module", self.model).training:
            own = torch.stack([objective.detach(), ce.detach(), aux.detach()])
            batch = self.mean(own)
            objective = objective + (batch[0] - own[0])  # the value moves, not the gradient
            ce, aux = batch[1], batch[2]
        return objective, ce, aux, routing

    def losses(
        self, logits: torch.Tensor, y: torch.Tensor, smoothing: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective without the aux loss, plain CE) from the logits and the targets."""
        logits = logits.view(-1, logits.size(-1)).float()
        y = y.reshape(-1)
        if smoothing > 0:
            # One log-softmax gives both the plain CE that is reported (so runs with and
            # without smoothing compare) and the smoothed CE that is optimised, which is
            # (1 - eps) * nll + eps * mean over the vocabulary of -log p.
            logp = F.log_softmax(logits, dim=-1)
            ce = -logp.gather(1, y.unsqueeze(1)).mean()
            return (1 - smoothing) * ce - smoothing * logp.mean(), ce
        ce = F.cross_entropy(logits, y)
        return ce, ce

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


class PhaseClock:
    """Points in time for a step's phases: the wall clock on the CPU, recorded events on
    CUDA, read once per epoch after one synchronize, so the GPU's queue never drains between
    phases and timing costs no sync per step."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def sync(self) -> None:
        # CUDA kernels run asynchronously: without this an epoch's wall clock would stop
        # before its work is done. Once per segment of steps.
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def now(self) -> Mark:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @staticmethod
    def seconds(start: float | torch.cuda.Event, end: float | torch.cuda.Event) -> float:
        if isinstance(start, float):
            assert isinstance(end, float), "marks of two clocks"
            return end - start
        assert isinstance(end, torch.cuda.Event), "marks of two clocks"
        milliseconds: float = start.elapsed_time(end)
        return milliseconds / 1e3

    def add_phases(self, marks: list[tuple[Mark, Mark, Mark, Mark]],
                   seconds: dict[str, float]) -> None:  # fmt: skip
        """Add the steps' phase times to `seconds`, from each step's four marks: start,
        forward done, backward done, optimizer done (once the device is synced)."""
        for i, phase in enumerate(("forward", "backward", "optimizer")):
            seconds[phase] += sum(self.seconds(m[i], m[i + 1]) for m in marks)
