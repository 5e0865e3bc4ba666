"""Two textbook MoE dispatches, kept here (and only here) to compare the engine against.

Both run the engine's own `MoELayer` weights and routing rules (top-1 raw gate, top-k
renormalised gates, capacity filled by priority: every first choice before any second
choice, in token order), so they return the same output as `MoELayer.forward`; the smoke
test checks that. They differ only in how tokens reach the experts and come back:

- `masked_loop`: `for e: idx = where(choice == e)`, the loop most tutorials write; one
  boolean mask, gather and scatter per expert, with a device sync per expert on a GPU.
- `gshard_einsum`: GShard's dense one-hot dispatch (Lepikhin et al. 2020, Algorithm 1): a
  `[tokens, experts, capacity]` combine tensor, einsums in and out. Its dispatch costs
  tokens x experts x capacity x d multiply-adds, which grows with the square of the tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moe_core.model import MoELayer


def _route(layer: MoELayer, x_flat: torch.Tensor):
    probs = F.softmax(layer.router(x_flat), dim=-1)  # [N, E]
    gates, chosen = probs.topk(layer.top_k, dim=-1)  # [N, k]
    if layer.top_k > 1:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return probs, gates, chosen


def _balance_loss(layer: MoELayer, probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    E = layer.num_experts
    counts = torch.bincount(chosen.reshape(-1), minlength=E)
    f = counts.to(probs.dtype) / chosen.numel()
    return E * torch.sum(f * probs.mean(dim=0))


def masked_loop(layer: MoELayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, C = x.size()
    x_flat = x.reshape(-1, C)  # [N, C]
    probs, gates, chosen = _route(layer, x_flat)
    cap = layer.capacity(x_flat.size(0))
    w1, w2 = layer.experts.w1, layer.experts.w2
    out = torch.zeros_like(x_flat)
    for e in range(layer.num_experts):
        # (choice, token) pairs in row-major order of [k, N]: first choices first.
        slot, token = torch.where(chosen.t() == e)
        slot, token = slot[:cap], token[:cap]
        h = F.gelu(x_flat[token] @ w1[e]) @ w2[e]  # [n_e, C]
        out = out.index_add(0, token, h * gates[token, slot].unsqueeze(1))
    return out.view(B, T, C), _balance_loss(layer, probs, chosen)


def gshard_einsum(layer: MoELayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, C = x.size()
    x_flat = x.reshape(-1, C)  # [N, C]
    N, E = x_flat.size(0), layer.num_experts
    probs, gates, chosen = _route(layer, x_flat)
    cap = layer.capacity(N)
    combine = x_flat.new_zeros(N, E, cap)  # [N, E, cap]
    filled = torch.zeros(E, dtype=torch.long, device=x.device)  # slots taken by earlier choices
    for j in range(layer.top_k):
        mask = F.one_hot(chosen[:, j], E)  # [N, E]
        position = torch.cumsum(mask, dim=0) - 1 + filled  # [N, E] slot in the expert
        filled = filled + mask.sum(dim=0)
        mask = mask * (position < cap)
        slot = F.one_hot((position * mask).sum(dim=1), cap).to(x.dtype)  # [N, cap]
        combine = combine + (gates[:, j, None] * mask).unsqueeze(2) * slot.unsqueeze(1)
    dispatch = (combine > 0).to(x.dtype)  # [N, E, cap]
    expert_in = torch.einsum("nec,nm->ecm", dispatch, x_flat)  # [E, cap, C]
    h = F.gelu(torch.einsum("ecm,emh->ech", expert_in, layer.experts.w1))  # [E, cap, H]
    expert_out = torch.einsum("ech,ehm->ecm", h, layer.experts.w2)  # [E, cap, C]
    out = torch.einsum("nec,ecm->nm", combine, expert_out)  # [N, C]
    return out.view(B, T, C), _balance_loss(layer, probs, chosen)


REFERENCES = {"masked_loop": masked_loop, "gshard_einsum": gshard_einsum}
