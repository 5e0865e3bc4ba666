"""Expert parallelism for an MoELayer: its experts split over the ranks of an expert-parallel
group, each token's rows sent to the rank that holds its expert and back with all-to-all
(torchtitan's expert_parallel.py, GShard's dispatch and combine). The model does not know
how many ranks it runs on: moe_core.parallel.parallelize shards each layer's experts and
sets its `parallel` to an ExpertDispatch; a layer without one computes every expert itself.

Two ways to send (the layer's expert capacity decides):
- with a capacity (training, the capacity presets): every expert's rows padded to the
  capacity, so the all-to-all has the same shape every step (a compiled step stays one
  graph); padding rows are zeros, and an FFN without biases maps them to zeros;
- without one (dropless training, evaluation): only the rows there are, the split sizes
  exchanged first (a host sync, as in MegaBlocks).

In training every rank routes its own shard of the global batch, and the capacity applies
to those tokens, as Megatron-Core and GShard apply it per rank: a run on several ranks
drops other assignments than one process training the whole batch at once (the docs give
the size of that difference). The statistics of routing, the balance loss's expert
fractions and the aux-loss-free bias see the whole batch: their counts are summed over
every rank (`reduce`). In evaluation every rank sees the same tokens, and nothing is summed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn as nn


def _all_to_all(
    x: torch.Tensor,
    out_splits: list[int] | None,
    in_splits: list[int] | None,
    group: dist.ProcessGroup | None,
) -> torch.Tensor:
    # autograd-aware and traceable: backward is the all-to-all the other way
    return funcol.all_to_all_single_autograd(x.contiguous(), out_splits, in_splits, group)  # type: ignore[arg-type]  # only with ep_size > 1, when ep_group is set


class ExpertDispatch:
    """What an MoELayer asks of the ranks it runs on: the sums of its routing statistics
    over the data-parallel world (training), and its experts' rows sent to the ranks that
    hold them (when `ep_size` > 1)."""

    def __init__(
        self,
        *,
        num_experts: int,
        world: dist.ProcessGroup,
        world_size: int,
        ep_group: dist.ProcessGroup | None,
        ep_size: int,
    ) -> None:
        if num_experts % ep_size:
            raise ValueError(f"{ep_size} expert-parallel ranks do not divide {num_experts} experts")
        self.num_experts, self.world, self.world_size = num_experts, world, world_size
        self.ep_group, self.ep_size = ep_group, ep_size
        self.local_experts = num_experts // ep_size

    @property
    def splits_experts(self) -> bool:
        return self.ep_size > 1

    def reduce(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """The tensors summed over every rank (one all-reduce), each in its own dtype; no
        gradient flows through the sums."""
        flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
        summed = funcol.all_reduce(flat, "sum", self.world)
        out, at = [], 0
        for t in tensors:
            out.append(summed[at : at + t.numel()].view_as(t).to(t.dtype))
            at += t.numel()
        return out

    def run_experts(
        self,
        experts: nn.Module,
        rows: torch.Tensor,
        expert_of_row: torch.Tensor,
        kept_counts: torch.Tensor,
        capacity: int | None,
    ) -> torch.Tensor:
        """The experts' output for `rows` ([R, C], grouped by expert, kept ones first, then
        the dropped ones, whose `expert_of_row` is num_experts): each kept row computed on
        the rank that holds its expert. Dropped rows come back as zeros."""
        if capacity is None:
            return self._variable(experts, rows, kept_counts)
        return self._padded(experts, rows, expert_of_row, kept_counts, capacity)

    def _padded(
        self,
        experts: nn.Module,
        rows: torch.Tensor,
        expert_of_row: torch.Tensor,
        kept_counts: torch.Tensor,
        cap: int,
    ) -> torch.Tensor:
        E, P, E_loc = self.num_experts, self.ep_size, self.local_experts
        R, C = rows.shape
        starts = torch.cumsum(kept_counts, 0) - kept_counts  # [E] first row of each expert
        valid = expert_of_row < E  # [R]
        expert = expert_of_row.clamp(max=E - 1)
        slot = torch.arange(R, device=rows.device) - starts.index_select(0, expert)  # [R]
        # Each kept row's place in the send buffer [E experts x cap slots]; dropped rows go
        # to one trash row past its end.
        dest = torch.where(valid, expert * cap + slot, E * cap)  # [R]
        send = rows.new_zeros(E * cap + 1, C).index_add(0, dest, rows)[: E * cap]
        recv = _all_to_all(send, None, None, self.ep_group)  # [P src, E_loc, cap, C]
        # Each local expert's rows from every source, contiguous: [E_loc, P * cap, C]
        x = recv.view(P, E_loc, cap, C).transpose(0, 1).reshape(E_loc * P * cap, C)
        ends = torch.arange(1, E_loc + 1, device=rows.device, dtype=torch.int32) * (P * cap)
        y = experts(x, ends).to(rows.dtype)  # [E_loc * P * cap, C]
        y = y.view(E_loc, P, cap, C).transpose(0, 1).reshape(E * cap, C)
        back = _all_to_all(y, None, None, self.ep_group)  # [E, cap, C]: this rank's rows
        back = torch.cat([back, back.new_zeros(1, C)])  # the trash row reads as zeros
        return back.index_select(0, dest)  # [R, C]

    def _variable(
        self, experts: nn.Module, rows: torch.Tensor, kept_counts: torch.Tensor
    ) -> torch.Tensor:
        E_loc, P = self.local_experts, self.ep_size
        R, C = rows.shape
        # How many rows each rank gets from this one, and sends back: read on the host.
        mine = kept_counts.view(P, E_loc)  # [dest rank, its local expert]
        theirs = funcol.all_to_all_single(kept_counts, None, None, self.ep_group).view(P, E_loc)  # type: ignore[arg-type]  # ep_group is set when experts are split
        send_splits = mine.sum(1).tolist()
        counts = theirs.tolist()
        recv_splits = [sum(row) for row in counts]
        kept = sum(send_splits)
        recv = _all_to_all(rows[:kept], recv_splits, send_splits, self.ep_group)
        # Arrived grouped by source, then expert; the experts want them by expert.
        src_starts = [sum(recv_splits[:p]) for p in range(P)]
        order: list[int]
        order, ends, total = [], [], 0
        for e in range(E_loc):
            for p in range(P):
                start = src_starts[p] + sum(counts[p][:e])
                order.extend(range(start, start + counts[p][e]))
                total += counts[p][e]
            ends.append(total)
        index = torch.tensor(order, dtype=torch.long, device=rows.device)
        x = recv.index_select(0, index)
        y = experts(x, torch.tensor(ends, dtype=torch.int32, device=rows.device)).to(rows.dtype)
        y = y.new_zeros(y.shape).index_copy(0, index, y)  # back in arrival order
        back = _all_to_all(y, send_splits, recv_splits, self.ep_group)  # [kept, C]
        return torch.cat([back, back.new_zeros(R - kept, C)])


def shard_experts(experts: nn.Module, ep_rank: int, ep_size: int) -> None:
    """Keep this rank's slice of an Experts module's weights (experts ep_rank * E/P onward),
    in place: every rank builds the whole model from one seed, so the slices are the
    single-process model's experts."""
    for name in ("w1", "w2"):
        full = getattr(experts, name)
        local = full.shape[0] // ep_size
        part = full.detach()[ep_rank * local : (ep_rank + 1) * local].clone()
        setattr(experts, name, nn.Parameter(part, requires_grad=full.requires_grad))
