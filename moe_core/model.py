"""
Full definition of a GPT language model with Mixture-of-Experts feed-forward layers,
all of it in this single file, built bottom-up:
Router -> Experts -> MoELayer -> MLP -> CausalSelfAttention -> Block -> GPTConfig -> GPT.

References:
- GPT-2 / nanoGPT for the transformer (pre-LayerNorm, learned positions, tied embeddings).
- Switch Transformer (Fedus, Zoph, Shazeer 2021, arXiv:2101.03961) for top-1 routing,
  expert capacity and the load-balancing loss.
- GShard (Lepikhin et al. 2020, arXiv:2006.16668) for top-2 routing.
- Routing options, each off by default (docs/routing-options.md): dropless routing
  (MegaBlocks, Gale et al. 2022, arXiv:2211.15841), router z-loss (ST-MoE, Zoph et al. 2022,
  arXiv:2202.08906), router jitter (Switch Transformer, sec. 2.4), shared experts
  (DeepSeekMoE, Dai et al. 2024, arXiv:2401.06066) and auxiliary-loss-free balancing
  (DeepSeek-V3, arXiv:2412.19437, sec. 2.1.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MoEConfig

if TYPE_CHECKING:  # torch.distributed only where a run is parallel
    from .expert_parallel import ExpertDispatch


class Router(nn.Module):
    """Linear gate computed in float32, with a temperature settable between epochs and,
    in training only, multiplicative jitter on its input."""

    temperature: torch.Tensor  # a buffer (register_buffer), declared for the type checker

    def __init__(self, n_embd: int, num_experts: int, jitter: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, n_embd))
        nn.init.normal_(self.weight, std=0.02)
        # A buffer, so that a compiled step reads it rather than baking it in (a Python
        # float would recompile the step at every new temperature); not persistent: it is
        # a training schedule that the Trainer sets each epoch, and the checkpoint records
        # the epoch it derives from.
        self.register_buffer("temperature", torch.ones(()), persistent=False)
        # Switch Transformer, sec. 2.4: the router's input times U(1 - eps, 1 + eps) noise
        # while training (eps = 1e-2 there); the experts see the input unchanged.
        self.jitter = jitter

    def set_temperature(self, temperature: float) -> None:
        self.temperature.fill_(temperature)  # in place: a CUDA graph keeps its address

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 even under bf16 autocast: softmax over small logit differences is
        # where low precision hurts routing most (Switch Transformer, sec. 2.4).
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if self.training and self.jitter > 0:
                x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
            logits = F.linear(x, self.weight.float())  # [N, E]
        return logits / self.temperature


class Experts(nn.Module):
    """`num_experts` GELU FFNs of hidden size `expert_dim`, run on expert-sorted rows."""

    def __init__(self, num_experts: int, n_embd: int, expert_dim: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, n_embd, expert_dim))  # [E, C, H]
        self.w2 = nn.Parameter(torch.empty(num_experts, expert_dim, n_embd))  # [E, H, C]
        nn.init.normal_(self.w1, std=0.02)
        nn.init.normal_(self.w2, std=0.02)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        # x: [R, C], rows sorted by expert; offsets: [E] int32 cumulative row ends. Rows
        # past offsets[-1] (dropped assignments) belong to no expert: their output is
        # undefined and the caller masks it.
        # grouped_mm runs every expert's matmul on its contiguous slice in one call,
        # forward and backward, with no padding to capacity and no per-expert loop; its
        # shapes are [R, C] whatever the routing, so a compiled step stays one graph.
        w1: torch.Tensor = self.w1
        w2: torch.Tensor = self.w2
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, w1, w2 = x.to(dtype), w1.to(dtype), w2.to(dtype)
        if _grouped_mm_supported(x, *w1.shape[1:]):
            h = F.gelu(_grouped_mm(x, w1, offs=offsets))  # [R, H]
            return _grouped_mm(h, w2, offs=offsets)  # [R, C]
        # Where grouped_mm cannot run (float32 on CUDA, unaligned widths), a loop over the
        # same per-expert slices: it reads the offsets on the host, so it syncs and cannot
        # be compiled into one graph.
        ends = offsets.tolist()
        starts = [0] + ends[:-1]
        groups = enumerate(zip(starts, ends, strict=True))
        out = [F.gelu(x[a:b] @ w1[e]) @ w2[e] for e, (a, b) in groups]
        out.append(x.new_zeros(x.size(0) - ends[-1], w2.size(-1)))  # the rows of no expert
        return torch.cat(out)


# F.grouped_mm is torch.nn.functional's name for torch._grouped_mm (same arguments); a
# GPU image may carry a torch from before the public name.
_grouped_mm = getattr(F, "grouped_mm", None) or torch._grouped_mm


@torch.compiler.assume_constant_result  # type: ignore[untyped-decorator]  # unannotated in torch
def _cuda_capability(index: int | None) -> tuple[int, int]:
    # A constant to torch.compile: read once when a step is traced, not at every call.
    return torch.cuda.get_device_capability(index)


def _grouped_mm_supported(x: torch.Tensor, C: int, H: int) -> bool:
    """grouped_mm needs 16-byte-aligned rows, and on CUDA bf16 inputs on SM >= 80
    (torch's documented requirement). The CPU kernel takes float32 too, but torch.compile's
    shape function for it does not: compiled, float32 takes the loop (with graph breaks)."""
    aligned = (C * x.element_size()) % 16 == 0 and (H * x.element_size()) % 16 == 0
    if x.device.type == "cuda":
        return aligned and x.dtype == torch.bfloat16 and _cuda_capability(x.device.index)[0] >= 8
    return aligned and (x.dtype == torch.bfloat16 or not torch.compiler.is_compiling())


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


class MoELayer(nn.Module):
    """Top-k routed experts with capacity, replacing a Block's MLP, built from an
    `MoEConfig` (moe_core.config: the fields, their defaults and sources).

    `forward` returns (output, RoutingStats), the stats carrying the *unweighted*
    load-balancing loss and router z-loss; the model weights them (GPT.aux_loss).

    Training drops assignments over capacity (the spec's capacity_factor) unless
    `dropless`. Evaluation drops nothing by default (`eval_capacity_factor` None): a token's
    output then depends on nothing but its own sequence, so validation loss is the same
    whatever the eval batch size, and it measures the model rather than how its batches
    were cut.

    Every shape in a forward follows from the input's: k x tokens assignment rows, kept
    ones first, grouped by expert, then the dropped ones, which no expert computes. No
    value is read on the host, so a training step runs without a device sync and compiles
    to one graph, dropless included.

    Options (docs/routing-options.md), all off by default: `dropless`, `router_jitter`,
    `num_shared_experts` (one MLP of `num_shared_experts * expert_dim` hidden units that
    every token passes through: the sum of that many expert-sized FFNs) and
    `aux_free_bias_rate` (a per-expert bias, a buffer, added to the scores that choose
    experts but not to the gates; `update_expert_bias` moves it after each optimizer step).
    """

    def __init__(self, n_embd: int, moe: MoEConfig, dropout: float = 0.0):
        super().__init__()
        self.config = moe
        self.num_experts, self.top_k = moe.num_experts, moe.top_k
        self.router = Router(n_embd, moe.num_experts, moe.router_jitter)
        self.experts = Experts(moe.num_experts, n_embd, moe.expert_dim)
        width = moe.num_shared_experts * moe.expert_dim
        self.shared = MLP(n_embd, width, 0.0) if width else None
        if moe.aux_free_bias_rate > 0:
            # State, not a parameter: in the state dict (so in every checkpoint), moved by
            # update_expert_bias rather than by gradients.
            self.register_buffer("expert_bias", torch.zeros(moe.num_experts))
        else:
            self.expert_bias = None
        self.dropout = nn.Dropout(dropout)
        # Set by moe_core.parallel.parallelize when the run spans several ranks: the layer
        # then sums its routing over them and, if its experts are split, sends rows to the
        # rank holding each expert (moe_core.expert_parallel). None: one process, all here.
        self.parallel: ExpertDispatch | None = None

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
        f = counts.to(prob_sum.dtype) / counts.sum()  # [E]
        P = prob_sum / (counts.sum() / self.top_k if tokens is None else tokens)  # [E]
        return self.num_experts * torch.sum(f * P)

    @torch.no_grad()
    def update_expert_bias(self, counts: torch.Tensor) -> None:
        """DeepSeek-V3, sec. 2.1.2: after each step, raise the bias of every expert that
        took fewer than the mean of the step's assignments (`counts`, this layer's
        RoutingStats.counts) by the rate and lower every busier one's by it. No sync."""
        if self.expert_bias is None:
            return
        load = counts.to(self.expert_bias.dtype)  # [E]
        self.expert_bias += self.config.aux_free_bias_rate * torch.sign(load.mean() - load)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingStats]:
        B, T, C = x.size()
        E, k = self.num_experts, self.top_k
        x_flat = x.reshape(-1, C)  # [N, C]
        N = x_flat.size(0)

        logits = self.router(x_flat)  # [N, E] float32
        probs = F.softmax(logits, dim=-1)  # [N, E]
        if self.expert_bias is None:
            gates, chosen = probs.topk(k, dim=-1)  # [N, k]
        else:
            # The bias chooses the experts; the gates stay the router's probabilities.
            chosen = (probs + self.expert_bias).topk(k, dim=-1).indices  # [N, k]
            gates = probs.gather(1, chosen)  # [N, k]
        # Top-1 keeps the raw probability as the gate (Switch): renormalising it would make
        # it 1.0 and cut the router off from the task loss's gradient. For k > 1 the gates
        # are renormalised to sum to 1 (GShard, Mixtral), so the output's scale does not
        # depend on how peaked the router is.
        if k > 1:
            gates = gates / gates.sum(dim=-1, keepdim=True)

        # Assignments in priority order: every token's first choice, then every second
        # choice, so capacity drops second choices before any first choice.
        # Assignment a is token a % N's (a // N)-th choice.
        flat_expert = chosen.t().reshape(-1)  # [k*N]
        flat_gate = gates.t().reshape(-1)  # [k*N]

        cap = self._forward_capacity(N)
        if cap is None or cap >= N:  # nothing can overflow: every assignment is kept
            counts = torch.zeros(E, dtype=torch.long, device=x.device)
            counts.scatter_add_(0, flat_expert, torch.ones_like(flat_expert))  # [E]
            kept_counts, sort_key, kept = counts, flat_expert, None
        else:
            # An assignment's slot at its expert: how many assignments before it, in
            # priority order, chose the same expert. It is kept if the slot is < capacity.
            one_hot = F.one_hot(flat_expert, E)  # [k*N, E]
            slots = one_hot.cumsum(0)  # [k*N, E]
            counts = slots[-1]  # [E]
            slot = slots.gather(1, flat_expert.unsqueeze(1)).squeeze(1) - 1  # [k*N]
            kept_counts = counts.clamp(max=cap)  # [E]
            # Dropped assignments sort after every kept one (key E), out of every group.
            sort_key = flat_expert.masked_fill(slot >= cap, E)  # [k*N]
            kept = torch.arange(k * N, device=x.device) < kept_counts.sum()  # [k*N] sorted
        # A stable sort keeps the priority order within each expert's group.
        order = torch.sort(sort_key, stable=True).indices  # [k*N] assignment ids
        offsets = torch.cumsum(kept_counts, 0).to(torch.int32)  # [E] row ends

        token_ids = order if k == 1 else order % N  # [k*N]
        # index_select rather than x_flat[token_ids]: its backward is an index_add, not
        # the slower accumulating index_put of advanced indexing.
        rows = x_flat.index_select(0, token_ids)  # [k*N, C]
        if kept is not None:
            # The dropped rows' gradient comes back through no expert: make it zero here
            rows = torch.where(kept.unsqueeze(1), rows, 0.0)
        ep = self.parallel
        if ep is not None and ep.splits_experts:  # the rows go where their experts are
            expert_of_row = sort_key.index_select(0, order)  # [k*N], E for dropped rows
            expert_out = ep.run_experts(self.experts, rows, expert_of_row, kept_counts, cap)
        else:
            expert_out = self.experts(rows, offsets)  # [k*N, C]
        if kept is not None:
            # A dropped assignment contributes nothing: its token passes through the
            # block's residual connection unchanged (plus the shared experts' output). Its
            # row is masked before the gate multiplies it, so that its gate's gradient is
            # zero too (the row itself holds whatever no expert wrote there).
            expert_out = torch.where(kept.unsqueeze(1), expert_out, 0.0)
        weighted = expert_out * flat_gate.index_select(0, order).unsqueeze(1).to(expert_out.dtype)
        # Combine: sum each token's (one or k) expert outputs.
        out = torch.zeros_like(x_flat, dtype=weighted.dtype).index_add_(0, token_ids, weighted)
        if self.shared is not None:
            out = out + self.shared(x_flat).to(out.dtype)  # [N, C], every token

        prob_sum = probs.sum(dim=0)  # [E]
        # ST-MoE eq. (5): the mean over tokens of the squared log-sum-exp of the router
        # logits. Always computed (it is a statistic too); in the graph only in training.
        z_logits = logits if self.training else logits.detach()
        z_loss = torch.logsumexp(z_logits, dim=-1).square().mean()
        train_cap = N if self.config.dropless else self.capacity(N)
        over = (counts - counts.clamp(max=train_cap)).sum()
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
        stats = RoutingStats(
            balance_loss=self.balance_loss(counts, local_prob_sum, tokens=N),
            z_loss=z_loss,
            counts=counts.detach(),
            dropped=(counts - kept_counts).sum().detach(),
            over_capacity=over.detach(),
            prob_sum=prob_sum.detach(),
            # Capacity slots (E x cap) left unused; dropless groups have no slots to leave.
            pad_ratio=torch.zeros((), device=x.device)
            if cap is None
            else 1.0 - kept_counts.sum().detach() / (E * cap * ranks),
        )
        return self.dropout(out.to(x.dtype)).view(B, T, C), stats


