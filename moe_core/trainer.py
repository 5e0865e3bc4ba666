"""The Trainer: epochs, evaluation, early stopping, gating-temperature annealing and
checkpoint/resume, for any model whose forward returns (logits, aux_loss).

The caller plugs in through one TrainerHooks (moe_core.hooks: epoch records, step points,
progress, and `should_stop`, consulted before every step and evaluation batch). At a stop the
Trainer checkpoints at that step boundary (moe_core.checkpoint), so a resume continues the
epoch exactly, and raises `TrainingCancelled`. Printing is one more callback
(moe_core.reporting); the histories are `self.history` (moe_core.records.MetricsHistory),
whose fields are the spec's attributes.

A step reads nothing back from the device: losses and routing statistics are summed there
and read once per epoch. `compile`: one graph for the forward and losses (moe_core.step).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import torch
import torch.nn as nn

from . import sharded_checkpoint
from .atomic import torch_save_atomic
from .checkpoint import Checkpointing, read_checkpoint, restore_rng, rng_state
from .config import CompileMode, GatingTempSchedule
from .epoch import EpochProgress, Loader, loader_generator
from .errors import CheckpointMismatch, TrainingCancelled, TrainingDiverged
from .hooks import TrainerHooks
from .model import MoELayer
from .records import EvalLayerRouting, HistoryField, MetricsHistory, ProgressReport
from .reporting import ConsoleReporter
from .routing_stats import EvalRouting, TrainingRouting
from .step import LossStep, Mark, PhaseClock
from .step_points import StepPoints

Evaluated = tuple[dict[str, float], list[EvalLayerRouting]]  # losses, each layer's routing
if TYPE_CHECKING:  # torch.distributed only where a run is parallel
    from .parallel import Parallel

__all__ = ["Trainer", "TrainerHooks", "Checkpointing", "TrainingCancelled", "TrainingDiverged",
           "CheckpointMismatch", "GRAD_CLIP"]  # fmt: skip

GRAD_CLIP = 1.0  # max gradient norm, as the spec requires


class Trainer:
    """The spec's Trainer: `Trainer(model, train_loader, val_loader, optimizer, device,
    model_name, early_stopping_patience, gating_temp_schedule)`, and ours keyword-only
    beside them, the caller's hooks and checkpointing each passed whole."""

    # The spec's attributes: loss tracking, performance, timing, early stopping, experts
    train_losses = HistoryField[list[float]]()
    val_losses = HistoryField[list[float]]()
    train_ce_losses = HistoryField[list[float]]()
    val_ce_losses = HistoryField[list[float]]()
    train_aux_losses = HistoryField[list[float]]()
    val_aux_losses = HistoryField[list[float]]()
    tokens_per_sec = HistoryField[list[float]]()
    steps = HistoryField[list[int]]()  # per epoch
    current_step = HistoryField[int]()  # the run's optimizer steps so far
    timing_breakdown = HistoryField[dict[str, list[float]]]()  # forward, backward, optimizer
    best_val_loss = HistoryField[float]()
    patience_counter = HistoryField[int]()
    stopped_early = HistoryField[bool]()
    expert_stats_history = HistoryField[list[dict[str, Any]]]()
    # Ours: per evaluation its epoch, eval-mode training CE and validation routing; the
    # best epoch and its CE; the epochs completed.
    val_epochs = HistoryField[list[int]]()
    train_eval_ce_losses = HistoryField[list[float | None]]()
    eval_expert_stats_history = HistoryField[list[dict[str, Any]]]()
    best_val_ce_loss = HistoryField[float | None]()
    best_epoch = HistoryField[int | None]()
    epoch = HistoryField[int]()

    def __init__(
        self,
        model: nn.Module,
        train_loader: Loader,
        val_loader: Iterable[Any],
        optimizer: torch.optim.Optimizer,
        device: torch.device | str,
        model_name: str = "model",
        early_stopping_patience: int = 0,
        gating_temp_schedule: Mapping[str, Any] | GatingTempSchedule | None = None,
        *,
        label_smoothing: float = 0.0,
        hooks: TrainerHooks | None = None,
        checkpointing: Checkpointing | None = None,
        train_eval_loader: Iterable[Any] | None = None,
        log_interval: int = 50,
        verbose: bool = True,
        amp_dtype: torch.dtype | None = None,
        compile: CompileMode | bool = "off",
        parallel: Parallel | None = None,
    ):
        self.model = model
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.optimizer = optimizer
        self.device = torch.device(device)
        self.model_name = model_name
        self.early_stopping_patience = early_stopping_patience
        if isinstance(gating_temp_schedule, Mapping):
            gating_temp_schedule = GatingTempSchedule(**gating_temp_schedule)
        self.gating_temp_schedule = gating_temp_schedule
        self.label_smoothing = label_smoothing
        self.hooks = hooks or TrainerHooks()
        self.checkpointing = checkpointing or Checkpointing()
        self.step_points = StepPoints(self.device)
        # A fixed training slice evaluated like the validation set: the generalisation gap
        # compares the two in one mode (no dropout, smoothing or drops).
        self.train_eval_loader = train_eval_loader
        self.reporter = (
            ConsoleReporter(model_name, self._running_loss, log_interval) if verbose else None
        )
        moe = [(name, m) for name, m in model.named_modules() if isinstance(m, MoELayer)]
        self.moe_layers = [m for _, m in moe]
        # bf16 autocast: GPUs only (moe_core.runner); compile: moe_core.step.LossStep. On
        # several ranks (moe_core.parallel): the whole batch's losses, norm and tokens.
        self.parallel = parallel
        self.ranks = parallel.world_size if parallel is not None else 1
        self.loss_step = LossStep(parallel.forward if parallel else model, self.device,  # type: ignore[arg-type]  # parallelize() set forward
                                  routed=bool(self.moe_layers), amp_dtype=amp_dtype,
                                  compile={True: "default", False: "off"}.get(compile, compile),  # type: ignore[arg-type]  # a bool to its mode, a mode as it is
                                  mean=parallel.mean if parallel else None)  # fmt: skip
        self.clock = PhaseClock(self.device)
        # The layer each reports as: the first index in its module path ("blocks.2.ffn" -> 2).
        self.moe_layer_ids = [
            next((int(part) for part in name.split(".") if part.isdigit()), i)
            for i, (name, _) in enumerate(moe)
        ]
        self.history = MetricsHistory()
        self.best_state: dict[str, torch.Tensor] | None = None  # early stopping's weights
        self.gating_temperature: float | None = None
        self.progress: EpochProgress | None = None  # the epoch in progress, if any
        self._trained: EpochProgress | None = None  # the last epoch train_epoch finished

    # ------------------------------------------------------------------ temperature

    def temperature_for_epoch(self, epoch_index: int) -> float | None:
        """Gating temperature for the 0-based epoch (None without a schedule)."""
        schedule = self.gating_temp_schedule
        return schedule.temperature(epoch_index) if schedule is not None else None

    def _set_temperature(self, epoch_index: int) -> None:
        t = self.temperature_for_epoch(epoch_index)
        if t is None:
            t = 1.0 if self.moe_layers else None
        self.gating_temperature = t
        for layer in self.moe_layers:
            layer.router.set_temperature(t)  # type: ignore[arg-type]  # not None with MoE layers

    # ------------------------------------------------------------------ reports and stops

    def _report(self, phase: Literal["training", "evaluating"], progress: EpochProgress) -> None:
        report: ProgressReport = {"phase": phase, "epoch": self.epoch + 1, "step": progress.steps,
                                  "steps_per_epoch": len(self.train_loader),
                                  "tokens": progress.tokens}  # fmt: skip
        for hook in (self.reporter and self.reporter.on_progress, self.hooks.on_progress):
            if hook is not None:
                hook(report)  # type: ignore[operator]  # `reporter and ...`: the method, when set

    def _running_loss(self) -> float:
        p = self.progress
        return (p.totals[0] / max(p.steps, 1)).item() if p is not None else math.nan

    def _stop(self, where: str) -> NoReturn:
        """Checkpoint at this step boundary (the epoch in progress with it) and raise."""
        steps = self.progress.steps if self.progress is not None else 0
        path = self.checkpointing.path
        if path is not None:
            self.save_checkpoint(path)
        message = (f"{self.model_name}: stopped {where} of epoch {self.epoch + 1}, after step "
                   f"{steps}/{len(self.train_loader)} (global step {self.current_step})")  # fmt: skip
        if self.reporter is not None:
            saved = f"; checkpoint {path}" if path is not None else ""
            self.reporter.say(message + saved)
        raise TrainingCancelled(message, epoch=self.epoch + 1, step=steps)

    # ------------------------------------------------------------------ epochs

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training data (or the rest of one, after a mid-epoch resume);
        returns the spec's keys."""
        self.model.train()
        if self.progress is None:
            self.progress = EpochProgress(
                totals=torch.zeros(3, device=self.device),
                routing=TrainingRouting([m.num_experts for m in self.moe_layers], self.device),
                loader_state=loader_generator(self.train_loader).get_state(),
            )
            batches = iter(self.train_loader)
        else:  # restored from a checkpoint written mid-epoch
            batches = self.progress.remaining_batches(self.train_loader)
        progress, points, on_steps = self.progress, self.step_points, self.hooks.on_steps
        clocks: list[tuple[Mark, Mark, Mark, Mark]] = []  # start, forward, backward, optimizer
        # (train() planned the run's points; train_epoch() on its own plans this epoch's.)
        points.plan(self.hooks.step_metrics_every, len(self.train_loader))
        self.clock.sync()
        segment_start = time.perf_counter()
        points.begin_segment()

        def close_segment() -> None:
            # Fold this segment's clocks into the progress (one device sync).
            self.clock.sync()
            wall = time.perf_counter() - segment_start
            progress.seconds["wall"] += wall
            points.close_segment(wall, on_steps)  # the points still waiting, before a checkpoint
            self.clock.add_phases(clocks, progress.seconds)

        while True:
            # Consulted before the fetch, so that at a stop the iterator has fetched exactly the
            # trained batches, as a resume's replay does: a fetch can draw from the global RNG
            # (a DataLoader without a generator seeds its shuffle at the first one).
            if self.hooks.stop_requested():
                close_segment()
                self._stop("during training")
            batch = next(batches, None)
            if batch is None:
                break
            x, y = (t.to(self.device, non_blocking=True) for t in batch)

            t0 = self.clock.now()
            loss, ce, aux, routing = self.loss_step(x, y, self.label_smoothing)
            t1 = self.clock.now()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # The total norm before clipping, kept on the device (a step point reads it).
            grad_norm = self._clip()
            t2 = self.clock.now()
            learning_rate = self.optimizer.param_groups[0]["lr"]  # the one this step uses
            self.optimizer.step()
            for layer, stats in zip(self.moe_layers, routing, strict=True):
                layer.update_expert_bias(stats.counts)  # aux-loss-free balancing, if on
            t3 = self.clock.now()
            clocks.append((t0, t1, t2, t3))

            progress.totals += torch.stack([loss.detach(), ce.detach(), aux.detach()])
            progress.routing.add(routing)
            progress.steps += 1
            tokens = y.numel() * self.ranks  # the whole batch, over every rank
            progress.tokens += tokens
            self.current_step += 1
            points.after_step(on_steps, step=self.current_step, epoch=self.epoch + 1,
                              tokens=tokens, learning_rate=learning_rate,
                              loss=loss, ce=ce, aux=aux, grad_norm=grad_norm)  # fmt: skip
            self._report("training", progress)

        close_segment()
        n_steps = progress.steps
        if n_steps == 0:
            raise ValueError("the training loader yielded no batches (dataset under a batch?)")
        loss, ce, aux = (progress.totals / n_steps).tolist()
        # Checked once per epoch from the sums already kept: a per-step check would cost a
        # device sync every step.
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"{self.model_name}: training loss is {loss} in epoch {self.epoch + 1}"
                " (the run diverged: try a lower learning_rate)"
            )
        seconds = progress.seconds
        progress.train_stats = {
            "loss": loss,
            "ce_loss": ce,
            "aux_loss": aux,
            "tokens_per_sec": progress.tokens / seconds["wall"],
            "forward_time": seconds["forward"],
            "backward_time": seconds["backward"],
            "optimizer_time": seconds["optimizer"],
        }
        self.history.add_training(progress.train_stats, n_steps)
        # Done with the steps: detached from the trainer, so that a train_epoch() of its own
        # leaves no epoch in progress; train() keeps it until the epoch is evaluated.
        self.progress, self._trained = None, progress
        return dict(progress.train_stats)

    @torch.no_grad()
    def evaluate_loader(self, loader: Iterable[Any], what: str = "validation") -> Evaluated:
        """Mean losses over every token of `loader` in eval mode, and the routing of the
        same pass: (losses {"loss", "ce_loss", "aux_loss"}, per-MoE-layer statistics).

        CE has no label smoothing. The MoE layers drop nothing here (their eval capacity),
        and the aux loss is the balance loss of the whole pass (f and P over all tokens),
        so neither depends on how the tokens were batched.
        """
        self.model.eval()
        ce_sum = torch.zeros((), device=self.device)
        aux_sum = torch.zeros((), device=self.device)  # for models without MoELayers
        n_tokens = 0
        routing = EvalRouting([m.num_experts for m in self.moe_layers], self.device)
        # A compiled step takes full batches only: a short last one runs eagerly rather
        # than compiling a second graph for one batch per pass.
        full = getattr(loader, "batch_size", None)
        # Making the loader's iterator draws from the global RNG (its base seed) when the
        # loader has no generator of its own: a stop rewinds that, so that the evaluation
        # the resumed run repeats draws the same.
        rng = torch.get_rng_state()
        for x, y in loader:
            if self.hooks.stop_requested():
                torch.set_rng_state(rng)
                self._stop(f"during {what}")  # the partial evaluation is discarded
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            step = self.loss_step if x.size(0) == full else self.loss_step.eager
            _, ce, aux, stats = step(x, y, 0.0)
            # Token-weighted, so a short last batch counts for what it holds.
            ce_sum += y.numel() * ce.float()
            aux_sum += y.numel() * aux.float()
            n_tokens += y.numel()
            routing.add(stats, y.numel())
        if n_tokens == 0:
            raise ValueError(f"the {what} loader yielded no batches")
        ce = (ce_sum / n_tokens).item()
        if self.moe_layers and hasattr(self.model, "aux_loss"):
            balance = [m.balance_loss(c, p) for m, c, p in
                       zip(self.moe_layers, routing.counts, routing.prob_sums, strict=True)]  # fmt: skip
            aux = self.model.aux_loss(balance, routing.z_losses(n_tokens)).item()  # type: ignore[operator]  # a GPT's method; Module types attributes as Tensor | Module
        else:
            aux = (aux_sum / n_tokens).item()
        loss = ce + aux
        if not math.isfinite(loss):
            raise TrainingDiverged(f"{self.model_name}: {what} loss is {loss}")
        losses = {"loss": loss, "ce_loss": ce, "aux_loss": aux}
        return losses, routing.summary(self.moe_layer_ids)

    def _weights_epoch(self) -> int:
        """The epoch whose weights the model holds: the one in progress once trained."""
        trained = self.progress is not None and self.progress.train_stats is not None
        return self.epoch + 1 if trained else self.epoch

    def evaluate(self) -> dict[str, float]:
        """Mean validation losses over all tokens (CE without label smoothing).

        Also, for the same weights: the eval-mode CE of the fixed training subset
        (`train_eval_loader`, for the generalisation gap) and the validation pass's
        expert statistics, appended to `train_eval_ce_losses` and
        `eval_expert_stats_history` beside `val_epochs`."""
        if self.progress is not None:
            self._report("evaluating", self.progress)
        val, layers = self.evaluate_loader(self.val_loader, "evaluation")
        train_ce = None
        if self.train_eval_loader is not None:
            train_ce = self.evaluate_loader(self.train_eval_loader, "evaluation")[0]["ce_loss"]
        # Added only once every pass is done: a stop above leaves no partial entry.
        self.history.add_evaluation(self._weights_epoch(), val, train_ce,
                                    layers if self.moe_layers else None)  # fmt: skip
        return val

    # ------------------------------------------------------------------ the loop

    def train(self, num_epochs: int, eval_every: int = 1) -> dict[str, Any]:
        """Train until `num_epochs` epochs are done (counting resumed ones) or early stopping.

        Returns `get_metrics()`. When `hooks.should_stop` fires, raises `TrainingCancelled`
        after checkpointing (the finished epochs were delivered to `hooks.on_epoch_end`).
        """
        h = self.history
        self.step_points.plan(self.hooks.step_metrics_every, num_epochs * len(self.train_loader))
        while h.epoch < num_epochs and not h.stopped_early:
            epoch_index = h.epoch
            self._set_temperature(epoch_index)
            # A stop during the last evaluation left the epoch trained: go on from there.
            if self.progress is None or self.progress.train_stats is None:
                self.train_epoch()
                self.progress = self._trained  # a stop during evaluation keeps it
            progress, val_stats = self.progress, None
            assert progress is not None and progress.train_stats is not None  # trained above
            eval_start = time.perf_counter()
            if (epoch_index + 1) % eval_every == 0 or epoch_index + 1 == num_epochs:
                val_stats = self.evaluate()
                best = h.judge(val_stats, epoch_index + 1, self.early_stopping_patience)
                if best and self.early_stopping_patience > 0:
                    self.best_state = {k: v.detach().clone()
                                       for k, v in self.model.state_dict().items()}  # fmt: skip
            layers = (progress.routing.summary(self.moe_layer_ids, progress.steps)
                      if self.moe_layers else None)  # fmt: skip
            self.progress = None  # the epoch is whole: the checkpoint below is at its end
            record = h.finish_epoch(
                dict(progress.train_stats), val_stats, model_name=self.model_name, layers=layers,
                duration=progress.seconds["wall"] + time.perf_counter() - eval_start,
                gating_temperature=self.gating_temperature,
            )  # fmt: skip
            if self.reporter is not None:
                self.reporter.on_epoch_end(record, num_epochs)
            # The callback runs before the checkpoint: a crash between the two replays this
            # epoch, so a consumer that upserts by epoch sees every epoch at least once.
            if self.hooks.on_epoch_end is not None:
                self.hooks.on_epoch_end(record)
            if self.checkpointing.path is not None:
                self.save_checkpoint(self.checkpointing.path)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)  # early stopping keeps the best model
        return self.get_metrics()

    def get_metrics(self) -> dict[str, Any]:
        return self.history.metrics()

    def _clip(self) -> torch.Tensor:
        if self.parallel is not None:  # the norm of the whole model, experts on every rank
            return self.parallel.clip_grad_norm_(self.model, GRAD_CLIP)
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "tag": self.checkpointing.tag,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_state": self.best_state,
            "progress": self.progress.state() if self.progress is not None else None,
            "history": self.history.state(),
            "step_points": self.step_points.state(),
            "rng": rng_state(self.train_loader),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best_state = state["best_state"]
        self.restore(state)
        restore_rng(state["rng"], self.train_loader)

    def restore(self, state: dict[str, Any]) -> None:
        """The epoch in progress, the histories, the step points."""
        progress = state.get("progress")
        self.progress = EpochProgress.from_state(progress, self.device) if progress else None
        self.history = MetricsHistory.from_state(state["history"])
        self.step_points.load_state(state.get("step_points"))

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Everything needed to resume from here (an epoch's end, or a step boundary), written
        atomically: one file, or on several ranks a DCP directory (moe_core.sharded_checkpoint)."""
        if self.parallel is not None:
            sharded_checkpoint.save(Path(path), self, self.parallel)
        else:
            torch_save_atomic(path, self.state_dict())  # after checking the disk has room

    def load_checkpoint(self, path: str | os.PathLike[str]) -> int:
        """Restore from `path` (a file, or a DCP directory of any world size); returns the
        completed epochs. Raises CheckpointMismatch, restoring nothing, on another tag."""
        if Path(path).is_dir():
            return sharded_checkpoint.load(Path(path), self, self.parallel)
        state = read_checkpoint(path, self.checkpointing.tag)
        self.load_state_dict(sharded_checkpoint.slice_whole(state, self, self.parallel))
        return self.epoch
