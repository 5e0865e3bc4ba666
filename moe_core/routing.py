"""The routing of an MoE layer, from its MoEConfig alone (moe_core.model.MoELayer holds the
weights): expert capacity, the choice of experts, the assignment of token rows to expert
groups, the combine, the Switch balance loss, the aux-loss-free bias and the statistics a
forward returns. Every tensor may carry a leading replica dimension: moe_core.stacked routes
R seeds' replicas of one layer in one call, replica r's expert e being group r * E + e.

References: Switch Transformer (arXiv:2101.03961) for capacity and the balance loss,
GShard (arXiv:2006.16668) for top-2, ST-MoE (arXiv:2202.08906) for the z-loss, DeepSeek-V3
(arXiv:2412.19437, sec. 2.1.2) for the expert bias.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MoEConfig

if TYPE_CHECKING:  # torch.distributed only where a run is parallel
    from .expert_parallel import ExpertDispatch


class RoutingStats(NamedTuple):
    """What one MoELayer forward computed about its routing, returned with its output. All
    stay on the device (reading one costs a sync; the Trainer sums them and reads the sums
    once per epoch)."""

    balance_loss: torch.Tensor  # () unweighted load-balancing loss, in the graph
    z_loss: torch.Tensor  # () router z-loss, unweighted; in the graph in training only
    counts: torch.Tensor  # [E] long: assignments per expert, before capacity
    dropped: torch.Tensor  # () long: assignments this forward dropped
    over_capacity: torch.Tensor  # () long: assignments over the *training* capacity
    prob_sum: torch.Tensor  # [E] router probabilities summed over tokens
    pad_ratio: torch.Tensor  # () share of capacity slots left unused (0: no capacity)


class Assignments(NamedTuple):
    """Where a forward's assignments go (MoERouting.assign), for R replicas side by side
    (R = 1 but in moe_core.stacked): replica r's expert e is row group r * E + e."""

    counts: torch.Tensor  # [R, E] long: assignments per expert, before capacity
    kept_counts: torch.Tensor  # [R, E] long: those within capacity
    sort_key: torch.Tensor  # [R*k*N] each assignment's group; R*E: dropped
    order: torch.Tensor  # [R*k*N] assignment ids, grouped (stable: priority order within)
    offsets: torch.Tensor  # [R*E] int32 row ends of the groups
    token_ids: torch.Tensor  # [R*k*N] the token (row of x_flat) of each sorted row
    kept: torch.Tensor | None  # [R*k*N] the sorted rows kept; None: every one


