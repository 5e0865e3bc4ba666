"""Experiments: build a model from configs, run one, judge it, and the spec's `main()` study."""

from __future__ import annotations

import json
import os
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .config import BaseConfig, ExperimentConfig, dense_config, get_experiment_configs
from .criteria import best_val_loss, format_table, format_verdict, judge
from .model import GPT, GPTConfig
from .trainer import CheckpointMismatch, EpochCallback, Trainer


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The named device, or CUDA when available, else the CPU."""
    if name is not None and str(name) != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: ExperimentConfig, base: BaseConfig, dense: bool = False) -> GPT:
    """A GPT with MoE FFNs at `base.moe_layers` (none when `dense`)."""
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
            num_experts=base.num_experts,
            expert_dim=config.expert_dim,
            top_k=config.top_k,
            capacity_factor=config.capacity_factor,
            aux_weight=config.aux_weight,
        )
    )


def build_optimizer(
    model: nn.Module, config: ExperimentConfig, base: BaseConfig, *, fused: bool = False
) -> torch.optim.AdamW:
    """AdamW; `fused` runs the whole update as one kernel per dtype/device on a GPU
    (torch's fused implementation), instead of a loop of small kernels per parameter."""
    # Decay matrices only, as nanoGPT and most LM recipes do: decaying LayerNorm gains and
    # biases pulls them toward zero for no regularisation benefit.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=base.learning_rate, fused=fused or None)


def run_single_experiment(
    config: ExperimentConfig,
    train_dataset: Dataset,
    val_dataset: Dataset,
    base_config: BaseConfig,
    device: torch.device | str | None,
    *,
    dense: bool = False,
    on_epoch_end: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_tag: str | None = None,
    model_path: str | os.PathLike | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train one configuration for `base_config.num_epochs`; returns config, metrics, params.

    `checkpoint_path` resumes from that file when it exists (mid-epoch too) and rewrites it
    every epoch and at a stop; with `checkpoint_tag`, only a checkpoint carrying the same
    tag is resumed from (another belongs to another run: training starts afresh).
    `model_path` receives the final (best, under early stopping) weights. Raises
    `TrainingCancelled` when `should_stop` ends the run.
    """
    device = resolve_device(device)
    seed_everything(base_config.seed)  # every run starts from the same initialisation
    # The loader's own generator makes the shuffle order part of the checkpoint.
    generator = torch.Generator().manual_seed(base_config.seed)
    train_loader = DataLoader(
        train_dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        generator=generator,
    )
    val_loader = DataLoader(val_dataset, batch_size=config.batch_size, shuffle=False)
    if len(train_loader) == 0:
        raise ValueError(
            f"{len(train_dataset)} training blocks are fewer than one batch of {config.batch_size}"
        )
    model = build_model(config, base_config, dense).to(device)
    trainer = Trainer(
        model,
        train_loader,
        val_loader,
        build_optimizer(model, config, base_config),
        device,
        model_name=config.name,
        early_stopping_patience=config.early_stopping_patience,
        gating_temp_schedule=None
        if dense or config.gating_temp_schedule is None
        else config.gating_temp_schedule,
        label_smoothing=config.label_smoothing,
        on_epoch_end=on_epoch_end,
        should_stop=should_stop,
        checkpoint_path=checkpoint_path,
        checkpoint_tag=checkpoint_tag,
        verbose=verbose,
    )
    resumed = False
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        try:
            done = trainer.load_checkpoint(checkpoint_path)
            resumed = True
            if verbose:
                within = (
                    f", {trainer.progress.steps} steps into the next" if trainer.progress else ""
                )
                print(f"[{config.name}] resumed from {checkpoint_path} after epoch {done}{within}",
                      flush=True)  # fmt: skip
        except CheckpointMismatch as exc:
            warnings.warn(f"not resuming: {exc}; training from scratch", stacklevel=2)
    if not resumed and verbose:
        kind = "dense" if dense else f"MoE ({base_config.num_experts} experts, top-{config.top_k})"
        print(
            f"[{config.name}] {kind}: {count_parameters(model):,} parameters, "
            f"{len(train_loader)} steps/epoch, {base_config.num_epochs} epochs on {device}",
            flush=True,
        )
    trainer.train(base_config.num_epochs)
    result = {
        "config": config.to_dict(),
        "metrics": trainer.get_metrics(),
        "params": count_parameters(model),
    }
    if model_path is not None:
        save_model(trainer.model, model_path)
    return result


def save_model(model: nn.Module, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def evaluate_success_criteria(
    results: dict[str, dict[str, Any]],
    dense_baseline_loss: float,
    dense_results: dict[str, Any] | None = None,
    *,
    verbose: bool = True,
) -> dict[str, dict[str, Any]]:
    """Judge each experiment (name -> result) against the dense baseline; print and return.

    With `dense_results` (the dense run's result) the gap and throughput comparisons are
    made too; with only `dense_baseline_loss`, the primary criterion uses the loss alone.
    """
    verdicts = {}
    for name, result in results.items():
        verdicts[name] = judge(result, dense_results, dense_baseline_loss)
        if verbose:
            print(format_verdict(name, verdicts[name]), flush=True)
    return verdicts


def main(
    base_config: BaseConfig | None = None,
    out_dir: str | os.PathLike = ".",
    experiments: list[str] | None = None,
    device: str | torch.device | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """The spec's pipeline: dense baseline (early stopping), every experiment, evaluation,
    and `experiment_results.json` plus `dense_model.pt` in `out_dir`."""
    from .data import build_datasets  # here, so importing experiments needs no `datasets`

    base = base_config or BaseConfig()
    device = resolve_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    data = build_datasets(base)
    if verbose:
        print(
            f"data: {len(data.train)} train / {len(data.val)} val blocks of {base.seq_len} tokens,"
            f" tokenizer {data.tokenizer_key} ({data.seconds:.1f}s); device {device},"
            f" torch {torch.__version__}, {torch.get_num_threads()} threads",
            flush=True,
        )

    configs = get_experiment_configs(base)
    names = experiments or list(configs)
    unknown = sorted(set(names) - set(configs))
    if unknown:
        raise ValueError(f"unknown experiments {unknown}; choose from {sorted(configs)}")

    dense = run_single_experiment(dense_config(base), data.train, data.val, base, device,
                                  dense=True, model_path=out / "dense_model.pt", verbose=verbose)  # fmt: skip

    results = {}
    for name in names:
        results[name] = run_single_experiment(
            configs[name], data.train, data.val, base, device, verbose=verbose
        )

    if verbose:
        print("\n=== success criteria ===", flush=True)
    verdicts = evaluate_success_criteria(
        results, best_val_loss(dense["metrics"]), dense, verbose=verbose
    )
    table = format_table(dense, results, verdicts)
    if verbose:
        print("\n" + table, flush=True)

    summary = {
        "base": base.to_dict(),
        "device": str(device),
        "torch": torch.__version__,
        "seconds": time.perf_counter() - started,
        "dense": dense,
        "experiments": results,
        "verdicts": verdicts,
    }
    tmp = out / ".experiment_results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "experiment_results.json")
    if verbose:
        print(f"\nwrote {out / 'experiment_results.json'} and {out / 'dense_model.pt'}"
              f" in {summary['seconds']:.0f}s", flush=True)  # fmt: skip
    return summary
