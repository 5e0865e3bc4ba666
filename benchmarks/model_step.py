"""Part 2: a whole training step (forward, backward, clip, AdamW), MoE against dense.

The models and optimizers are built by the engine's own `build_model`/`build_optimizer`
from the `baseline` experiment and the dense baseline's config, so the dense model's FFN
is as wide as one expert: the same active parameters per token.

At the spec's dims (and in the smoke run) the routing options' presets
(docs/routing-options.md) train beside them in the same rounds, each a row of its own
against the same dense model: `zloss`, `aux_free`, `shared_expert`, `dropless`,
`fine_grained` and `jitter`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from moe_core.config import base_config, dense_config, get_experiment_configs
from moe_core.model import compile_ready
from moe_core.runner import build_model, build_optimizer, count_parameters
from moe_core.sizing import train_flops_per_token
from moe_core.trainer import GRAD_CLIP

from .context import Context
from .harness import gpu_peak_flops, ratio_samples, summarize, times_summary

# name -> (preset, overrides): the spec's main() dimensions and the `tiny` preset.
FULL: dict[str, tuple[str, dict[str, Any]]] = {"spec": ("spec", {}), "tiny": ("tiny", {})}
SMOKE: dict[str, tuple[str, dict[str, Any]]] = {"micro": ("micro", {})}
# The routing options timed beside baseline and dense at these sizes: name -> (the
# experiment preset, ExperimentConfig overrides on top of it).
OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "zloss": ("zloss", {}),
    "aux_free": ("aux_free", {}),
    "shared_expert": ("shared_expert", {}),
    "dropless": ("dropless", {}),
    "fine_grained": ("fine_grained", {}),
    "jitter": ("jitter", {}),  # Switch Transformer, sec. 2.4
}
OPTIONS_AT = ("spec", "micro")


def make_step(model, optimizer, x, y, ctx: Context, forward=None):
    forward = forward or model

    def step():
        with ctx.autocast():
            logits, aux = forward(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.reshape(-1)) + aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()

    return step


def run(ctx: Context) -> dict[str, Any]:
    rows = []
    for label, (preset, overrides) in (SMOKE if ctx.smoke else FULL).items():
        base = base_config(preset, **overrides)
        presets = get_experiment_configs(base)
        moe_cfg = presets["baseline"]
        options = {
            name: presets[p].model_copy(update=extra)
            for name, (p, extra) in (OPTIONS.items() if label in OPTIONS_AT else ())
        }
        variants, models, built = {}, {}, {}
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, base.vocab_size, (base.batch_size, base.seq_len + 1), generator=g)
        x, y = data[:, :-1].to(ctx.device), data[:, 1:].to(ctx.device)
        builds = [("moe", moe_cfg, False), ("dense", dense_config(base), True)]
        for name, cfg, dense in builds + [(n, c, False) for n, c in options.items()]:
            torch.manual_seed(base.seed)
            model = build_model(cfg, base, dense).to(ctx.device).train()
            optimizer = build_optimizer(model, cfg, base, fused=ctx.device.type == "cuda")
            if ctx.compile:
                compile_ready()
            forward = torch.compile(model) if ctx.compile else model
            variants[name] = make_step(model, optimizer, x, y, ctx, forward)
            models[name], built[name] = model, (cfg, dense)
        # Whole steps at the spec dims take seconds: fewer rounds, one warm-up.
        samples = ctx.run(variants, repeats=max(ctx.repeats - 2, 1), warmup=1)
        tokens = base.batch_size * base.seq_len
        times = times_summary(samples)
        row: dict[str, Any] = {
            "name": f"{label}: baseline MoE vs dense",
            "params": dict(
                preset=preset,
                seq_len=base.seq_len,
                batch_size=base.batch_size,
                hidden_dim=base.hidden_dim,
                num_layers=base.num_layers,
                moe_layers=base.moe_layers,
                num_experts=base.num_experts,
                top_k=moe_cfg.top_k,
                capacity_factor=moe_cfg.capacity_factor,
                moe_parameters=count_parameters(models["moe"]),
                dense_parameters=count_parameters(models["dense"]),
            ),  # fmt: skip
            # tokens/s of MoE over tokens/s of dense = dense time over MoE time
            "ratio": summarize(ratio_samples(samples, "dense", "moe")),
            "ratio_of": "moe tokens/s / dense tokens/s",
            "tokens_per_s": {name: tokens / times[name]["median"] for name in ("moe", "dense")},
            "times_s": times,
        }
        peak = gpu_peak_flops(ctx.device) if ctx.device.type == "cuda" else None
        if peak:
            row["mfu"] = {
                name: train_flops_per_token(built[name][0], base, dense=built[name][1])
                * row["tokens_per_s"][name]
                / peak
                for name in ("moe", "dense")
            }
        rows.append(row)
        for name, cfg in options.items():
            rows.append({
                "name": f"{label}: {name} vs dense",
                "params": {**row["params"], "option": name,
                           **{k: v for k, v in cfg.to_dict().items()
                              if v != moe_cfg.to_dict()[k] and k != "name"},
                           "moe_parameters": count_parameters(models[name])},
                "ratio": summarize(ratio_samples(samples, "dense", name)),
                "ratio_of": f"{name} tokens/s / dense tokens/s",
                "vs_baseline": summarize(ratio_samples(samples, "moe", name)),
                "tokens_per_s": {n: tokens / times[n]["median"] for n in (name, "moe", "dense")},
                "times_s": {n: times[n] for n in (name, "moe", "dense")},
            })  # fmt: skip
    return {"rows": rows}
