"""Seeds trained together: the seeds of one configuration (a study's, a sweep trial's, the
dense baseline's) trained in one process as one moe_core.stacked model, each replica still
a run of its own. `run_together` returns what `run_single_experiment` returns for each seed.

Each replica starts from the weights its seed gives a run of its own (seed_everything, then
build_model), shuffles with its own loader generator, routes and counts its own capacity,
has its own losses, statistics, expert bias, gradient clipping (by its own norm) and AdamW
state (AdamW is elementwise: over the stack it is each replica's own), and goes through
the Trainer's epoch: the same records to its hooks, the same early stopping and metrics
(moe_core.records.MetricsHistory). A replica that stops early, fails (a non-finite loss, a
hook that raises) or is cancelled (its `should_stop`) leaves the stack at once; the others
go on. Dropout and router jitter draw other random numbers than separate runs would. Each
replica's checkpoint is a single run's (moe_core.together_checkpoint), resumed by a stack too.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, Subset

from . import atomic
from .atomic import torch_save_atomic
from .checkpoint import Checkpointing
from .config import BaseConfig, ExperimentConfig, check_or_raise
from .data import TokenBlocks
from .epoch import EpochProgress, loader_generator
from .errors import TrainingCancelled, TrainingDiverged
from .hooks import TrainerHooks
from .model import GPT
from .records import EvalLayerRouting, ProgressReport
from .replica import Replica
from .reporting import ConsoleReporter
from .routing import weighted_aux_loss
from .routing_stats import EvalRouting, TrainingRouting
from .runner import (
    batches,
    build_model,
    build_optimizer,
    count_parameters,
    resolve_device,
    resolve_precision,  # fmt: skip
    seed_everything,
)
from .sizing import parameters
from .stacked import StackedGPT, StackedLossStep, StackedMoE, replica_stats
from .step import Mark, PhaseClock
from .step_points import StepPoints
from .together_checkpoint import StackCheckpoints, optimizer_layout
from .trainer import GRAD_CLIP

Losses = dict[str, float]


class TogetherTrainer:
    """The Trainer's loop (moe_core.trainer) over the live replicas of a StackedGPT, whose
    rows are `live`, in order."""

    def __init__(
        self, model: StackedGPT, replicas: list[Replica], optimizer: torch.optim.Optimizer | None,
        device: torch.device, config: ExperimentConfig, *, dense: bool, val_loader: Any = None,
        train_eval_loader: Any = None, amp_dtype: torch.dtype | None = None, compile: Any = "off",
        checkpoints: StackCheckpoints | None = None,
    ) -> None:  # fmt: skip
        self.model, self.live, self.optimizer, self.device = model, replicas, optimizer, device
        self.val_loader, self.train_eval_loader = val_loader, train_eval_loader
        self.config, self.dense, self.checkpoints = config, dense, checkpoints
        self.on_left: Callable[[int, BaseException], None] | None = None
        self.moe = [(name, m) for name, m in model.named_modules() if isinstance(m, StackedMoE)]
        self.layer_ids = [int(name.split(".")[1]) for name, _ in self.moe]  # "blocks.2.ffn"
        self.loss_step = StackedLossStep(model, device, routed=bool(self.moe),
                                         amp_dtype=amp_dtype, compile=compile)  # fmt: skip
        self.clock = PhaseClock(device)
        self.gating_temperature: float | None = None

    # ------------------------------------------------------------------ the loop

    def train(self, num_epochs: int) -> None:
        for r in self.live:
            r.points.plan(r.hooks.step_metrics_every, num_epochs * len(r.loader))
        while self.live and self.live[0].history.epoch < num_epochs:  # resumed: the rest
            epoch_index = self.live[0].history.epoch  # every live replica's
            schedule = None if self.dense else self.config.gating_temp_schedule
            t = schedule.temperature(epoch_index) if schedule is not None else None
            self.gating_temperature = t if t is not None or not self.moe else 1.0
            if self.moe:
                self.model.set_temperature(self.gating_temperature)  # type: ignore[arg-type]  # not None with MoE layers
            self._train_epoch()
            if not self.live:
                break
            eval_start = time.perf_counter()
            evaluated = self.evaluate()
            for i, r in enumerate(self.live):
                if r.running:
                    self._finish_epoch(i, r, evaluated[i], eval_start, num_epochs)
            self._drop()
        for i, r in enumerate(self.live):  # early stopping keeps the best model
            r.kept = r.best_state if r.best_state is not None else self.model.replica_state(i)

    def _train_epoch(self) -> None:
        self.model.train()
        for r in self.live:
            r.progress = EpochProgress(
                totals=torch.zeros(3, device=self.device),
                routing=TrainingRouting([m.num_experts for _, m in self.moe], self.device),
                loader_state=loader_generator(r.loader).get_state(),
            )
            r.batches = iter(r.loader)
        clocks: list[tuple[Mark, Mark, Mark, Mark]] = []
        self.clock.sync()
        start = time.perf_counter()
        for r in self.live:
            r.points.begin_segment()
        while self.live:
            for r in self.live:  # before the fetch, as the Trainer consults it
                if r.hooks.stop_requested():
                    self._close_segment(r, clocks, start)
                    self._cancel(r, "during training")
            self._drop()
            if not self.live:
                return
            fetched = [next(r.batches, None) for r in self.live]  # type: ignore[arg-type]  # set above
            if any(b is None for b in fetched):
                break  # one epoch's batches: as many for every replica
            batch: list[Any] = fetched
            x = torch.stack([b[0] for b in batch]).to(self.device, non_blocking=True)
            y = torch.stack([b[1] for b in batch]).to(self.device, non_blocking=True)
            t0 = self.clock.now()
            loss, ce, aux, routing = self.loss_step(x, y, self.config.label_smoothing)  # [R]
            t1 = self.clock.now()
            assert self.optimizer is not None, "training without an optimizer"
            self.optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # replica r's parameters get replica r's gradient alone
            grad_norm = self.model.clip_grad_norm_(GRAD_CLIP)  # [R]: each its own
            t2 = self.clock.now()
            learning_rate = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            for (_, layer), stats in zip(self.moe, routing, strict=True):
                layer.update_expert_bias(stats.counts)  # aux-loss-free balancing, if on
            t3 = self.clock.now()
            clocks.append((t0, t1, t2, t3))
            totals = torch.stack([loss.detach(), ce.detach(), aux.detach()], dim=1)  # [R, 3]
            for i, r in enumerate(self.live):
                p = r.progress
                assert p is not None
                p.totals += totals[i]
                p.routing.add(replica_stats(routing, i))
                p.steps += 1
                tokens = y[i].numel()
                p.tokens += tokens
                r.history.current_step += 1
                with self._guard(r):
                    r.points.after_step(r.hooks.on_steps, step=r.history.current_step,
                                        epoch=r.history.epoch + 1, tokens=tokens,
                                        learning_rate=learning_rate, loss=loss[i], ce=ce[i],
                                        aux=aux[i], grad_norm=grad_norm[i])  # fmt: skip
                self._report(r, "training")
            self._drop()
        for r in self.live:
            self._close_segment(r, clocks, start)
            with self._guard(r):
                self._epoch_stats(r)
        self._drop()

    def _epoch_stats(self, r: Replica) -> None:
        p = r.progress
        assert p is not None
        loss, ce, aux = (p.totals / p.steps).tolist()
        if not math.isfinite(loss):
            raise TrainingDiverged(f"{self.config.name}: training loss is {loss} in epoch "
                                   f"{r.history.epoch + 1} (the run diverged: try a lower "
                                   "learning_rate)")  # fmt: skip
        s = p.seconds
        p.train_stats = {"loss": loss, "ce_loss": ce, "aux_loss": aux,
                         "tokens_per_sec": p.tokens / s["wall"], "forward_time": s["forward"],
                         "backward_time": s["backward"], "optimizer_time": s["optimizer"]}  # fmt: skip
        r.history.add_training(p.train_stats, p.steps)

    def _finish_epoch(self, i: int, r: Replica, evaluated: tuple[Losses, list[EvalLayerRouting],
                      float | None] | None, eval_start: float, num_epochs: int) -> None:  # fmt: skip
        """The Trainer's end of an epoch for replica `i`: early stopping, its record."""
        p, h = r.progress, r.history
        assert p is not None and p.train_stats is not None and evaluated is not None
        val, layers, train_ce = evaluated
        h.add_evaluation(h.epoch + 1, val, train_ce, layers if self.moe else None)
        patience = self.config.early_stopping_patience
        if h.judge(val, h.epoch + 1, patience) and patience > 0:
            r.best_state = self.model.replica_state(i)
        training = p.routing.summary(self.layer_ids, p.steps) if self.moe else None
        record = h.finish_epoch(dict(p.train_stats), val, model_name=self.config.name,
                                layers=training, gating_temperature=self.gating_temperature,
                                duration=p.seconds["wall"] + time.perf_counter() - eval_start)  # fmt: skip
        r.progress = None
        if r.reporter is not None:
            r.reporter.on_epoch_end(record, num_epochs)
        with self._guard(r):  # the hook, then the checkpoint, as the Trainer: a crash replays
            if r.hooks.on_epoch_end is not None:
                r.hooks.on_epoch_end(record)
            if self.checkpoints is not None:
                self.checkpoints.save(self.model, self.optimizer, i, r)
        if h.stopped_early and r.outcome is None:
            r.kept = r.best_state  # it leaves the stack with its best weights

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> list[tuple[Losses, list[EvalLayerRouting], float | None] | None]:  # fmt: skip
        """Per live replica: validation losses, validation routing and the eval-mode CE of
        the training subset, for its weights now (None for one that failed or stopped)."""
        for r in self.live:
            self._report(r, "evaluating")
        val = self.evaluate_loader(self.val_loader, "evaluation")
        train = (self.evaluate_loader(self.train_eval_loader, "evaluation")
                 if self.train_eval_loader is not None else [None] * len(val))  # fmt: skip
        return [None if v is None or not r.running else (v[0], v[1], t[0]["ce_loss"] if t else None)
                for r, v, t in zip(self.live, val, train, strict=True)]  # fmt: skip

    @torch.no_grad()
    def evaluate_loader(self, loader: Any, what: str) -> list[tuple[Losses, list[EvalLayerRouting]] | None]:  # fmt: skip
        """Trainer.evaluate_loader for every live replica at once, on the same batches."""
        self.model.eval()
        R = len(self.live)
        ce_sum = torch.zeros(R, device=self.device)
        aux_sum = torch.zeros(R, device=self.device)
        n_tokens = 0
        experts = [m.num_experts for _, m in self.moe]
        routing = [EvalRouting(experts, self.device) for _ in range(R)]
        full = getattr(loader, "batch_size", None)
        for x, y in loader:
            for r in self.live:
                if r.running and r.hooks.stop_requested():
                    self._cancel(r, f"during {what}")  # its partial evaluation is discarded
            if not any(r.running for r in self.live):
                break
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            step = self.loss_step if x.size(0) == full else self.loss_step.eager
            _, ce, aux, stats = step(x.expand(R, *x.shape), y.expand(R, *y.shape), 0.0)
            ce_sum += y.numel() * ce.float()
            aux_sum += y.numel() * aux.float()
            n_tokens += y.numel()
            for i in range(R):
                routing[i].add(replica_stats(stats, i), y.numel())
        out: list[tuple[Losses, list[EvalLayerRouting]] | None] = []
        ces = (ce_sum / max(n_tokens, 1)).tolist()
        for i, r in enumerate(self.live):
            if not r.running:
                out.append(None)
                continue
            if n_tokens == 0:
                raise ValueError(f"the {what} loader yielded no batches")
            if self.moe:
                balance = [m.balance_loss(c, p) for (_, m), c, p in
                           zip(self.moe, routing[i].counts, routing[i].prob_sums, strict=True)]  # fmt: skip
                z = routing[i].z_losses(n_tokens)
                aux = weighted_aux_loss(self.model.config.moe, balance, z).item()
            else:
                aux = (aux_sum[i] / n_tokens).item()
            loss = ces[i] + aux
            if not math.isfinite(loss):
                r.outcome = TrainingDiverged(f"{self.config.name}: {what} loss is {loss}")
                out.append(None)
                continue
            out.append(({"loss": loss, "ce_loss": ces[i], "aux_loss": aux},
                        routing[i].summary(self.layer_ids)))  # fmt: skip
        return out

    # ------------------------------------------------------------------ replicas

    def _close_segment(self, r: Replica, clocks: list[tuple[Mark, Mark, Mark, Mark]],
                       start: float) -> None:  # fmt: skip
        p = r.progress
        assert p is not None
        self.clock.sync()
        wall = time.perf_counter() - start
        p.seconds["wall"] += wall
        with self._guard(r):
            r.points.close_segment(wall, r.hooks.on_steps)
        self.clock.add_phases(clocks, p.seconds)

    def _report(self, r: Replica, phase: Literal["training", "evaluating"]) -> None:
        p = r.progress
        if p is None or not r.running:
            return
        report: ProgressReport = {"phase": phase, "epoch": r.history.epoch + 1, "step": p.steps,
                                  "steps_per_epoch": len(r.loader), "tokens": p.tokens}  # fmt: skip
        for hook in (r.reporter and r.reporter.on_progress, r.hooks.on_progress):
            if hook is not None:
                with self._guard(r):
                    hook(report)  # type: ignore[operator]  # a method when set

    def _cancel(self, r: Replica, where: str) -> None:
        """The Trainer's stop, for this replica alone (no checkpoint: a resume replays the epoch)."""
        steps = r.progress.steps if r.progress is not None else 0
        message = (f"{self.config.name} (seed {r.base.seed}): stopped {where} of epoch "
                   f"{r.history.epoch + 1}, after step {steps}/{len(r.loader)} (global step "
                   f"{r.history.current_step})")  # fmt: skip
        if r.reporter is not None:
            r.reporter.say(message)
        r.outcome = TrainingCancelled(message, epoch=r.history.epoch + 1, step=steps)

    @staticmethod
    @contextlib.contextmanager
    def _guard(r: Replica) -> Iterator[None]:
        """One replica's callback: what it raises ends that replica alone, as it would end
        its run (the result is the exception)."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001
            r.outcome = r.outcome or exc

    def _drop(self) -> None:
        """The replicas done (stopped early, failed, cancelled) leave the stack; one that
        failed or was cancelled is told to `on_left` at once (one stopped early has its test
        pass still to come, with the others')."""
        rows = [i for i, r in enumerate(self.live) if r.running]
        if len(rows) < len(self.live):
            for r in self.live:
                if r.outcome is not None and self.on_left is not None:
                    self.on_left(r.index, r.outcome)
            self.model.keep(rows, self.optimizer)
            self.live = [self.live[i] for i in rows]


def run_together(
    config: ExperimentConfig,
    train_dataset: Dataset[Any],
    val_dataset: Dataset[Any],
    base_configs: list[BaseConfig],
    device: torch.device | str | None,
    *,
    dense: bool = False,
    hooks: list[TrainerHooks] | None = None,
    model_paths: list[str | os.PathLike[str] | None] | None = None,
    test_dataset: Dataset[Any] | None = None,
    verbose: bool = True,
    checkpointing: Sequence[Checkpointing | None] | None = None,
    on_left: Callable[[int, BaseException], None] | None = None,
) -> list[dict[str, Any] | BaseException]:
    """`run_single_experiment(config, ..., base, ...)` for each of `base_configs` (which
    differ in `seed` alone: ValueError naming the field otherwise), trained together as one
    stacked model. Returns, in their order, each seed's result (run_single_experiment's keys,
    and `together`: {"replicas", "index"}) or what ended it: TrainingCancelled when its
    `hooks[i].should_stop` stopped it, TrainingDiverged, or what one of its hooks raised.
    `model_paths[i]` receives seed i's kept weights (a GPT state dict, as save_model
    writes). An error of the stack itself (out of memory) ends every seed still training.
    `checkpointing[i]`: seed i's checkpoint, a single run's, written at epochs' ends and
    resumed from (moe_core.together_checkpoint: ValueError unless from one epoch's end).
    `on_left(i, outcome)`: seed i failed or was cancelled and left the stack, told as it
    happens (its outcome is in the results too), so that a caller can end its run at once."""
    k = len(base_configs)
    if k == 0:
        raise ValueError("no base configs to train")
    first = base_configs[0].model_dump()
    for other in base_configs[1:]:
        for name, value in other.model_dump().items():
            if name != "seed" and value != first[name]:
                raise ValueError(f"seeds trained together differ in base.{name}: "
                                 f"{first[name]!r} and {value!r}")  # fmt: skip
    base = base_configs[0]
    if base.gpus > 1:
        raise ValueError("seeds are trained together in one process: base.gpus must be 1")
    hooks = hooks or [TrainerHooks() for _ in base_configs]
    paths, saves = model_paths or [None] * k, list(checkpointing or [None] * k)
    if not len(hooks) == len(paths) == len(saves) == k:
        raise ValueError(f"{k} base configs: as many hooks, model paths and checkpointings")
    check_or_raise(config, base, dense=dense)
    device = resolve_device(device)
    precision = resolve_precision(base.precision, device)
    bs = config.batch_size
    if isinstance(train_dataset, TokenBlocks):
        train_dataset = train_dataset.to(device)  # once, for every replica's loader
    models: list[GPT] = []
    replicas: list[Replica] = []
    for i, (b, h) in enumerate(zip(base_configs, hooks, strict=True)):
        seed_everything(b.seed)  # each replica starts where its own run would
        generator = torch.Generator().manual_seed(b.seed)
        loader = batches(train_dataset, bs, device, train=True, generator=generator)
        if len(loader) == 0:
            n = len(train_dataset)  # type: ignore[arg-type]  # map-style: it has a len
            raise ValueError(f"{n} training blocks are fewer than one batch of {bs}")
        models.append(build_model(config, b, dense))
        replica = Replica(i, b, h, loader, StepPoints(device))
        if verbose:
            name = f"{config.name} seed {b.seed}"
            replica.reporter = ConsoleReporter(name, replica.running_loss)
        replicas.append(replica)
    template = models[0]
    weights = atomic.tensor_bytes(template.state_dict())
    files = dict.fromkeys(paths, weights)  # the kept weights; a checkpoint: 8 weights' worth
    atomic.ensure_room_for(files | {c.path: 8 * weights for c in saves if c})
    model = StackedGPT(models).to(device)
    del models
    subset = min(len(val_dataset), len(train_dataset))  # type: ignore[arg-type]  # map-style: they have a len
    train_subset = (train_dataset.head(subset) if isinstance(train_dataset, TokenBlocks)
                    else Subset(train_dataset, range(subset)))  # fmt: skip
    amp_dtype = torch.bfloat16 if precision == "bf16" else None
    optimizer = build_optimizer(model, config, base, fused=device.type == "cuda", replica_dim=True)
    checkpoints = StackCheckpoints(saves, optimizer_layout(template, config, base))
    live = checkpoints.resume(model, optimizer, replicas, base.num_epochs)
    trainer = TogetherTrainer(model, live, optimizer, device, config, dense=dense,
                              val_loader=batches(val_dataset, bs, device),
                              train_eval_loader=batches(train_subset, bs, device),
                              amp_dtype=amp_dtype, compile=base.compile, checkpoints=checkpoints)  # fmt: skip
    trainer.on_left = on_left
    if verbose:
        kind = "dense" if dense else f"MoE ({config.experts(base)} experts, top-{config.top_k})"
        print(f"[{config.name}] {kind}: {count_parameters(template):,} parameters x {k} seeds "
              f"trained together, {len(replicas[0].loader)} steps/epoch, {base.num_epochs} "
              f"epochs on {device} ({precision}, compile {base.compile})", flush=True)  # fmt: skip
    try:
        trainer.train(base.num_epochs)
    except Exception as exc:  # the stack's own failure: every seed still training
        for r in trainer.live:
            if r.running:
                r.outcome = exc
    del trainer, model, optimizer
    done = [r for r in replicas if r.outcome is None and r.kept is not None]
    try:
        tests = _test(config, done, template, test_dataset, device, dense=dense,
                      amp_dtype=amp_dtype, verbose=verbose)  # fmt: skip
    except Exception as exc:  # the stack's own failure, again
        tests = {}
        for r in done:
            r.outcome = r.outcome or exc
    results: list[dict[str, Any] | BaseException] = []
    for r, path in zip(replicas, paths, strict=True):
        if r.outcome is not None:
            results.append(r.outcome)
            continue
        assert r.kept is not None
        h = r.history
        results.append({
            "config": config.to_dict(),
            "metrics": h.metrics(),
            "params": count_parameters(template),
            "active_params": parameters(config, r.base, dense=dense)[1],
            "test": tests.get(r.index),
            "evaluation": {"capacity_factor": None, "train_subset_blocks": subset},
            "seed": r.base.seed,
            "device": str(device),
            "precision": precision,
            "compile": r.base.compile,
            "base": r.base.model_dump(),
            "parallel": {"gpus": r.base.gpus, "expert_parallel": r.base.expert_parallel},
            "together": {"replicas": k, "index": r.index},
        })  # fmt: skip
        if path is not None:
            torch_save_atomic(path, r.kept)
    return results


def _test(
    config: ExperimentConfig, done: list[Replica], template: GPT, test_dataset: Any,
    device: torch.device, *, dense: bool, amp_dtype: torch.dtype | None, verbose: bool,
) -> dict[int, dict[str, Any]]:  # fmt: skip
    """The finished replicas' kept weights on the test split, stacked again, by index; a
    replica cancelled meanwhile gets its TrainingCancelled as its outcome."""
    if test_dataset is None or not done:
        return {}
    model = StackedGPT([template] * len(done)).to(device)
    kept = [r.kept for r in done]
    for i, (r, state) in enumerate(zip(done, kept, strict=True)):
        model.load_replica(i, state)  # type: ignore[arg-type]  # done: kept is set
        r.kept, r.progress = None, None  # running again, for the pass
    tester = TogetherTrainer(model, list(done), None, device, config, dense=dense,
                             amp_dtype=amp_dtype)  # fmt: skip
    evaluated = tester.evaluate_loader(batches(test_dataset, config.batch_size, device), "test")
    out: dict[int, dict[str, Any]] = {}
    for r, losses, state in zip(done, evaluated, kept, strict=True):
        if r.outcome is not None or losses is None:
            continue  # cancelled during the pass, as a run's test evaluation would be
        r.kept = state
        h = r.history
        epoch = h.best_epoch if r.best_state is not None else h.epoch  # the kept weights'
        out[r.index] = {**losses[0], "epoch": epoch}
        if verbose:
            print(f"[{config.name} seed {r.base.seed}] test (epoch {epoch}'s weights): loss "
                  f"{losses[0]['loss']:.4f} (ce {losses[0]['ce_loss']:.4f})", flush=True)  # fmt: skip
    return out
