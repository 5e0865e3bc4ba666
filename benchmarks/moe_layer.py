"""Part 1: one MoE layer, forward + backward, against the dense FFN of the same hidden size.

Router, dispatch, experts, combine and the balance loss are all inside the timed call; so
is the backward through every one of them. The dense FFN is the engine's `MLP` with the
expert's width, so top-1 does the same expert FLOPs (less what capacity drops) and top-2
twice. The two textbook dispatches of `moe_references` run on the same weights beside it.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from moe_core.model import MLP, MoELayer

from .context import Context
from .harness import ratio_samples, summarize, times_summary
from .moe_references import REFERENCES

FULL = dict(tokens=(1024, 4096, 8192), d=256, hidden=1024, experts=8)
SMOKE = dict(tokens=(256,), d=64, hidden=128, experts=4)
ROUTINGS = ((1, 1.25), (1, 2.5), (2, 1.25), (2, 2.5))  # (top_k, capacity factor)
# GShard's combine tensor is [tokens, experts, capacity], quadratic in the tokens; past
# this many elements its einsums take longer than the rest of the section, so it is
# reported as skipped (its ratio already grows with the tokens below this).
GSHARD_MAX_ELEMENTS = 32 * 2**20


def ffn_flops(tokens: int, d: int, hidden: int, top_k: int = 1) -> float:
    """Forward + backward multiply-adds x 2 of the FFN matmuls (3x the forward's)."""
    return 3 * 2 * tokens * top_k * 2 * d * hidden


def run(ctx: Context) -> dict[str, Any]:
    sizes = SMOKE if ctx.smoke else FULL
    d, hidden, E = sizes["d"], sizes["hidden"], sizes["experts"]
    rows = []
    gen = torch.Generator().manual_seed(0)
    for tokens, (top_k, cf) in itertools.product(sizes["tokens"], ROUTINGS):
        torch.manual_seed(0)
        moe = MoELayer(d, E, hidden, top_k=top_k, capacity_factor=cf).to(ctx.device)
        dense = MLP(d, hidden, dropout=0.0).to(ctx.device)
        x = torch.randn(1, tokens, d, generator=gen).to(ctx.device).requires_grad_()
        grad = torch.randn(1, tokens, d, generator=gen).to(ctx.device)

        def step(module, forward, x=x, grad=grad):
            def call():
                module.zero_grad(set_to_none=True)
                x.grad = None
                with ctx.autocast():
                    out = forward(x)
                # The same loss on both sides; the balance loss's backward is part of
                # a training step.
                out, balance = out if isinstance(out, tuple) else (out, 0.0)
                ((out.float() * grad).sum() + balance).backward()

            return call

        variants = {"moe": step(moe, moe), "dense": step(dense, dense)}
        skipped = {}
        for name, ref in REFERENCES.items():
            if name == "gshard_einsum" and tokens * E * moe.capacity(tokens) > GSHARD_MAX_ELEMENTS:
                skipped[name] = "combine tensor over 32M elements"
                continue
            variants[name] = step(moe, lambda x, ref=ref, moe=moe: ref(moe, x))
        samples = ctx.run(variants)
        row = {
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
            "dropped_fraction": float(moe.last_dropped) / (top_k * tokens),
        }
        if ctx.device.type == "cuda":
            from .harness import gpu_peak_flops

            peak = gpu_peak_flops(ctx.device)
            flops = ffn_flops(tokens, d, hidden, top_k)
            if peak:
                row["mfu"] = flops / row["times_s"]["moe"]["median"] / peak
        rows.append(row)
    return {"rows": rows}