class MoERouting(nn.Module):
    """The routing of an MoE layer, from its MoEConfig alone: capacity, the choice of
    experts, the assignment of rows to them, the combine, the balance loss and the
    statistics; every tensor may carry a leading replica dimension. MoELayer holds the
    weights; moe_core.stacked's layer holds R replicas' weights and routes them alike."""

    expert_bias: torch.Tensor | None

    def __init__(self, moe: MoEConfig):
        super().__init__()
        self.config = moe
        self.num_experts, self.top_k = moe.num_experts, moe.top_k

    def capacity(self, num_tokens: int, capacity_factor: float | None = None) -> int:
        # Switch Transformer: expert capacity = capacity_factor * tokens / experts.
        factor = self.config.capacity_factor if capacity_factor is None else capacity_factor
        return math.ceil(factor * num_tokens / self.num_experts)

    def _forward_capacity(self, num_tokens: int) -> int | None:
        """This forward's expert capacity; None: no capacity, nothing can be dropped."""
        if self.training:
            # MegaBlocks: dropless, the experts' groups are as large as their loads
            return None if self.config.dropless else self.capacity(num_tokens)
        if self.config.eval_capacity_factor is not None:
            return self.capacity(num_tokens, self.config.eval_capacity_factor)
        return None

    def balance_loss(
        self, counts: torch.Tensor, prob_sum: torch.Tensor, tokens: int | None = None
    ) -> torch.Tensor:
        """Load-balancing loss, Switch Transformer eq. (4)-(6): E * sum_e f_e * P_e, where
        f_e is the fraction of assignments routed to expert e and P_e the mean router
        probability for e, from counts and probability sums over any number of tokens
        (`tokens`: those prob_sum is over; by default those of counts). It is 1.0 at
        perfect balance and E when all go to one expert."""
        total = counts.sum(-1, keepdim=True)  # [..., 1]
        f = counts.to(prob_sum.dtype) / total  # [..., E]
        P = prob_sum / (total / self.top_k if tokens is None else tokens)  # [..., E]
        return self.num_experts * (f * P).sum(-1)

    @torch.no_grad()
    def update_expert_bias(self, counts: torch.Tensor) -> None:
        """DeepSeek-V3, sec. 2.1.2: after each step, raise the bias of every expert that
        took fewer than the mean of the step's assignments (`counts`, this layer's
        RoutingStats.counts) by the rate and lower every busier one's by it. No sync."""
        if self.expert_bias is None:
            return
        load = counts.to(self.expert_bias.dtype)  # [..., E]
        step = torch.sign(load.mean(-1, keepdim=True) - load)
        self.expert_bias += self.config.aux_free_bias_rate * step

    def choose(
        self, probs: torch.Tensor, expert_bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen experts, gates), each [..., N, k], from router probabilities [..., N, E]."""
        if expert_bias is None:
            gates, chosen = probs.topk(self.top_k, dim=-1)  # [N, k]
        else:
            # The bias chooses the experts; the gates stay the router's probabilities.
            chosen = (probs + expert_bias).topk(self.top_k, dim=-1).indices  # [N, k]
            gates = probs.gather(-1, chosen)  # [N, k]
        # Top-1 keeps the raw probability as the gate (Switch): renormalising it would make
        # it 1.0 and cut the router off from the task loss's gradient. For k > 1 the gates
        # are renormalised to sum to 1 (GShard, Mixtral), so the output's scale does not
        # depend on how peaked the router is.
        if self.top_k > 1:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        return chosen, gates

    def assign(self, chosen: torch.Tensor, cap: int | None) -> Assignments:
        """Each replica's assignments (chosen: [R, N, k]) in priority order: every token's
        first choice, then every second choice, so capacity drops second choices before any
        first choice. Assignment a of a replica is its token a % N's (a // N)-th choice."""
        R, N, k = chosen.shape
        E, device = self.num_experts, chosen.device
        flat_expert = chosen.transpose(1, 2).reshape(R, k * N)  # [R, k*N]
        group = flat_expert if R == 1 else flat_expert + E * torch.arange(R, device=device)[:, None]
        if cap is None or cap >= N:  # nothing can overflow: every assignment is kept
            counts = torch.zeros(R, E, dtype=torch.long, device=device)
            counts.scatter_add_(1, flat_expert, torch.ones_like(flat_expert))  # [R, E]
            kept_counts, sort_key, kept = counts, group.reshape(-1), None
        else:
            # An assignment's slot at its expert: how many assignments before it, in
            # priority order, chose the same expert. It is kept if the slot is < capacity.
            one_hot = F.one_hot(flat_expert, E)  # [R, k*N, E]
            slots = one_hot.cumsum(1)  # [R, k*N, E]
            counts = slots[:, -1]  # [R, E]
            slot = slots.gather(2, flat_expert.unsqueeze(2)).squeeze(2) - 1  # [R, k*N]
            kept_counts = counts.clamp(max=cap)  # [R, E]
            # Dropped assignments sort after every kept one (key R*E), out of every group.
            sort_key = group.masked_fill(slot >= cap, R * E).reshape(-1)  # [R*k*N]
            kept = torch.arange(R * k * N, device=device) < kept_counts.sum()  # sorted
        # A stable sort keeps the priority order within each expert's group.
        order = torch.sort(sort_key, stable=True).indices  # [R*k*N] assignment ids
        offsets = torch.cumsum(kept_counts.reshape(-1), 0).to(torch.int32)  # [R*E] row ends
        if k == 1:
            token_ids = order  # [R*k*N]
        else:
            token_ids = order % N if R == 1 else order // (k * N) * N + order % N
        return Assignments(counts, kept_counts, sort_key, order, offsets, token_ids, kept)

    @staticmethod
    def rows(x_flat: torch.Tensor, a: Assignments) -> torch.Tensor:
        """The experts' input rows [R*k*N, C], grouped, from the tokens x_flat [R*N, C]."""
        # index_select rather than x_flat[token_ids]: its backward is an index_add, not
        # the slower accumulating index_put of advanced indexing.
        rows = x_flat.index_select(0, a.token_ids)  # [R*k*N, C]
        if a.kept is not None:
            # The dropped rows' gradient comes back through no expert: make it zero here
            rows = torch.where(a.kept.unsqueeze(1), rows, 0.0)
        return rows

    @staticmethod
    def combine(
        x_flat: torch.Tensor, expert_out: torch.Tensor, gates: torch.Tensor, a: Assignments
    ) -> torch.Tensor:
        """Each token's gate-weighted expert outputs summed: [R*N, C] (gates: [R, N, k])."""
        if a.kept is not None:
            # A dropped assignment contributes nothing: its token passes through the
            # block's residual connection unchanged (plus the shared experts' output). Its
            # row is masked before the gate multiplies it, so that its gate's gradient is
            # zero too (the row itself holds whatever no expert wrote there).
            expert_out = torch.where(a.kept.unsqueeze(1), expert_out, 0.0)
        flat_gate = gates.transpose(1, 2).reshape(-1)  # [R*k*N] in assignment order
        weighted = expert_out * flat_gate.index_select(0, a.order).unsqueeze(1).to(expert_out.dtype)
        return torch.zeros_like(x_flat, dtype=weighted.dtype).index_add_(0, a.token_ids, weighted)

    def statistics(
        self, logits: torch.Tensor, probs: torch.Tensor, counts: torch.Tensor,
        kept_counts: torch.Tensor, cap: int | None, ep: ExpertDispatch | None = None,
    ) -> RoutingStats:  # fmt: skip
        """The forward's RoutingStats, from router logits and probs [..., N, E] and the
        counts [..., E]; with `ep`, summed over the ranks."""
        E, N = self.num_experts, logits.size(-2)
        prob_sum = probs.sum(dim=-2)  # [..., E]
        # ST-MoE eq. (5): the mean over tokens of the squared log-sum-exp of the router
        # logits. Always computed (it is a statistic too); in the graph only in training.
        z_logits = logits if self.training else logits.detach()
        z_loss = torch.logsumexp(z_logits, dim=-1).square().mean(-1)
        train_cap = N if self.config.dropless else self.capacity(N)
        over = (counts - counts.clamp(max=train_cap)).sum(-1)
        local_prob_sum, ranks = prob_sum, 1
        if ep is not None and self.training:
            # This rank's tokens are a shard of the batch: the statistics are the batch's,
            # summed over the ranks. The balance loss takes the batch's expert fractions and
            # this shard's probabilities: averaged over the ranks (as their gradients are),
            # it is the whole batch's loss, value and gradient. The z-loss reads as the
            # batch's mean; its gradient stays this shard's.
            counts, kept_counts, over, prob_sum, z_sum = ep.reduce(
                counts, kept_counts, over, prob_sum, z_loss
            )
            z_loss = z_loss + (z_sum / ep.world_size - z_loss).detach()
            ranks = ep.world_size
        return RoutingStats(
            balance_loss=self.balance_loss(counts, local_prob_sum, tokens=N),
            z_loss=z_loss,
            counts=counts.detach(),
            dropped=(counts - kept_counts).sum(-1).detach(),
            over_capacity=over.detach(),
            prob_sum=prob_sum.detach(),
            # Capacity slots (E x cap) left unused; dropless groups have no slots to leave.
            pad_ratio=torch.zeros(counts.shape[:-1], device=counts.device)
            if cap is None
            else 1.0 - kept_counts.sum(-1).detach() / (E * cap * ranks),
        )


def weighted_aux_loss(
    moe: MoEConfig | None,
    balance_losses: list[torch.Tensor],
    z_losses: list[torch.Tensor],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The weighted aux loss from the MoE layers' balance losses and, with a
    `router_z_loss` coefficient, their router z-losses (zero when dense); each loss () or,
    for replicas side by side, [R]."""
    if not balance_losses:
        return torch.zeros((), device=device)
    assert moe is not None, "MoE layers in a model without an MoEConfig"
    # Mean over MoE layers: the aux term keeps one scale (aux_weight at perfect
    # balance) however many layers are MoE.
    aux = moe.aux_weight * torch.stack(balance_losses).mean(0)
    if moe.router_z_loss > 0:
        aux = aux + moe.router_z_loss * torch.stack(z_losses).mean(0)
    return aux
