"""Routing statistics: what each MoE layer's forward returns (model.RoutingStats), summed on
the device over an epoch's training steps or over an evaluation pass, and summarised per
layer once, at the end, as the records' `LayerRouting` (one host read per epoch, not per
step).

In a summary, `entropy` is the Shannon entropy of the usage distribution in nats, not
normalised: ln(num_experts) (2.079 for 8 experts) is perfect balance, 0 is collapse onto
one. `min_usage`/`max_usage`/`usage` are percentages of assignments (before capacity);
`dropped` is the fraction of assignments over capacity (in evaluation: over the training
capacity, which evaluation itself does not apply). `imbalance` is max load / mean load - 1
(torchtitan's; 0 is perfect balance, num_experts - 1 collapse): in training the mean over
the epoch's steps, with the worst step's as `max_imbalance`; in evaluation that of the whole
pass's counts, so that it does not depend on the eval batch size. Training also has
`max_step_load` (the largest share, in percent, one expert took of any single step's
assignments: epoch sums hide a router that swings from step to step), `pad_ratio` (the share
of capacity slots left unused, mean over steps; 0 when dropless) and `z_loss` (the router
z-loss, unweighted, mean over steps).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .records import EvalLayerRouting, LayerRouting
from .routing import RoutingStats


def layer_usage(layer: int, counts: torch.Tensor, dropped: torch.Tensor) -> EvalLayerRouting:
    """A layer's summary from its assignment counts per expert and the count dropped."""
    counts = counts.double().cpu()
    n = counts.sum().item()
    p = counts / max(n, 1)
    used = p[p > 0]
    return {
        "layer": layer,
        "entropy": -(used * used.log()).sum().item(),
        "max_entropy": math.log(len(counts)),
        "min_usage": 100 * p.min().item(),
        "max_usage": 100 * p.max().item(),
        "usage": (100 * p).tolist(),
        "dropped": dropped.item() / max(n, 1),
        "imbalance": len(counts) * p.max().item() - 1 if n else 0.0,
    }


class TrainingRouting:
    """Per MoE layer, over an epoch's training steps: assignments per expert, dropped
    assignments, the worst step's load share and imbalance, and the sums of each step's
    imbalance, pad ratio and z-loss. Its state goes into a mid-epoch checkpoint."""

    def __init__(self, experts: list[int], device: torch.device | str) -> None:
        self.usage = [torch.zeros(e, dtype=torch.long, device=device) for e in experts]
        self.dropped = [torch.zeros((), dtype=torch.long, device=device) for _ in experts]
        self.max_load = [torch.zeros((), device=device) for _ in experts]
        self.sums = [torch.zeros(3, device=device) for _ in experts]  # imbalance, pad, z
        self.max_imbalance = [torch.zeros((), device=device) for _ in experts]

    def add(self, stats: list[RoutingStats]) -> None:
        """One step's statistics, one entry per MoE layer; no sync."""
        for i, s in enumerate(stats):
            self.usage[i] += s.counts
            self.dropped[i] += s.dropped
            share = s.counts.max() / s.counts.sum()
            self.max_load[i] = torch.maximum(self.max_load[i], share)
            imbalance = share * s.counts.numel() - 1  # max / mean - 1
            self.max_imbalance[i] = torch.maximum(self.max_imbalance[i], imbalance)
            self.sums[i] += torch.stack([imbalance, s.pad_ratio, s.z_loss.detach()])

    def summary(self, layers: list[int], steps: int) -> list[LayerRouting]:
        out: list[LayerRouting] = []
        for i, layer in enumerate(layers):
            stats = layer_usage(layer, self.usage[i], self.dropped[i])
            imbalance, pad_ratio, z_loss = (self.sums[i].double().cpu() / max(steps, 1)).tolist()
            out.append({
                **stats,
                "imbalance": imbalance,
                "max_step_load": 100 * self.max_load[i].item(),
                "max_imbalance": self.max_imbalance[i].item(),
                "pad_ratio": pad_ratio,
                "z_loss": z_loss,
            })  # fmt: skip
        return out

    # The names are a checkpoint format: those of checkpoints written before this class.
    def state(self) -> dict[str, Any]:
        return {
            "usage": [u.cpu() for u in self.usage],
            "dropped": [d.cpu() for d in self.dropped],
            "max_load": [m.cpu() for m in self.max_load],
            "routing": [r.cpu() for r in self.sums],
            "max_imbalance": [m.cpu() for m in self.max_imbalance],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str) -> TrainingRouting:
        routing = cls([len(u) for u in state["usage"]], device)
        for name, attribute in [("usage", "usage"), ("dropped", "dropped"),
                                ("max_load", "max_load"), ("routing", "sums"),
                                ("max_imbalance", "max_imbalance")]:  # fmt: skip
            if state.get(name):  # a checkpoint from before a statistic existed: zeros
                setattr(routing, attribute, [t.to(device) for t in state[name]])
        return routing


class EvalRouting:
    """Per MoE layer, over an evaluation pass: assignments per expert, those over the
    training capacity, router probabilities and the token-weighted z-loss, from which the
    pass's balance loss and z-loss are those of all its tokens at once."""

    def __init__(self, experts: list[int], device: torch.device | str) -> None:
        self.counts = [torch.zeros(e, dtype=torch.long, device=device) for e in experts]
        self.over = [torch.zeros((), dtype=torch.long, device=device) for _ in experts]
        self.prob_sums = [torch.zeros(e, device=device) for e in experts]
        self.z_sums = [torch.zeros((), device=device) for _ in experts]

    def add(self, stats: list[RoutingStats], tokens: int) -> None:
        for i, s in enumerate(stats):
            self.counts[i] += s.counts
            self.over[i] += s.over_capacity
            self.prob_sums[i] += s.prob_sum
            self.z_sums[i] += tokens * s.z_loss

    def z_losses(self, tokens: int) -> list[torch.Tensor]:
        return [z / tokens for z in self.z_sums]

    def summary(self, layers: list[int]) -> list[EvalLayerRouting]:
        return [
            layer_usage(layer, counts, over)
            for layer, counts, over in zip(layers, self.counts, self.over, strict=True)
        ]