class MLP(nn.Module):
    """The dense FFN: the same GELU network as one expert."""

    def __init__(self, n_embd: int, hidden: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(n_embd, hidden, bias=False)
        self.proj = nn.Linear(hidden, n_embd, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.proj(F.gelu(self.fc(x))))  # a Module call is Any
        return out


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        assert n_embd % n_head == 0
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads
        out: torch.Tensor = self.resid_dropout(self.proj(y))  # a Module call is Any
        return out


class Block(nn.Module):
    """Pre-LayerNorm transformer block whose FFN is an MLP or an MoELayer."""

    def __init__(self, config: GPTConfig, moe: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config.n_embd, config.n_head, config.dropout)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        if moe:
            assert config.moe is not None, "MoE layers need GPTConfig.moe"
            self.ffn: nn.Module = MoELayer(config.n_embd, config.moe, config.dropout)
        else:
            self.ffn = MLP(config.n_embd, config.ffn_dim, config.dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingStats | None]:
        """-> (x, the MoE FFN's routing statistics; None for a dense FFN)."""
        x = x + self.attn(self.ln_1(x))
        if isinstance(self.ffn, MoELayer):
            h, routing = self.ffn(self.ln_2(x))
            return x + h, routing
        return x + self.ffn(self.ln_2(x)), None


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int  # longest sequence
    n_layer: int
    n_head: int
    n_embd: int
    ffn_dim: int  # dense FFN hidden size
    dropout: float = 0.0
    moe_layers: tuple[int, ...] = field(default_factory=tuple)  # empty: a dense model
    moe: MoEConfig | None = None  # every MoE layer's configuration, handed to it whole


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        moe = set(config.moe_layers)
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i in moe) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying (GPT-2)
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("experts.w2"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def moe_layers(self) -> list[MoELayer]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoELayer)]

    def forward(
        self, idx: torch.Tensor, *, output_routing: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, list[RoutingStats]]:
        """idx: (B, T) token ids -> (logits (B, T, vocab), weighted aux loss (scalar)), and
        with `output_routing` a third item: each MoE layer's RoutingStats, in order (as
        Hugging Face models return router logits when asked)."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(
                f"sequence of {T} tokens is longer than block_size {self.config.block_size}"
            )
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        routing: list[RoutingStats] = []
        for block in self.blocks:
            x, stats = block(x)
            if stats is not None:
                routing.append(stats)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        aux = self.aux_loss(
            [s.balance_loss for s in routing], [s.z_loss for s in routing], idx.device
        )
        return (logits, aux, routing) if output_routing else (logits, aux)

    def aux_loss(
        self,
        balance_losses: list[torch.Tensor],
        z_losses: list[torch.Tensor],
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """The weighted aux loss from the MoE layers' balance losses and, with a
        `router_z_loss` coefficient, their router z-losses (zero when dense)."""
        if not balance_losses:
            return torch.zeros((), device=device)
        moe = self.config.moe
        assert moe is not None, "MoE layers in a model without an MoEConfig"
        # Mean over MoE layers: the aux term keeps one scale (aux_weight at perfect
        # balance) however many layers are MoE.
        aux = moe.aux_weight * torch.stack(balance_losses).mean()
        if moe.router_z_loss > 0:
            aux = aux + moe.router_z_loss * torch.stack(z_losses).mean()
        return aux
