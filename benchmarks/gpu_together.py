"""`python -m benchmarks gpu`, issue 29's parts: seeds trained together (moe_core.together).

- `together`: the aggregate tokens/s of k seeds of one configuration trained as one stack
  over one run alone, at the spec's sizes with CUDA graphs (targets: at least 0.8 k for
  k = 2 and 4, 0.6 k for k = 8). Each run trains two epochs of random tokens; the second
  epoch's tokens/s (the Trainer's own figure, warm: compiled, graphs recorded) is compared.
  A stack's per-seed figure is the stack's epoch wall clock, so the aggregate is their sum.
- `study_together`: the spec's study with 3 seeds per configuration, each configuration's
  seeds trained together, through the engine (target: 180 s of wall clock).

On the CPU only `--smoke` runs them (micro, two seeds, no compile): the path, not the speed.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from moe_core.config import base_config, get_experiment_configs
from moe_core.data import TokenBlocks
from moe_core.presets import SPEC_EXPERIMENTS
from moe_core.runner import run_single_experiment
from moe_core.together import run_together

from .context import Context
from .harness import summarize

TARGET = {2: 0.8, 4: 0.8, 8: 0.6}  # aggregate over alone, per seed stacked


def _blocks(vocab: int, seq_len: int, blocks: int, seed: int) -> TokenBlocks:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (blocks * (seq_len + 1),), generator=g)
    return TokenBlocks(tokens, seq_len)


def together_rows(ctx: Context, sizes: dict[str, Any]) -> list[dict[str, Any]]:
    """One run alone, then k seeds together, for each k; the same config, data and steps."""
    compile = "off" if ctx.smoke else "graphs"
    base = base_config(sizes["base"], num_epochs=2, compile=compile, precision="auto")
    config = get_experiment_configs(base)["top2"].model_copy(update={"dropout": 0.0})
    train = _blocks(base.vocab_size, base.seq_len, sizes["steps"] * config.batch_size, 0)
    val = _blocks(base.vocab_size, base.seq_len, config.batch_size, 1)
    seeds = [
        base.model_copy(update={"seed": base.seed + i}) for i in range(max(sizes["together_k"]))
    ]

    def last_tokens_per_s(result: dict[str, Any]) -> float:
        return float(result["metrics"]["tokens_per_sec"][-1])

    started = time.monotonic()
    alone = last_tokens_per_s(run_single_experiment(config, train, val, base, ctx.device,
                                                    verbose=False))  # fmt: skip
    rows = [{"name": "seeds together: top2, one run alone", "params": _params(base, config, 1),
             "seconds": summarize([time.monotonic() - started]),
             "aggregate_tokens_per_s": alone, "per_seed_of_alone": 1.0}]  # fmt: skip
    for k in sizes["together_k"]:
        started = time.monotonic()
        results = run_together(config, train, val, seeds[:k], ctx.device, verbose=False)
        done = [r for r in results if not isinstance(r, BaseException)]
        if len(done) < k:
            failed = next(r for r in results if isinstance(r, BaseException))
            rows.append({"name": f"seeds together: top2, {k} seeds", "error": repr(failed)})
            continue
        total = sum(last_tokens_per_s(r) for r in done)
        per_seed = total / alone / k
        rows.append({
            "name": f"seeds together: top2, {k} seeds",
            "params": _params(base, config, k),
            "seconds": summarize([time.monotonic() - started]),
            "aggregate_tokens_per_s": total,
            "speedup_vs_one": total / alone,
            "per_seed_of_alone": per_seed,
            "target": {"per_seed_of_alone_at_least": TARGET.get(k),
                       "met": None if k not in TARGET or ctx.smoke else per_seed >= TARGET[k]},
        })  # fmt: skip
    return rows


def _params(base: Any, config: Any, k: int) -> dict[str, Any]:
    return {"base": base.model_dump(include={"hidden_dim", "num_layers", "seq_len", "vocab_size",
                                             "compile", "precision"}),
            "batch_size": config.batch_size, "seeds": k, "dropout": config.dropout}  # fmt: skip


def study_together_rows(ctx: Context, sizes: dict[str, Any]) -> list[dict[str, Any]]:
    from .gpu import timed_study

    seeds = sizes["together_seeds"]
    timed = timed_study(ctx, sizes, seeds=seeds, seeds_together=True)
    if timed is None:
        return [{"name": "study --seeds-together", "skipped": "no WikiText-2 (set MOE_DATA_DIR)"}]
    summary, wall = timed
    runs = [r for group in summary["runs"].values() for r in group]
    return [{
        "name": f"the spec's study, {seeds} seeds trained together: python -m moe_core study "
                f"--seeds {seeds} --seeds-together",
        "params": {"base": sizes["base"], "seeds": seeds, "precision": summary["precision"],
                   "compile": summary["compile"], "experiments": list(SPEC_EXPERIMENTS),
                   "epochs_trained": [len(r["metrics"]["train_losses"]) for r in runs]},
        "seconds": summarize([wall]),
        "target": {"seconds_at_most": 180, "met": None if ctx.smoke else wall <= 180},
    }]  # fmt: skip
