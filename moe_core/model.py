"""
Full definition of a GPT language model with Mixture-of-Experts feed-forward layers,
built bottom-up: Router -> Experts -> MoELayer -> MLP -> CausalSelfAttention -> Block ->
GPTConfig -> GPT. The MoE layer's routing arithmetic (capacity, assignment, combine, balance
loss, statistics) is moe_core.routing's MoERouting, which MoELayer extends with its weights.

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
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MoEConfig
from .routing import MoERouting, RoutingStats, weighted_aux_loss

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
        return expert_ffn(x, self.w1, self.w2, offsets)


def expert_ffn(
    x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """Experts' FFNs (w1 [E, C, H], w2 [E, H, C]) on rows sorted by expert."""
    # x: [R, C], rows sorted by expert; offsets: [E] int32 cumulative row ends. Rows
    # past offsets[-1] (dropped assignments) belong to no expert: their output is
    # undefined and the caller masks it.
    # grouped_mm runs every expert's matmul on its contiguous slice in one call,
    # forward and backward, with no padding to capacity and no per-expert loop; its
    # shapes are [R, C] whatever the routing, so a compiled step stays one graph.
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


def _cuda_capability(index: int | None) -> tuple[int, int]:
    # A constant to torch.compile, read once when a step is traced, not at every call
    # (compile_ready marks it so).
    return torch.cuda.get_device_capability(index)


def compile_ready() -> None:
    """Call before torch.compile traces these models: it marks what the compiler may take
    for a constant. Not at import: that would import torch._dynamo, most of a second, into
    every process, compiled or not."""
    torch.compiler.assume_constant_result(_cuda_capability)  # marks it in place


def _grouped_mm_supported(x: torch.Tensor, C: int, H: int) -> bool:
    """grouped_mm needs 16-byte-aligned rows, and on CUDA bf16 inputs on SM >= 80
    (torch's documented requirement). The CPU kernel takes float32 too, but torch.compile's
    shape function for it does not: compiled, float32 takes the loop (with graph breaks)."""
    aligned = (C * x.element_size()) % 16 == 0 and (H * x.element_size()) % 16 == 0
    if x.device.type == "cuda":
        return aligned and x.dtype == torch.bfloat16 and _cuda_capability(x.device.index)[0] >= 8
    return aligned and (x.dtype == torch.bfloat16 or not torch.compiler.is_compiling())


class MoELayer(MoERouting):
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
        super().__init__(moe)
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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingStats]:
        B, T, C = x.size()
        x_flat = x.reshape(-1, C)  # [N, C]
        logits = self.router(x_flat)  # [N, E] float32
        probs = F.softmax(logits, dim=-1)  # [N, E]
        chosen, gates = self.choose(probs, self.expert_bias)  # [N, k] each
        cap = self._forward_capacity(x_flat.size(0))
        a = self.assign(chosen.unsqueeze(0), cap)  # one replica
        rows = self.rows(x_flat, a)  # [k*N, C]
        ep = self.parallel
        if ep is not None and ep.splits_experts:  # the rows go where their experts are
            expert_of_row = a.sort_key.index_select(0, a.order)  # [k*N], E for dropped rows
            expert_out = ep.run_experts(self.experts, rows, expert_of_row, a.kept_counts[0], cap)
        else:
            expert_out = self.experts(rows, a.offsets)  # [k*N, C]
        out = self.combine(x_flat, expert_out, gates.unsqueeze(0), a)  # [N, C]
        if self.shared is not None:
            out = out + self.shared(x_flat).to(out.dtype)  # [N, C], every token
        stats = self.statistics(logits, probs, a.counts[0], a.kept_counts[0], cap, ep)
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
        return weighted_aux_loss(self.config.moe, balance_losses, z_losses, device)
