"""Part 1: one MoE layer, forward + backward, against the dense FFN of the same hidden size.

Router, dispatch, experts, combine and the balance loss are all inside the timed call; so
is the backward through every one of them. The dense FFN is the engine's `MLP` with the
expert's width, so top-1 does the same expert FLOPs (less what capacity drops) and top-2
twice. The two textbook dispatches of `moe_references` run on the same weights beside it.

After those rows, the routing options that change the layer's work (docs/routing-options.md),
each timed against the top-1, capacity 1.25 layer side by side with it: dropless routing
(the same weights, no capacity) and fine-grained experts (FINE_GRAINED_SPLIT times the
experts, that much narrower, top-FINE_GRAINED_SPLIT: the same expert FLOPs per token).
Their `params` name that capacity layer (the ratio's denominator), `option` their own.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from moe_core.config import MoEConfig
from moe_core.model import MLP, MoELayer
from moe_core.presets import FINE_GRAINED_SPLIT

from .context import Context
from .harness import ratio_samples, summarize, times_summary
from .moe_references import REFERENCES

FULL: dict[str, Any] = dict(tokens=(1024, 4096, 8192), d=256, hidden=1024, experts=8)
SMOKE: dict[str, Any] = dict(tokens=(256,), d=64, hidden=128, experts=4)
ROUTINGS = ((1, 1.25), (1, 2.5), (2, 1.25), (2, 2.5))  # (top_k, capacity factor)
# GShard's combine tensor is [tokens, experts, capacity], quadratic in the tokens; past
# this many elements its einsums take longer than the rest of the section, so it is
# reported as skipped (its ratio already grows with the tokens below this).
GSHARD_MAX_ELEMENTS = 32 * 2**20


def ffn_flops(tokens: int, d: int, hidden: int, top_k: int = 1) -> float:
    """Forward + backward multiply-adds x 2 of the FFN matmuls (3x the forward's)."""
    return 3 * 2 * tokens * top_k * 2 * d * hidden


def dropped_fraction(layer: MoELayer, x: torch.Tensor) -> float:
    """The share of `x`'s assignments a training forward of `layer` drops."""
    with torch.no_grad():
        _, stats = layer.train()(x)
    return stats.dropped.item() / (layer.top_k * x[0].size(0))


def training_call(ctx: Context, module, forward, x: torch.Tensor, grad: torch.Tensor):
    """A forward + backward of `forward(x)` (module's parameters' gradients cleared first)."""

    def call():
        module.zero_grad(set_to_none=True)
        x.grad = None
        with ctx.autocast():
            out = forward(x)
        # The same loss on both sides; the balance loss's backward is part of a training step.
        out, balance = out if isinstance(out, tuple) else (out, 0.0)
        balance = getattr(balance, "balance_loss", balance)  # the engine's RoutingStats
        ((out.float() * grad).sum() + balance).backward()

    return call


def run(ctx: Context) -> dict[str, Any]:
    sizes = SMOKE if ctx.smoke else FULL
    d, hidden, E = sizes["d"], sizes["hidden"], sizes["experts"]
    rows = []
    gen = torch.Generator().manual_seed(0)
    for tokens, (top_k, cf) in itertools.product(sizes["tokens"], ROUTINGS):
        torch.manual_seed(0)
        moe = MoELayer(
            d, MoEConfig(num_experts=E, expert_dim=hidden, top_k=top_k, capacity_factor=cf)
        ).to(ctx.device)
        dense = MLP(d, hidden, dropout=0.0).to(ctx.device)
        x = torch.randn(1, tokens, d, generator=gen).to(ctx.device).requires_grad_()
        grad = torch.randn(1, tokens, d, generator=gen).to(ctx.device)

        def step(module, forward, x=x, grad=grad):
            return training_call(ctx, module, forward, x, grad)

        variants = {"moe": step(moe, moe), "dense": step(dense, dense)}
        skipped = {}
        for name, ref in REFERENCES.items():
            if name == "gshard_einsum" and tokens * E * moe.capacity(tokens) > GSHARD_MAX_ELEMENTS:
                skipped[name] = "combine tensor over 32M elements"
                continue
            variants[name] = step(moe, lambda x, ref=ref, moe=moe: ref(moe, x))
        samples = ctx.run(variants)
        row: dict[str, Any] = {
            "name": f"tokens={tokens} top{top_k} cf={cf}",
            "params": dict(
                tokens=tokens, d=d, hidden=hidden, experts=E, top_k=top_k, capacity_factor=cf
            ),  # fmt: skip
            "ratio": summarize(ratio_samples(samples, "moe", "dense")),
            "ratio_of": "moe / dense (time)",
            "references": {
                name: summarize(ratio_samples(samples, name, "dense"))
                for name in REFERENCES
                if name in samples
            },
            "skipped": skipped,
            "times_s": times_summary(samples),
            "dropped_fraction": dropped_fraction(moe, x),
        }
        if ctx.device.type == "cuda":
            from .harness import gpu_peak_flops

            peak = gpu_peak_flops(ctx.device)
            flops = ffn_flops(tokens, d, hidden, top_k)
            if peak:
                row["mfu"] = flops / row["times_s"]["moe"]["median"] / peak
        rows.append(row)
    rows += option_rows(ctx, sizes, gen)
    return {"rows": rows}


def option_rows(ctx: Context, sizes: dict[str, Any], gen: torch.Generator) -> list[dict[str, Any]]:
    """Dropless and fine-grained layers against the top-1 capacity-1.25 layer."""
    d, hidden, E = sizes["d"], sizes["hidden"], sizes["experts"]
    split, cf = FINE_GRAINED_SPLIT, 1.25
    rows = []
    for tokens in sizes["tokens"]:
        torch.manual_seed(0)
        layers: dict[str, torch.nn.Module] = {
            "capacity": MoELayer(
                d, MoEConfig(num_experts=E, expert_dim=hidden, top_k=1, capacity_factor=cf)
            ),
            "dropless": MoELayer(
                d, MoEConfig(num_experts=E, expert_dim=hidden, top_k=1, dropless=True)
            ),
            # capacity grows with top_k, as the fine_grained preset's does
            "fine_grained": MoELayer(
                d,
                MoEConfig(
                    num_experts=split * E,
                    expert_dim=hidden // split,
                    top_k=split,
                    capacity_factor=cf * split,
                ),
            ),  # fmt: skip
            "dense": MLP(d, hidden, dropout=0.0),
        }
        layers["dropless"].load_state_dict(layers["capacity"].state_dict())
        x = torch.randn(1, tokens, d, generator=gen).to(ctx.device).requires_grad_()
        grad = torch.randn(1, tokens, d, generator=gen).to(ctx.device)

        variants = {}
        for name, layer in layers.items():
            layer.to(ctx.device)
            variants[name] = training_call(ctx, layer, layer, x, grad)
        samples = ctx.run(variants)
        times = times_summary(samples)
        for option, own in (
            ("dropless", dict(dropless=True)),
            (
                "fine_grained",
                dict(
                    experts=split * E,
                    hidden=hidden // split,
                    top_k=split,
                    capacity_factor=cf * split,
                ),
            ),  # fmt: skip
        ):
            layer = layers[option]
            assert isinstance(layer, MoELayer)
            rows.append({
                "name": f"tokens={tokens} {option} vs top1 cf={cf}",
                "params": dict(tokens=tokens, d=d, hidden=hidden, experts=E, top_k=1,
                               capacity_factor=cf),
                "option": {"name": option, **own},
                "ratio": summarize(ratio_samples(samples, option, "capacity")),
                "ratio_of": f"{option} / capacity layer (time)",
                "vs_dense": summarize(ratio_samples(samples, option, "dense")),
                "references": {},
                "skipped": {name: "an option row: the engine against itself" for name in REFERENCES},
                "times_s": {k: times[k] for k in (option, "capacity", "dense")},
                "dropped_fraction": dropped_fraction(layer, x),
            })  # fmt: skip
    return rows
