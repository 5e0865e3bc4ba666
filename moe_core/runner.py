"""One experiment: build the model and optimizer from its configs, put the data where the
model is, train it with the Trainer, and evaluate the kept weights on the test split."""

from __future__ import annotations

import dataclasses
import os
import random
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import atomic
from .atomic import torch_save_atomic
from .checkpoint import Checkpointing
from .config import BaseConfig, ExperimentConfig, Precision, check_or_raise
from .data import Batches, TokenBlocks
from .errors import CheckpointMismatch
from .hooks import TrainerHooks
from .model import GPT, GPTConfig
from .sizing import parameters
from .trainer import Trainer

if TYPE_CHECKING:  # torch.distributed only where a run is parallel
    from .parallel import Parallel


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The named device, or CUDA when available, else the CPU."""
    if name is not None and str(name) != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: Precision, device: torch.device) -> Literal["bf16", "fp32"]:
    """`auto`: bf16 autocast on a CUDA device with bf16 (Ampere and later), else float32
    (on the CPU, bf16 autocast is slower than float32 at these sizes)."""
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(
            including_emulation=False
        )
        return "bf16" if cuda_bf16 else "fp32"
    return precision


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: ExperimentConfig, base: BaseConfig, dense: bool = False) -> GPT:
    """A GPT with MoE FFNs at `base.moe_layers` (none when `dense`), every MoE layer built
    from `config.moe(base)`."""
    return GPT(
        GPTConfig(
            vocab_size=base.vocab_size,
            block_size=base.seq_len,
            n_layer=base.num_layers,
            n_head=base.num_heads,
            n_embd=base.hidden_dim,
            ffn_dim=base.ffn_dim,
            dropout=config.dropout,
            moe_layers=() if dense else tuple(base.moe_layers),
            moe=None if dense else config.moe(base),
        )
    )


def build_optimizer(
    model: nn.Module, config: ExperimentConfig, base: BaseConfig, *, fused: bool = False,
    replica_dim: bool = False,
) -> torch.optim.AdamW:  # fmt: skip
    """AdamW; `fused` runs the whole update as one kernel per dtype/device on a GPU
    (torch's fused implementation), instead of a loop of small kernels per parameter.
    `replica_dim`: every parameter carries a leading replica dimension (moe_core.stacked);
    AdamW is elementwise, so over the stack it is each replica's own."""
    # Decay matrices only, as nanoGPT and most LM recipes do: decaying LayerNorm gains and
    # biases pulls them toward zero for no regularisation benefit.
    params = [p for p in model.parameters() if p.requires_grad]
    matrix = 3 if replica_dim else 2
    groups = [
        {"params": [p for p in params if p.dim() >= matrix], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < matrix], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=base.learning_rate, fused=fused or None)


def batches(
    dataset: Dataset[Any], batch_size: int, device: torch.device, *, train: bool = False,
    generator: torch.Generator | None = None,
) -> Batches | DataLoader[Any]:  # fmt: skip
    """TokenBlocks go to `device` once, as one tensor, and are batched there by index
    (data.Batches: DataLoader's order); any other dataset gets a DataLoader."""
    if isinstance(dataset, TokenBlocks):
        return Batches(dataset.to(device), batch_size, shuffle=train, drop_last=train,
                       generator=generator)  # fmt: skip
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train,
                      generator=generator)  # fmt: skip


def steps_per_epoch(train_dataset: Dataset[Any], batch_size: int) -> int:
    """Training steps per epoch: full batches only (the last partial one is dropped)."""
    return len(train_dataset) // batch_size  # type: ignore[arg-type]  # map-style: it has a len


