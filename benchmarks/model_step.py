"""Part 2: a whole training step (forward, backward, clip, AdamW), MoE against dense.

The models and optimizers are built by the engine's own `build_model`/`build_optimizer`
from the `baseline` experiment and the dense baseline's config, so the dense model's FFN
is as wide as one expert: the same active parameters per token.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from moe_core.config import base_config, dense_config, get_experiment_configs
from moe_core.experiments import build_model, build_optimizer, count_parameters
from moe_core.trainer import GRAD_CLIP

from .context import Context
from .harness import gpu_peak_flops, ratio_samples, summarize, times_summary

# name -> (preset, overrides): the spec's main() dimensions and the `tiny` preset.
FULL = {"spec": ("spec", {}), "tiny": ("tiny", {})}
SMOKE = {"micro": ("micro", {})}


def train_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """6 x active non-embedding parameters + attention (PaLM, appendix B), per token.

    Active: the router and `top_k` experts of each MoE layer, not all of them. The tied
    embedding counts through the LM head's matmul.
    """
    from moe_core.model import MoELayer

    cfg = model.config
    active = 0
    for name, p in model.named_parameters():
        if "pos_emb" in name:
            continue
        active += p.numel()
    for layer in model.moe_layers if hasattr(model, "moe_layers") else []:
        assert isinstance(layer, MoELayer)
        expert = layer.experts.w1[0].numel() + layer.experts.w2[0].numel()
        active -= (layer.num_experts - layer.top_k) * expert
    return 6 * active + 12 * cfg.n_layer * cfg.n_embd * seq_len


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
        moe_cfg = get_experiment_configs(base)["baseline"]
        variants, models = {}, {}
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, base.vocab_size, (base.batch_size, base.seq_len + 1), generator=g)
        x, y = data[:, :-1].to(ctx.device), data[:, 1:].to(ctx.device)
        for name, cfg, dense in (("moe", moe_cfg, False), ("dense", dense_config(base), True)):
            torch.manual_seed(base.seed)
            model = build_model(cfg, base, dense).to(ctx.device).train()
            optimizer = build_optimizer(model, cfg, base, fused=ctx.device.type == "cuda")
            forward = torch.compile(model) if ctx.compile else model
            variants[name] = make_step(model, optimizer, x, y, ctx, forward)
            models[name] = model
        # Whole steps at the spec dims take seconds: fewer rounds, one warm-up.
        samples = ctx.run(variants, repeats=max(ctx.repeats - 2, 1), warmup=1)
        tokens = base.batch_size * base.seq_len
        times = times_summary(samples)
        row = {
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
                name: train_flops_per_token(models[name], base.seq_len)
                * row["tokens_per_s"][name]
                / peak
                for name in ("moe", "dense")
            }
        rows.append(row)
    return {"rows": rows}
