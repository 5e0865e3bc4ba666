"""The Trainer: epochs, evaluation, early stopping, gating-temperature annealing, expert
statistics and checkpoint/resume, for any model whose forward returns (logits, aux_loss).

The service plugs in through hooks that the Trainer knows nothing about: `on_epoch_end`
receives each finished epoch's complete record, `on_progress` where training is after every
step and as each evaluation starts (a small dict, no device sync: for a progress bar), and
`should_stop` is consulted before every training step and evaluation batch. When it fires, the Trainer writes a checkpoint at that
step boundary (with the epoch in progress, so that a resume continues it exactly: same
batches, same dropout masks, same losses) and raises `TrainingCancelled`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .atomic import torch_save_atomic
from .config import GatingTempSchedule
from .model import MoELayer

EpochCallback = Callable[[dict[str, Any]], None]
# Gets {"phase": "training" | "evaluating", "epoch" (from 1), "step", "steps_per_epoch",
# "tokens" (trained on in this epoch)}.
ProgressCallback = Callable[[dict[str, Any]], None]
GRAD_CLIP = 1.0  # max gradient norm, as the spec requires


class TrainingCancelled(Exception):
    """`should_stop()` turned true: training stopped at a step boundary (after writing a
    checkpoint there, when the Trainer has a checkpoint path)."""

    def __init__(self, message: str, *, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step  # the 1-based epoch, the steps done in it


class CheckpointMismatch(ValueError):
    """The checkpoint carries another tag: it belongs to another run."""


@dataclass
class EpochProgress:
    """The epoch in progress: its running sums, counts and timings, and where its shuffle
    came from. `train_epoch` accumulates into it; a checkpoint written mid-epoch carries
    it, so a resumed run finishes the epoch exactly as an uninterrupted one would."""

    totals: torch.Tensor  # loss, ce, aux summed over steps (no per-step device sync)
    usage: list[torch.Tensor]  # per MoE layer: assignments per expert
    dropped: list[torch.Tensor]  # per MoE layer: assignments over capacity
    # per MoE layer: the largest share of one step's assignments that any expert took
    max_load: list[torch.Tensor]
    # per MoE layer, summed over steps: [imbalance (max/mean load - 1), pad ratio, z-loss]
    routing: list[torch.Tensor]
    # per MoE layer: the worst step's imbalance
    max_imbalance: list[torch.Tensor]
    # The state, at the epoch's start, of the generator the train loader draws from (see
    # Trainer._loader_generator): the epoch's base seed and shuffle are drawn from it when
    # its iterator is made and first read, so a resume remakes the same order and skips ahead.
    loader_state: torch.Tensor
    steps: int = 0
    tokens: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: {"forward": 0.0, "backward": 0.0, "optimizer": 0.0, "wall": 0.0}
    )
    # Set once every step is done: a stop during evaluation resumes with evaluation.
    train_stats: dict[str, float] | None = None

    @classmethod
    def start(
        cls, experts: list[int], device: torch.device, loader_state: torch.Tensor
    ) -> EpochProgress:
        return cls(
            totals=torch.zeros(3, device=device),
            usage=[torch.zeros(e, dtype=torch.long, device=device) for e in experts],
            dropped=[torch.zeros((), dtype=torch.long, device=device) for _ in experts],
            max_load=[torch.zeros((), device=device) for _ in experts],
            routing=[torch.zeros(3, device=device) for _ in experts],
            max_imbalance=[torch.zeros((), device=device) for _ in experts],
            loader_state=loader_state,
        )

    def state(self) -> dict[str, Any]:
        return {
            "totals": self.totals.cpu(),
            "usage": [u.cpu() for u in self.usage],
            "dropped": [d.cpu() for d in self.dropped],
            "max_load": [m.cpu() for m in self.max_load],
            "routing": [r.cpu() for r in self.routing],
            "max_imbalance": [m.cpu() for m in self.max_imbalance],
            "loader_state": self.loader_state,
            "steps": self.steps,
            "tokens": self.tokens,
            "seconds": dict(self.seconds),
            "train_stats": self.train_stats,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EpochProgress:
        return cls(
            totals=state["totals"].to(device),
            usage=[u.to(device) for u in state["usage"]],
            dropped=[d.to(device) for d in state["dropped"]],
            # a checkpoint from before max_load existed starts it from zero
            max_load=[
                m.to(device)
                for m in state.get("max_load") or [torch.zeros(()) for _ in state["dropped"]]
            ],
            # and one from before the imbalance metrics, those
            routing=[
                r.to(device)
                for r in state.get("routing") or [torch.zeros(3) for _ in state["dropped"]]
            ],
            max_imbalance=[
                m.to(device)
                for m in state.get("max_imbalance") or [torch.zeros(()) for _ in state["dropped"]]
            ],
            loader_state=state["loader_state"],
            steps=state["steps"],
            tokens=state["tokens"],
            seconds=dict(state["seconds"]),
            train_stats=state["train_stats"],
        )


class TrainingDiverged(FloatingPointError):
    """An epoch's mean loss is NaN or infinite: the run cannot go on meaningfully."""


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        train_loader: DataLoader,
        val_loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        device: torch.device | str,
        model_name: str = "model",
        early_stopping_patience: int = 0,
        gating_temp_schedule: Mapping[str, Any] | GatingTempSchedule | None = None,
        *,
        label_smoothing: float = 0.0,
        on_epoch_end: EpochCallback | None = None,
        on_progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_tag: str | None = None,
        train_eval_loader: DataLoader | None = None,
        log_interval: int = 50,
        verbose: bool = True,
        amp_dtype: torch.dtype | None = None,
        compile: bool = False,
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
        self.on_epoch_end = on_epoch_end
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        # Names the run a checkpoint belongs to: one with another tag is not resumed from.
        self.checkpoint_tag = checkpoint_tag
        # A fixed slice of the training set, evaluated like the validation set at every
        # evaluation: the generalisation gap compares the two in the same mode (no dropout,
        # no smoothing, no capacity drops), not against the epoch's training-mode average.
        self.train_eval_loader = train_eval_loader
        self.log_interval = log_interval
        self.verbose = verbose
        # bf16 autocast is for GPUs; on CPU it is slower than float32 for these sizes.
        self.amp_dtype = amp_dtype
        # torch.compile fuses the elementwise work around the matmuls (GELU, LayerNorm,
        # residuals, the router's softmax) into a few kernels; it pays on GPUs, where the
        # launches of small kernels dominate. `model` itself stays uncompiled, so
        # checkpoints and state dicts keep their plain parameter names.
        self.forward_model = torch.compile(model) if compile else model

        moe = [(name, m) for name, m in model.named_modules() if isinstance(m, MoELayer)]
        self.moe_layers = [m for _, m in moe]
        # The layer each reports as: the first index in its module path ("blocks.2.ffn" -> 2).
        self.moe_layer_ids = [
            next((int(part) for part in name.split(".") if part.isdigit()), i)
            for i, (name, _) in enumerate(moe)
        ]

        # Loss tracking (one entry per epoch; val lists per evaluated epoch)
        self.train_losses: list[float] = []
        self.val_losses: list[float] = []
        self.train_ce_losses: list[float] = []
        self.val_ce_losses: list[float] = []
        self.train_aux_losses: list[float] = []
        self.val_aux_losses: list[float] = []
        # Per evaluated epoch (aligned with the val lists): its number, the eval-mode
        # training CE, and the routing of that epoch's weights over the validation set.
        self.val_epochs: list[int] = []
        self.train_eval_ce_losses: list[float] = []
        self.eval_expert_stats_history: list[dict[str, Any]] = []
        # Performance
        self.tokens_per_sec: list[float] = []
        self.steps: list[int] = []
        self.current_step = 0
        self.timing_breakdown: dict[str, list[float]] = {
            "forward": [],
            "backward": [],
            "optimizer": [],
        }
        # Early stopping
        self.best_val_loss = float("inf")
        self.best_val_ce_loss: float | None = None  # the CE at the best epoch
        self.best_epoch: int | None = None
        self.patience_counter = 0
        self.stopped_early = False
        self.best_state: dict[str, torch.Tensor] | None = None
        # Expert statistics: one entry per epoch, {"epoch", "gating_temperature", "layers": [...]}
        self.expert_stats_history: list[dict[str, Any]] = []
        # Progress
        self.epoch = 0  # epochs completed
        self.gating_temperature: float | None = None
        self.progress: EpochProgress | None = None  # the epoch in progress, if any
        self._trained: EpochProgress | None = None  # the last epoch train_epoch finished

    # ------------------------------------------------------------------ helpers

    def _sync(self) -> None:
        # CUDA kernels run asynchronously: without this the epoch's wall clock would stop
        # before its work is done. Once per epoch; phases are timed by events (_clock).
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _clock(self) -> float | torch.cuda.Event:
        """A point in time: the wall clock on the CPU, a recorded event on CUDA.

        CUDA events are read once per epoch, after one synchronize, so phase timing
        costs no sync per phase and the GPU's queue never drains between phases.
        """
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @staticmethod
    def _seconds(start: float | torch.cuda.Event, end: float | torch.cuda.Event) -> float:
        if isinstance(start, float):
            return end - start
        return start.elapsed_time(end) / 1e3

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _losses(self, x: torch.Tensor, y: torch.Tensor, smoothing: float):
        """(objective, ce, aux): ce is plain cross-entropy; the objective adds smoothing."""
        logits, aux = self.forward_model(x)
        logits = logits.view(-1, logits.size(-1)).float()
        y = y.reshape(-1)
        if smoothing > 0:
            # One log-softmax gives both the plain CE that is reported (so runs with and
            # without smoothing compare) and the smoothed CE that is optimised, which is
            # (1 - eps) * nll + eps * mean over the vocabulary of -log p.
            logp = F.log_softmax(logits, dim=-1)
            ce = -logp.gather(1, y.unsqueeze(1)).mean()
            objective = (1 - smoothing) * ce - smoothing * logp.mean()
        else:
            ce = F.cross_entropy(logits, y)
            objective = ce
        return objective + aux, ce, aux

    def temperature_for_epoch(self, epoch_index: int) -> float | None:
        """Gating temperature for the 0-based epoch (None without a schedule)."""
        if self.gating_temp_schedule is None:
            return None
        return self.gating_temp_schedule.temperature(epoch_index)

    def _set_temperature(self, epoch_index: int) -> None:
        t = self.temperature_for_epoch(epoch_index)
        if t is None:
            t = 1.0 if self.moe_layers else None
        self.gating_temperature = t
        for layer in self.moe_layers:
            layer.router.temperature = t

    # ------------------------------------------------------------------ epochs

    def _report(self, phase: str, progress: EpochProgress) -> None:
        if self.on_progress is not None:
            self.on_progress({"phase": phase, "epoch": self.epoch + 1, "step": progress.steps,
                              "steps_per_epoch": len(self.train_loader),
                              "tokens": progress.tokens})  # fmt: skip

    def _stop_requested(self) -> bool:
        return self.should_stop is not None and bool(self.should_stop())

    def _stop(self, where: str) -> NoReturn:
        """Checkpoint at this step boundary (the epoch in progress with it) and raise."""
        progress = self.progress
        steps = progress.steps if progress is not None else 0
        if self.checkpoint_path is not None:
            self.save_checkpoint(self.checkpoint_path)
        message = (
            f"{self.model_name}: stopped {where} of epoch {self.epoch + 1}, after step "
            f"{steps}/{len(self.train_loader)} (global step {self.current_step})"
        )
        if self.verbose:
            saved = f"; checkpoint {self.checkpoint_path}" if self.checkpoint_path else ""
            print(f"[{self.model_name}] {message}{saved}", flush=True)
        raise TrainingCancelled(message, epoch=self.epoch + 1, step=steps)

    def _loader_generator(self) -> torch.Generator:
        """The generator a new train-loader iterator draws from: a DataLoader draws its base
        seed and (shuffling) its order from its own generator, else from torch's global one."""
        generator = getattr(self.train_loader, "generator", None)
        return generator if generator is not None else torch.default_generator

    def _resumed_batches(self, progress: EpochProgress) -> Iterator:
        """The epoch's batches from where a restored `progress` stands: the iterator remade
        from the epoch's start state, so the same shuffle, and the batches already trained
        skipped (a fetch each, cheap for TokenBlocks). This holds at step 0 too: the
        loader's generator has moved on since the epoch began."""
        stop_point = torch.get_rng_state()  # restored by load_state_dict: dropout goes on from it
        self._loader_generator().set_state(progress.loader_state)
        batches = iter(self.train_loader)
        for _ in itertools.islice(batches, progress.steps):
            pass
        torch.set_rng_state(stop_point)  # a no-op unless the loader drew from the global RNG
        return batches

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training data (or the rest of one, after a mid-epoch resume);
        returns the spec's keys."""
        self.model.train()
        if self.progress is None:
            self.progress = EpochProgress.start(
                [layer.num_experts for layer in self.moe_layers],
                self.device,
                self._loader_generator().get_state(),
            )
            batches = iter(self.train_loader)
        else:  # restored from a checkpoint written mid-epoch
            batches = self._resumed_batches(self.progress)
        progress = self.progress
        clocks = []  # per step: (start, forward done, backward done, optimizer done)
        self._sync()
        segment_start = time.perf_counter()
        segment_tokens = 0

        def close_segment() -> None:
            # Fold this segment's clocks into the progress (one device sync).
            self._sync()
            seconds = progress.seconds
            seconds["wall"] += time.perf_counter() - segment_start
            seconds["forward"] += sum(self._seconds(t0, t1) for t0, t1, _, _ in clocks)
            seconds["backward"] += sum(self._seconds(t1, t2) for _, t1, t2, _ in clocks)
            seconds["optimizer"] += sum(self._seconds(t2, t3) for _, _, t2, t3 in clocks)

        while True:
            # Consulted before the fetch, so that at a stop the iterator has fetched exactly the
            # trained batches, as a resume's replay does: a fetch can draw from the global RNG
            # (a DataLoader without a generator seeds its shuffle at the first one).
            if self._stop_requested():
                close_segment()
                self._stop("during training")
            batch = next(batches, None)
            if batch is None:
                break
            x, y = batch
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)

            t0 = self._clock()
            with self._autocast():
                loss, ce, aux = self._losses(x, y, self.label_smoothing)
            t1 = self._clock()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
            t2 = self._clock()
            self.optimizer.step()
            for layer in self.moe_layers:
                layer.update_expert_bias()  # aux-loss-free balancing; a no-op without it
            t3 = self._clock()
            clocks.append((t0, t1, t2, t3))

            progress.totals += torch.stack([loss.detach(), ce.detach(), aux.detach()])
            for i, layer in enumerate(self.moe_layers):
                counts = layer.last_counts
                progress.usage[i] += counts
                progress.dropped[i] += layer.last_dropped
                # Epoch sums hide a router that swings from step to step: keep the worst step.
                share = counts.max() / counts.sum()
                progress.max_load[i] = torch.maximum(progress.max_load[i], share)
                # torchtitan's imbalance: the busiest expert's load over the mean, minus 1
                imbalance = share * counts.numel() - 1
                progress.max_imbalance[i] = torch.maximum(progress.max_imbalance[i], imbalance)
                progress.routing[i] += torch.stack(
                    [imbalance, layer.last_pad_ratio, layer.last_z_loss.detach()]
                )
            progress.steps += 1
            progress.tokens += y.numel()
            segment_tokens += y.numel()
            self.current_step += 1
            self._report("training", progress)
            if self.verbose and self.log_interval and progress.steps % self.log_interval == 0:
                elapsed = time.perf_counter() - segment_start
                print(
                    f"  [{self.model_name}] epoch {self.epoch + 1} step {progress.steps}/{len(self.train_loader)}"
                    f" loss {loss.item():.4f} | {segment_tokens / elapsed:,.0f} tok/s",
                    flush=True,
                )

        close_segment()
        n_steps = progress.steps
        if n_steps == 0:
            raise ValueError(
                "the training loader yielded no batches (dataset smaller than a batch?)"
            )
        loss, ce, aux = (progress.totals / n_steps).tolist()
        # Checked once per epoch from the sums already kept: a per-step check would cost a
        # device sync every step.
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"{self.model_name}: training loss is {loss} in epoch {self.epoch + 1}"
                " (the run diverged: try a lower learning_rate)"
            )
        seconds = progress.seconds
        tokens_per_sec = progress.tokens / seconds["wall"]
        self.train_losses.append(loss)
        self.train_ce_losses.append(ce)
        self.train_aux_losses.append(aux)
        self.tokens_per_sec.append(tokens_per_sec)
        self.steps.append(n_steps)
        self.timing_breakdown["forward"].append(seconds["forward"])
        self.timing_breakdown["backward"].append(seconds["backward"])
        self.timing_breakdown["optimizer"].append(seconds["optimizer"])
        # Done with the steps: detached from the trainer, so that a train_epoch() of its own
        # leaves no epoch in progress; train() keeps it until the epoch is evaluated.
        self.progress, self._trained = None, progress
        progress.train_stats = {
            "loss": loss,
            "ce_loss": ce,
            "aux_loss": aux,
            "tokens_per_sec": tokens_per_sec,
            "forward_time": seconds["forward"],
            "backward_time": seconds["backward"],
            "optimizer_time": seconds["optimizer"],
        }
        return dict(progress.train_stats)

    @torch.no_grad()
    def evaluate_loader(self, loader: DataLoader, what: str = "validation"):
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
        counts = [torch.zeros(m.num_experts, dtype=torch.long, device=self.device)
                  for m in self.moe_layers]  # fmt: skip
        over = [torch.zeros((), dtype=torch.long, device=self.device) for _ in self.moe_layers]
        prob_sums = [torch.zeros(m.num_experts, device=self.device) for m in self.moe_layers]
        z_sums = [torch.zeros((), device=self.device) for _ in self.moe_layers]  # token-weighted
        # Making the loader's iterator draws from the global RNG (its base seed) when the
        # loader has no generator of its own: a stop rewinds that, so that the evaluation
        # the resumed run repeats draws the same.
        rng = torch.get_rng_state()
        for x, y in loader:
            if self._stop_requested():
                torch.set_rng_state(rng)
                self._stop(f"during {what}")  # the partial evaluation is discarded
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            with self._autocast():
                _, ce, aux = self._losses(x, y, 0.0)
            # Token-weighted, so a short last batch counts for what it holds.
            ce_sum += y.numel() * ce.float()
            aux_sum += y.numel() * aux.float()
            n_tokens += y.numel()
            for i, layer in enumerate(self.moe_layers):
                counts[i] += layer.last_counts
                over[i] += layer.last_over_capacity
                prob_sums[i] += layer.last_prob_sum
                z_sums[i] += y.numel() * layer.last_z_loss
        if n_tokens == 0:
            raise ValueError(f"the {what} loader yielded no batches")
        ce = (ce_sum / n_tokens).item()
        if self.moe_layers and hasattr(self.model, "aux_loss"):
            balance = [m.balance_loss(c, p) for m, c, p in zip(self.moe_layers, counts, prob_sums, strict=True)]  # fmt: skip
            z_losses = [z / n_tokens for z in z_sums]  # the z-loss of the whole pass
            aux = self.model.aux_loss(balance, z_losses=z_losses).item()
        else:
            aux = (aux_sum / n_tokens).item()
        loss = ce + aux
        if not math.isfinite(loss):
            raise TrainingDiverged(f"{self.model_name}: {what} loss is {loss}")
        return {"loss": loss, "ce_loss": ce, "aux_loss": aux}, self._usage_stats(counts, over)

    def _weights_epoch(self) -> int:
        """The epoch whose weights the model holds: the one in progress once its steps are
        done (evaluation inside train()), else the last completed one."""
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
        # Appended only once every pass is done: a stop above leaves no partial entry.
        epoch = self._weights_epoch()
        self.val_losses.append(val["loss"])
        self.val_ce_losses.append(val["ce_loss"])
        self.val_aux_losses.append(val["aux_loss"])
        self.val_epochs.append(epoch)
        self.train_eval_ce_losses.append(train_ce)
        if self.moe_layers:
            self.eval_expert_stats_history.append({"epoch": epoch, "layers": layers})
        return val

    def _usage_stats(
        self,
        usage: list[torch.Tensor],
        dropped: list[torch.Tensor],
        max_load: list[torch.Tensor] | None = None,
        routing: list[torch.Tensor] | None = None,
        max_imbalance: list[torch.Tensor] | None = None,
        steps: int = 1,
    ) -> list[dict[str, Any]]:
        """Per MoE layer, from assignment counts per expert (before capacity drops).

        `entropy` is the Shannon entropy of the usage distribution in nats, not normalised:
        ln(num_experts) (2.079 for 8 experts) is perfect balance, 0 is collapse onto one.
        `min_usage`/`max_usage`/`usage` are percentages of assignments; `dropped` is the
        fraction of assignments over capacity; `max_step_load` (training only) the largest
        share, in percent, that one expert took of any single step's assignments.

        `imbalance` is max load / mean load - 1 (torchtitan's; 0 is perfect balance,
        num_experts - 1 collapse): in training the mean over the epoch's steps, with the
        worst step's as `max_imbalance`; in evaluation that of the whole pass's counts, so
        that it does not depend on the eval batch size. Training also gets `pad_ratio` (the
        share of capacity slots left unused, mean over steps; 0 when dropless) and `z_loss`
        (the router z-loss, unweighted, mean over steps).
        """
        stats = []
        for i, (counts, n_dropped) in enumerate(zip(usage, dropped, strict=True)):
            counts = counts.double().cpu()
            n = counts.sum().item()
            p = counts / max(n, 1)
            entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
            layer = {
                "layer": self.moe_layer_ids[i],
                "entropy": entropy,
                "max_entropy": math.log(len(counts)),
                "min_usage": 100 * p.min().item(),
                "max_usage": 100 * p.max().item(),
                "usage": (100 * p).tolist(),
                "dropped": n_dropped.item() / max(n, 1),
            }
            if max_load is not None:
                layer["max_step_load"] = 100 * max_load[i].item()
            if routing is not None and max_imbalance is not None:
                imbalance, pad_ratio, z_loss = (routing[i].double().cpu() / max(steps, 1)).tolist()
                layer.update(imbalance=imbalance, max_imbalance=max_imbalance[i].item(),
                             pad_ratio=pad_ratio, z_loss=z_loss)  # fmt: skip
            else:
                layer["imbalance"] = len(counts) * p.max().item() - 1 if n else 0.0
            stats.append(layer)
        return stats

    def _expert_stats(self) -> list[dict[str, Any]]:
        """Per MoE layer, over this epoch's training assignments, as routed in training."""
        assert self.progress is not None
        p = self.progress
        return self._usage_stats(
            p.usage, p.dropped, p.max_load, p.routing, p.max_imbalance, p.steps
        )

    # ------------------------------------------------------------------ the loop

    def train(self, num_epochs: int, eval_every: int = 1) -> dict[str, Any]:
        """Train until `num_epochs` epochs are done (counting resumed ones) or early stopping.

        Returns `get_metrics()`. When `should_stop` fires, raises `TrainingCancelled` after
        checkpointing (the finished epochs were delivered to `on_epoch_end`).
        """
        patience = self.early_stopping_patience
        while self.epoch < num_epochs and not self.stopped_early:
            epoch_index = self.epoch
            self._set_temperature(epoch_index)
            # A stop during the last evaluation left the epoch trained: go on from there.
            trained = self.progress is not None and self.progress.train_stats is not None
            if not trained:
                self.train_epoch()
                self.progress = self._trained  # a stop during evaluation keeps it
            train_stats = dict(self.progress.train_stats)
            val_stats = None
            is_last = epoch_index + 1 == num_epochs
            eval_start = time.perf_counter()
            if (epoch_index + 1) % eval_every == 0 or is_last:
                val_stats = self.evaluate()
                if val_stats["loss"] < self.best_val_loss:
                    self.best_val_loss = val_stats["loss"]
                    self.best_val_ce_loss = val_stats["ce_loss"]
                    self.best_epoch = epoch_index + 1
                    self.patience_counter = 0
                    if patience > 0:
                        self.best_state = {
                            k: v.detach().clone() for k, v in self.model.state_dict().items()
                        }
                else:
                    self.patience_counter += 1
                    if patience > 0 and self.patience_counter >= patience:
                        self.stopped_early = True
            self.epoch = epoch_index + 1
            duration = self.progress.seconds["wall"] + time.perf_counter() - eval_start

            layers = self._expert_stats() if self.moe_layers else []
            self.progress = None  # the epoch is whole: the checkpoint below is at its end
            if self.moe_layers:
                self.expert_stats_history.append(
                    {
                        "epoch": self.epoch,
                        "gating_temperature": self.gating_temperature,
                        "layers": layers,
                    }
                )
            record = self._epoch_record(train_stats, val_stats, layers)
            record["duration"] = duration
            if self.verbose:
                self._print_epoch(record, num_epochs)
            # The callback runs before the checkpoint: a crash between the two replays this
            # epoch, so a consumer that upserts by epoch sees every epoch at least once.
            if self.on_epoch_end is not None:
                self.on_epoch_end(record)
            if self.checkpoint_path is not None:
                self.save_checkpoint(self.checkpoint_path)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)  # early stopping keeps the best model
        return self.get_metrics()

    def _epoch_record(self, train_stats, val_stats, layers) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model_name": self.model_name,
            "train": {k: train_stats[k] for k in ("loss", "ce_loss", "aux_loss")},
            "val": val_stats,
            "tokens_per_sec": train_stats["tokens_per_sec"],
            "steps": self.steps[-1],
            "forward_time": train_stats["forward_time"],
            "backward_time": train_stats["backward_time"],
            "optimizer_time": train_stats["optimizer_time"],
            "gating_temperature": self.gating_temperature,
            "expert_stats": layers,
            "train_eval": {"ce_loss": self.train_eval_ce_losses[-1]}
            if val_stats is not None and self.train_eval_ce_losses[-1] is not None
            else None,
            "eval_expert_stats": self.eval_expert_stats_history[-1]["layers"]
            if val_stats is not None and self.moe_layers
            else [],
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "best_val_ce_loss": self.best_val_ce_loss,
            "best_epoch": self.best_epoch,
            "patience_counter": self.patience_counter,
            "stopped_early": self.stopped_early,
        }

    def _print_epoch(self, r: dict[str, Any], num_epochs: int) -> None:
        t = r["train"]
        line = (
            f"[{self.model_name}] epoch {r['epoch']}/{num_epochs} "
            f"train {t['loss']:.4f} (ce {t['ce_loss']:.4f} aux {t['aux_loss']:.4f})"
        )
        if r["val"] is not None:
            v = r["val"]
            line += f" | val {v['loss']:.4f} (ce {v['ce_loss']:.4f}, ppl {math.exp(min(v['ce_loss'], 50)):.1f})"
            if r["train_eval"] is not None:
                gap = v["ce_loss"] - r["train_eval"]["ce_loss"]
                line += f" gap {gap:+.4f}"
        total = r["forward_time"] + r["backward_time"] + r["optimizer_time"]
        line += (
            f" | {r['tokens_per_sec']:,.0f} tok/s | fwd {r['forward_time']:.1f}s"
            f" bwd {r['backward_time']:.1f}s opt {r['optimizer_time']:.1f}s of {total:.1f}s"
        )
        if r["gating_temperature"] is not None:
            line += f" | T {r['gating_temperature']:.3f}"
        print(line, flush=True)
        for s in r["expert_stats"]:
            print(
                f"    layer {s['layer']} train: entropy {s['entropy']:.3f}/{s['max_entropy']:.3f} nats"
                f" | usage min {s['min_usage']:.1f}% max {s['max_usage']:.1f}%"
                f" (one step: {s['max_step_load']:.1f}%) | dropped {100 * s['dropped']:.1f}%"
                f" | imbalance {s['imbalance']:.2f} (worst {s['max_imbalance']:.2f})"
                f" pad {100 * s['pad_ratio']:.1f}% z {s['z_loss']:.2f}",
                flush=True,
            )
        for s in r["eval_expert_stats"]:
            print(
                f"    layer {s['layer']} val:   entropy {s['entropy']:.3f}/{s['max_entropy']:.3f} nats"
                f" | usage min {s['min_usage']:.1f}% max {s['max_usage']:.1f}%"
                f" | over training capacity {100 * s['dropped']:.1f}%",
                flush=True,
            )
        if r["stopped_early"]:
            print(
                f"[{self.model_name}] early stopping: no improvement for {self.patience_counter} evaluations",
                flush=True,
            )

    def get_metrics(self) -> dict[str, Any]:
        return {
            "train_losses": list(self.train_losses),
            "val_losses": list(self.val_losses),
            "train_ce_losses": list(self.train_ce_losses),
            "val_ce_losses": list(self.val_ce_losses),
            "train_aux_losses": list(self.train_aux_losses),
            "val_aux_losses": list(self.val_aux_losses),
            "tokens_per_sec": list(self.tokens_per_sec),
            "steps": list(self.steps),
            "current_step": self.current_step,
            "timing_breakdown": {k: list(v) for k, v in self.timing_breakdown.items()},
            "expert_stats_history": list(self.expert_stats_history),
            "val_epochs": list(self.val_epochs),
            "train_eval_ce_losses": list(self.train_eval_ce_losses),
            "eval_expert_stats_history": list(self.eval_expert_stats_history),
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "best_val_ce_loss": self.best_val_ce_loss,
            "best_epoch": self.best_epoch,
            "patience_counter": self.patience_counter,
            "stopped_early": self.stopped_early,
        }

    # ------------------------------------------------------------------ checkpoints

    _HISTORY = (
        "train_losses", "val_losses", "train_ce_losses", "val_ce_losses", "train_aux_losses",
        "val_aux_losses", "tokens_per_sec", "steps", "current_step", "timing_breakdown",
        "best_val_loss", "patience_counter", "stopped_early", "expert_stats_history", "epoch",
        "val_epochs", "train_eval_ce_losses", "eval_expert_stats_history", "best_val_ce_loss",
        "best_epoch",
    )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        generator = getattr(self.train_loader, "generator", None)
        return {
            "tag": self.checkpoint_tag,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_state": self.best_state,
            "progress": self.progress.state() if self.progress is not None else None,
            "history": {name: getattr(self, name) for name in self._HISTORY},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "loader": generator.get_state() if generator is not None else None,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best_state = state["best_state"]
        progress = state.get("progress")
        self.progress = EpochProgress.from_state(progress, self.device) if progress else None
        for name, value in state["history"].items():
            setattr(self, name, value)
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        generator = getattr(self.train_loader, "generator", None)
        if generator is not None and rng["loader"] is not None:
            generator.set_state(rng["loader"])

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Everything needed to resume from here (an epoch's end, or a step boundary within
        one), written atomically."""
        torch_save_atomic(path, self.state_dict())  # after checking the disk has room

    def load_checkpoint(self, path: str | os.PathLike) -> int:
        """Restore from `path`; returns the number of completed epochs (the next is +1, or
        the one in progress). Raises CheckpointMismatch, restoring nothing, when this Trainer
        has a `checkpoint_tag` and the checkpoint carries another."""
        # On the CPU first: RNG states must stay CPU tensors; load_state_dict moves the rest.
        state = torch.load(path, map_location="cpu", weights_only=False)
        if self.checkpoint_tag is not None and state.get("tag") != self.checkpoint_tag:
            raise CheckpointMismatch(
                f"{path} belongs to {state.get('tag')!r}, not {self.checkpoint_tag!r}"
            )
        self.load_state_dict(state)
        return self.epoch