def run_single_experiment(
    config: ExperimentConfig,
    train_dataset: Dataset[Any],
    val_dataset: Dataset[Any],
    base_config: BaseConfig,
    device: torch.device | str | None,
    *,
    dense: bool = False,
    hooks: TrainerHooks | None = None,
    checkpointing: Checkpointing | None = None,
    model_path: str | os.PathLike[str] | None = None,
    test_dataset: Dataset[Any] | None = None,
    verbose: bool = True,
    parallel: Parallel | None = None,
) -> dict[str, Any]:
    """Train one configuration for `base_config.num_epochs`; returns config, metrics, params
    (the spec's keys) and `active_params`, `test` (the kept weights on `test_dataset`,
    when given), `evaluation` (how evaluation was done), `seed`, and how it ran:
    `device`, `precision` (bf16 or fp32: base_config.precision resolved on the device) and
    `compile`.

    Every evaluation also measures the eval-mode CE of the first len(val_dataset) training
    blocks (for a generalisation gap that compares like with like). The training split's
    last partial batch is dropped every epoch (as the spec's DataLoader does); evaluation
    counts every token.

    `hooks` go to the Trainer whole (moe_core.hooks). `checkpointing.path` resumes from that
    file when it exists (mid-epoch too) and is rewritten every epoch and at a stop; with
    `checkpointing.tag`, only a checkpoint carrying the same tag is resumed from (another
    belongs to another run: training starts afresh). `model_path` receives the final
    (best, under early stopping) weights. Raises `TrainingCancelled` when
    `hooks.should_stop` ends the run.

    With `parallel` (moe_core.parallel: this process is one rank of a torchrun launch of
    base_config.gpus), the run is that rank's part: the experts split, its share of each
    batch, evaluation whole on every rank, `checkpointing.path` a DCP directory every rank
    writes; a stop seen by any rank stops all; rank 0 alone prints, writes `model_path`
    (the whole model, its experts gathered) and has its hooks called with each epoch.
    """
    checkpointing = checkpointing or Checkpointing()
    check_or_raise(config, base_config, dense=dense)
    device = parallel.device if parallel is not None else resolve_device(device)
    if parallel is not None:
        verbose = verbose and parallel.main
        hooks = _rank_hooks(hooks or TrainerHooks(), parallel)
    precision = resolve_precision(base_config.precision, device)
    seed_everything(base_config.seed)  # every run starts from the same initialisation
    # The loader's own generator makes the shuffle order part of the checkpoint.
    generator = torch.Generator().manual_seed(base_config.seed)
    bs = config.batch_size
    train_loader = batches(train_dataset, bs, device, train=True, generator=generator)
    if len(train_loader) == 0:
        raise ValueError(f"{len(train_dataset)} training blocks are fewer than one batch of {bs}")  # type: ignore[arg-type]  # map-style: it has a len
    val_loader = batches(val_dataset, bs, device)
    subset = min(len(val_dataset), len(train_dataset))  # type: ignore[arg-type]  # map-style: they have a len
    train_subset = (
        train_dataset.head(subset)
        if isinstance(train_dataset, TokenBlocks)
        else Subset(train_dataset, range(subset))
    )
    model = build_model(config, base_config, dense).to(device)
    # Room for the run's files before its first step: a checkpoint (weights, AdamW's two
    # moments, the best weights) twice while it is replaced, and the final weights.
    weights = atomic.tensor_bytes(model.state_dict())
    if parallel is None or parallel.main:
        atomic.ensure_room_for({checkpointing.path: 8 * weights, model_path: weights})
    if parallel is not None:
        parallel.parallelize(model)  # before the optimizer: the experts become this rank's
        train_loader = parallel.shard(train_loader)
        if parallel.rank:  # each rank its own dropout masks (rank 0 goes on as one process)
            torch.manual_seed(base_config.seed * 1_000_003 + parallel.rank)
    trainer = Trainer(
        model,
        train_loader,
        val_loader,
        build_optimizer(model, config, base_config, fused=device.type == "cuda"),
        device,
        model_name=config.name,
        early_stopping_patience=config.early_stopping_patience,
        gating_temp_schedule=None if dense else config.gating_temp_schedule,
        label_smoothing=config.label_smoothing,
        hooks=hooks,
        checkpointing=checkpointing,
        train_eval_loader=batches(train_subset, bs, device),
        verbose=verbose,
        amp_dtype=torch.bfloat16 if precision == "bf16" else None,
        compile=base_config.compile,
        parallel=parallel,
    )
    resumed = False
    source = checkpointing.source
    if source is not None and source.exists():
        try:
            done = trainer.load_checkpoint(source)
            resumed = True
            if verbose:
                within = (
                    f", {trainer.progress.steps} steps into the next" if trainer.progress else ""
                )
                print(f"[{config.name}] resumed from {source} after epoch {done}{within}",
                      flush=True)  # fmt: skip
        except CheckpointMismatch as exc:
            warnings.warn(f"not resuming: {exc}; training from scratch", stacklevel=2)
    if not resumed and verbose:
        kind = "dense" if dense else (
            f"MoE ({config.experts(base_config)} experts, top-{config.top_k})"
        )  # fmt: skip
        print(
            f"[{config.name}] {kind}: {count_parameters(model):,} parameters, "
            f"{len(train_loader)} steps/epoch, {base_config.num_epochs} epochs on {device}"
            f" ({precision}, compile {base_config.compile})",
            flush=True,
        )
    trainer.train(base_config.num_epochs)
    test = None
    if test_dataset is not None:
        # The weights train() left: the best epoch's under early stopping, else the last.
        kept = trainer.best_epoch if trainer.best_state is not None else trainer.epoch
        test = {**trainer.evaluate_loader(batches(test_dataset, bs, device), "test")[0],
                "epoch": kept}  # fmt: skip
        if verbose:
            print(f"[{config.name}] test (epoch {kept}'s weights): loss {test['loss']:.4f}"
                  f" (ce {test['ce_loss']:.4f})", flush=True)  # fmt: skip
    result = {
        "config": config.to_dict(),
        "metrics": trainer.get_metrics(),
        "params": count_parameters(model),
        "active_params": parameters(config, base_config, dense=dense)[1],
        "test": test,
        # Evaluation drops no token (MoELayer's eval capacity); the gap's training CE is
        # measured on this many training blocks, in eval mode.
        "evaluation": {"capacity_factor": None, "train_subset_blocks": subset},
        "seed": base_config.seed,
        "device": str(device),
        "precision": precision,
        "compile": base_config.compile,
        # what the run's cross-entropy is measured on (moe_core.comparable) and its layout
        "base": base_config.model_dump(),
        "parallel": {"gpus": base_config.gpus, "expert_parallel": base_config.expert_parallel},
    }
    if parallel is not None:
        whole = parallel.full_state_dict(trainer.model)  # a collective: every rank calls it
        if model_path is not None and parallel.main:
            torch_save_atomic(model_path, whole)
    elif model_path is not None:
        save_model(trainer.model, model_path)
    return result


def _rank_hooks(hooks: TrainerHooks, parallel: Parallel) -> TrainerHooks:
    """A rank's hooks: a stop agreed by all ranks at the same step; the rest on rank 0 only
    (the others train, rank 0 reports)."""
    agreed = parallel.agreed(hooks.should_stop)
    if parallel.main:
        return dataclasses.replace(hooks, should_stop=agreed)
    return TrainerHooks(should_stop=agreed, step_metrics_every=hooks.step_metrics_every)


def save_model(model: nn.Module, path: str | os.PathLike[str]) -> None:
    torch_save_atomic(path, model.state_dict())
