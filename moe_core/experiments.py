"""Experiments: build a model from configs, run one, judge it, and the spec's `main()` study."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import atomic
from .atomic import torch_save_atomic, write_json_atomic
from .config import (
    SPEC_EXPERIMENTS,
    BaseConfig,
    ExperimentConfig,
    dense_config,
    get_experiment_configs,
)
from .criteria import best_val_loss, format_table, format_verdict, judge, judge_seeds
from .model import GPT, GPTConfig, MoELayer
from .trainer import CheckpointMismatch, EpochCallback, ProgressCallback, Trainer


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_active_parameters(model: nn.Module) -> int:
    """Parameters one token passes through: all of them but, in each MoE layer, the
    experts it is not routed to (num_experts - top_k of them). Dense: count_parameters."""
    inactive = 0
    for layer in model.modules():
        if isinstance(layer, MoELayer):
            per_expert = sum(p[0].numel() for p in layer.experts.parameters())
            inactive += (layer.num_experts - layer.top_k) * per_expert
    return count_parameters(model) - inactive


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
            num_experts=config.experts(base),
            expert_dim=config.expert_dim,
            top_k=config.top_k,
            capacity_factor=config.capacity_factor,
            aux_weight=config.aux_weight,
            router_z_loss=config.router_z_loss,
            dropless=config.dropless,
            router_jitter=config.router_jitter,
            num_shared_experts=config.num_shared_experts,
            aux_free_bias_rate=config.aux_free_bias_rate,
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
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_tag: str | None = None,
    model_path: str | os.PathLike | None = None,
    test_dataset: Dataset | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train one configuration for `base_config.num_epochs`; returns config, metrics, params
    (the spec's keys) and `active_params`, `test` (the kept weights on `test_dataset`,
    when given), `evaluation` (how evaluation was done) and `seed`.

    Every evaluation also measures the eval-mode CE of the first len(val_dataset) training
    blocks (for a generalisation gap that compares like with like).

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
    train_subset = Subset(train_dataset, range(min(len(val_dataset), len(train_dataset))))
    train_eval_loader = DataLoader(train_subset, batch_size=config.batch_size, shuffle=False)
    if len(train_loader) == 0:
        raise ValueError(
            f"{len(train_dataset)} training blocks are fewer than one batch of {config.batch_size}"
        )
    model = build_model(config, base_config, dense).to(device)
    # Room for the run's files before its first step: a checkpoint (weights, AdamW's two
    # moments, the best weights) twice while it is replaced, and the final weights.
    weights = atomic.tensor_bytes(model.state_dict())
    atomic.ensure_room_for({checkpoint_path: 8 * weights, model_path: weights})
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
        on_progress=on_progress,
        should_stop=should_stop,
        checkpoint_path=checkpoint_path,
        checkpoint_tag=checkpoint_tag,
        train_eval_loader=train_eval_loader,
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
        kind = (
            "dense" if dense else f"MoE ({config.experts(base_config)} experts, top-{config.top_k})"
        )
        print(
            f"[{config.name}] {kind}: {count_parameters(model):,} parameters, "
            f"{len(train_loader)} steps/epoch, {base_config.num_epochs} epochs on {device}",
            flush=True,
        )
    trainer.train(base_config.num_epochs)
    test = None
    if test_dataset is not None:
        # The weights train() left: the best epoch's under early stopping, else the last.
        kept = trainer.best_epoch if trainer.best_state is not None else trainer.epoch
        test_loader = DataLoader(test_dataset, batch_size=config.batch_size, shuffle=False)
        test = {**trainer.evaluate_loader(test_loader, "test")[0], "epoch": kept}
        if verbose:
            print(f"[{config.name}] test (epoch {kept}'s weights): loss {test['loss']:.4f}"
                  f" (ce {test['ce_loss']:.4f})", flush=True)  # fmt: skip
    result = {
        "config": config.to_dict(),
        "metrics": trainer.get_metrics(),
        "params": count_parameters(model),
        "active_params": count_active_parameters(model),
        "test": test,
        # Evaluation drops no token (MoELayer's eval capacity); the gap's training CE is
        # measured on this many training blocks, in eval mode.
        "evaluation": {"capacity_factor": None, "train_subset_blocks": len(train_subset)},
        "seed": base_config.seed,
    }
    if model_path is not None:
        save_model(trainer.model, model_path)
    return result


def save_model(model: nn.Module, path: str | os.PathLike) -> None:
    torch_save_atomic(path, model.state_dict())


def evaluate_success_criteria(
    results: dict[str, dict[str, Any]],
    dense_baseline_loss: float,
    dense_results: dict[str, Any] | None = None,
    *,
    verbose: bool = True,
) -> dict[str, dict[str, Any]]:
    """Judge each experiment (name -> result) against the dense baseline; print and return.

    With `dense_results` (the dense run's result) the gap and throughput comparisons are
    made too; with only `dense_baseline_loss` (the spec's two arguments), the primary
    criterion uses the loss alone and each verdict says the gap was not judged.
    """
    verdicts = {}
    for name, result in results.items():
        verdicts[name] = judge(result, dense_results, dense_baseline_loss)
        if verbose:
            print(format_verdict(name, verdicts[name]), flush=True)
    return verdicts


def _commit() -> str | None:
    """The source's git commit (with '-dirty' for uncommitted changes), when it is a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty.strip() else "")


def main(
    base_config: BaseConfig | None = None,
    out_dir: str | os.PathLike = ".",
    experiments: list[str] | None = None,
    device: str | torch.device | None = None,
    verbose: bool = True,
    seeds: int = 1,
) -> dict[str, Any]:
    """The spec's pipeline: dense baseline (early stopping), the spec's four experiments (or
    `experiments`, any of EXPERIMENT_PRESETS), evaluation,
    and `experiment_results.json` plus `dense_model.pt` in `out_dir`.

    With `seeds` > 1 the dense baseline and every experiment run once per seed (base.seed,
    base.seed + 1, ...) and each experiment is judged on its differences from the dense run
    of the same seed: means, standard errors and whether they are significant.
    """
    from .data import build_datasets  # here, so importing experiments needs no `datasets`

    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    base = base_config or BaseConfig()
    device = resolve_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    commit = _commit()  # at the start: the code that runs, whatever changes meanwhile

    data = build_datasets(base)  # the seed changes initialisation and order, not the data
    if verbose:
        print(
            f"data: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test blocks"
            f" of {base.seq_len} tokens, tokenizer {data.tokenizer_key} ({data.seconds:.1f}s);"
            f" device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads,"
            f" {seeds} seed(s)",
            flush=True,
        )

    configs = get_experiment_configs(base)
    names = experiments or list(SPEC_EXPERIMENTS)
    unknown = sorted(set(names) - set(configs))
    if unknown:
        raise ValueError(f"unknown experiments {unknown}; choose from {sorted(configs)}")

    seed_list = [base.seed + i for i in range(seeds)]
    dense_runs: list[dict[str, Any]] = []
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for i, seed in enumerate(seed_list):
        seeded = base.model_copy(update={"seed": seed})
        # The first seed's dense weights are the spec's dense_model.pt.
        model_path = out / ("dense_model.pt" if i == 0 else f"dense_model.seed{seed}.pt")
        dense_runs.append(run_single_experiment(
            dense_config(seeded), data.train, data.val, seeded, device, dense=True,
            model_path=model_path, test_dataset=data.test, verbose=verbose))  # fmt: skip
        for name in names:
            runs[name].append(run_single_experiment(
                configs[name], data.train, data.val, seeded, device,
                test_dataset=data.test, verbose=verbose))  # fmt: skip

    dense = dense_runs[0]
    results = {name: r[0] for name, r in runs.items()}
    if verbose:
        print("\n=== success criteria ===", flush=True)
    if seeds == 1:
        verdicts = evaluate_success_criteria(
            results, best_val_loss(dense["metrics"]), dense, verbose=verbose
        )
    else:
        verdicts = {name: judge_seeds(runs[name], dense_runs) for name in names}
        if verbose:
            for name, verdict in verdicts.items():
                print(format_verdict(name, verdict), flush=True)
    table = format_table(dense_runs, runs, verdicts)
    if verbose:
        print("\n" + table, flush=True)

    summary = {
        "base": base.to_dict(),
        "seeds": seed_list,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": commit,
        "data": {
            "tokenizer": data.tokenizer_key,
            "vocab_size": data.tokenizer.get_vocab_size(),
            "train_tokens": data.train.num_tokens,
            "val_tokens": data.val.num_tokens,
            "test_tokens": data.test.num_tokens,
        },
        "seconds": time.perf_counter() - started,
        # The spec's keys hold the first seed's runs; `runs` holds every seed's, in order.
        "dense": dense,
        "experiments": results,
        "runs": {"dense": dense_runs, **runs},
        "verdicts": verdicts,
        "table": table,
    }
    write_json_atomic(out / "experiment_results.json", summary)
    if verbose:
        print(f"\nwrote {out / 'experiment_results.json'} and {out / 'dense_model.pt'}"
              f" in {summary['seconds']:.0f}s", flush=True)  # fmt: skip
    return summary
