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

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


class Router(nn.Module):
    """Linear gate computed in float32, with a temperature settable between epochs and,
    in training only, multiplicative jitter on its input."""

    def __init__(self, n_embd: int, num_experts: int, jitter: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, n_embd))
        nn.init.normal_(self.weight, std=0.02)
        # A plain attribute rather than a buffer: it is a training schedule, set by the
        # Trainer each epoch, and the checkpoint records the epoch it derives from.
        self.temperature = 1.0
        # Switch Transformer, sec. 2.4: the router's input times U(1 - eps, 1 + eps) noise
        # while training (eps = 1e-2 there); the experts see the input unchanged.
        self.jitter = jitter

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
        # x: [M, C], rows sorted by expert; offsets: [E] int32 cumulative row ends.
        # grouped_mm runs every expert's matmul on its contiguous slice in one call,
        # forward and backward, with no padding to capacity and no per-expert loop.
        w1, w2 = self.w1, self.w2
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, w1, w2 = x.to(dtype), w1.to(dtype), w2.to(dtype)
        if _grouped_mm_supported(x, *w1.shape[1:]):
            h = F.gelu(F.grouped_mm(x, w1, offs=offsets))  # [M, H]
            return F.grouped_mm(h, w2, offs=offsets)  # [M, C]
        # Where grouped_mm cannot run, a loop over the same contiguous per-expert slices.
        ends = offsets.tolist()
        starts = [0] + ends[:-1]
        return torch.cat(
            [
                F.gelu(x[a:b] @ w1[e]) @ w2[e]
                for e, (a, b) in enumerate(zip(starts, ends, strict=True))
            ]
        )


@functools.cache
def _cuda_capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _grouped_mm_supported(x: torch.Tensor, C: int, H: int) -> bool:
    """grouped_mm needs 16-byte-aligned rows, and on CUDA bf16 inputs on SM >= 80
    (torch's documented requirement); the CPU kernel takes float32 too."""
    aligned = (C * x.element_size()) % 16 == 0 and (H * x.element_size()) % 16 == 0
    if x.device.type == "cuda":
        return aligned and x.dtype == torch.bfloat16 and _cuda_capability(x.device.index)[0] >= 8
    return aligned


class MoELayer(nn.Module):
    """Top-k routed experts with capacity, replacing a Block's MLP.

    `forward` returns (output, balance_loss) with the *unweighted* load-balancing loss;
    the model applies `aux_weight`. Each forward leaves detached tensors, so statistics
    cost no device sync: `last_counts` (assignments per expert, before capacity),
    `last_dropped` (assignments this forward dropped), `last_over_capacity` (assignments
    over the *training* capacity, dropped or not), `last_prob_sum` (router probabilities
    summed over tokens, [E]), from which `balance_loss` recomputes the loss over many
    batches at once, and `last_pad_ratio` (the share of capacity slots left unused).
    `last_z_loss` is the router z-loss of the last forward, still in the graph: the Block
    hands it to the model, which weights it (see GPT.aux_loss).

    Training drops assignments over capacity (the spec's capacity_factor) unless
    `dropless`. Evaluation drops nothing by default (`eval_capacity_factor` None): a token's
    output then depends on nothing but its own sequence, so validation loss is the same
    whatever the eval batch size, and it measures the model rather than how its batches
    were cut.

    Options (docs/routing-options.md), all off by default: `dropless`, `router_jitter`,
    `num_shared_experts` (one MLP of `num_shared_experts * expert_dim` hidden units that
    every token passes through: the sum of that many expert-sized FFNs) and
    `aux_free_bias_rate` (a per-expert bias, a buffer, added to the scores that choose
    experts but not to the gates; `update_expert_bias` moves it after each optimizer step).
    """

    def __init__(
        self,
        n_embd: int,
        num_experts: int,
        expert_dim: int,
        top_k: int = 1,
        capacity_factor: float = 1.25,
        dropout: float = 0.0,
        eval_capacity_factor: float | None = None,
        *,
        dropless: bool = False,
        router_jitter: float = 0.0,
        num_shared_experts: int = 0,
        aux_free_bias_rate: float = 0.0,
    ):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k ({top_k}) must be between 1 and num_experts ({num_experts})")
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.dropless = dropless
        self.router = Router(n_embd, num_experts, router_jitter)
        self.experts = Experts(num_experts, n_embd, expert_dim)
        self.shared = (
            MLP(n_embd, num_shared_experts * expert_dim, 0.0) if num_shared_experts else None
        )
        self.aux_free_bias_rate = aux_free_bias_rate
        if aux_free_bias_rate > 0:
            # State, not a parameter: in the state dict (so in every checkpoint), moved by
            # update_expert_bias rather than by gradients.
            self.register_buffer("expert_bias", torch.zeros(num_experts))
        else:
            self.expert_bias = None
        self.dropout = nn.Dropout(dropout)
        self.last_counts: torch.Tensor | None = None
        self.last_dropped: torch.Tensor | None = None
        self.last_over_capacity: torch.Tensor | None = None
        self.last_prob_sum: torch.Tensor | None = None
        self.last_pad_ratio: torch.Tensor | None = None
        self.last_z_loss: torch.Tensor | None = None

    def capacity(self, num_tokens: int, capacity_factor: float | None = None) -> int:
        # Switch Transformer: expert capacity = capacity_factor * tokens / experts.
        factor = self.capacity_factor if capacity_factor is None else capacity_factor
        return math.ceil(factor * num_tokens / self.num_experts)

    def _forward_capacity(self, num_tokens: int) -> int | None:
        """This forward's expert capacity; None: no capacity, nothing can be dropped."""
        if self.training:
            # MegaBlocks: dropless, the experts' groups are as large as their loads
            return None if self.dropless else self.capacity(num_tokens)
        if self.eval_capacity_factor is not None:
            return self.capacity(num_tokens, self.eval_capacity_factor)
        return None

    def balance_loss(self, counts: torch.Tensor, prob_sum: torch.Tensor) -> torch.Tensor:
        """Load-balancing loss, Switch Transformer eq. (4)-(6): E * sum_e f_e * P_e, where
        f_e is the fraction of assignments routed to expert e and P_e the mean router
        probability for e, from counts and probability sums over any number of tokens.
        It is 1.0 at perfect balance and E when all go to one expert."""
        f = counts.to(prob_sum.dtype) / counts.sum()  # [E]
        P = prob_sum / (counts.sum() / self.top_k)  # [E], over tokens
        return self.num_experts * torch.sum(f * P)

    @torch.no_grad()
    def update_expert_bias(self) -> None:
        """DeepSeek-V3, sec. 2.1.2: after each step, raise the bias of every expert that
        took fewer than the mean of the last training batch's assignments by the rate and
        lower every busier one's by it. Device-side: no sync."""
        if self.expert_bias is None or self.last_counts is None:
            return
        load = self.last_counts.to(self.expert_bias.dtype)  # [E]
        self.expert_bias += self.aux_free_bias_rate * torch.sign(load.mean() - load)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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

        # Sort assignments by expert; a stable sort keeps the priority order within each.
        sorted_expert, order = torch.sort(flat_expert, stable=True)  # [k*N]
        counts = torch.bincount(flat_expert, minlength=E)  # [E]
        cap = self._forward_capacity(N)
        if cap is None or cap >= N:  # nothing can overflow: every assignment is kept
            kept, kept_counts = order, counts
        else:
            starts = torch.cumsum(counts, 0) - counts  # [E]
            position = torch.arange(k * N, device=x.device) - starts[sorted_expert]  # slot
            kept = order[position < cap]  # [M] assignment ids, still grouped by expert
            kept_counts = counts.clamp(max=cap)
        offsets = torch.cumsum(kept_counts, 0).to(torch.int32)  # [E] row ends

        token_ids = kept if k == 1 else kept % N  # [M]
        # index_select rather than x_flat[token_ids]: its backward is an index_add, not
        # the slower accumulating index_put of advanced indexing.
        expert_out = self.experts(x_flat.index_select(0, token_ids), offsets)  # [M, C]
        weighted = expert_out * flat_gate[kept].unsqueeze(1).to(expert_out.dtype)
        # Combine: sum each token's (one or k) expert outputs. A dropped token gets zeros
        # here and so passes through the block's residual connection unchanged (plus the
        # shared experts' output, when there are any).
        out = torch.zeros_like(x_flat, dtype=weighted.dtype).index_add_(0, token_ids, weighted)
        if self.shared is not None:
            out = out + self.shared(x_flat).to(out.dtype)  # [N, C], every token

        prob_sum = probs.sum(dim=0)  # [E]
        balance_loss = self.balance_loss(counts, prob_sum)
        # ST-MoE eq. (5): the mean over tokens of the squared log-sum-exp of the router
        # logits. Always computed (it is a statistic too); in the graph only when weighted.
        z_logits = logits if self.training else logits.detach()
        self.last_z_loss = torch.logsumexp(z_logits, dim=-1).square().mean()

        self.last_counts = counts.detach()
        self.last_dropped = (counts - kept_counts).sum().detach()
        self.last_prob_sum = prob_sum.detach()
        # Capacity slots (E x cap) left unused; dropless groups have no slots to leave.
        self.last_pad_ratio = (
            torch.zeros((), device=x.device)
            if cap is None
            else 1.0 - kept_counts.sum().detach() / (E * cap)
        )
        if self.training:
            self.last_over_capacity = self.last_dropped
        else:
            train_cap = N if self.dropless else self.capacity(N)
            self.last_over_capacity = (counts - counts.clamp(max=train_cap)).sum().detach()
        return self.dropout(out.to(x.dtype)).view(B, T, C), balance_loss


class MLP(nn.Module):
    """The dense FFN: the same GELU network as one expert."""

    def __init__(self, n_embd: int, hidden: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(n_embd, hidden, bias=False)
        self.proj = nn.Linear(hidden, n_embd, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


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
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm transformer block whose FFN is an MLP or an MoELayer."""

    def __init__(self, config: GPTConfig, moe: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config.n_embd, config.n_head, config.dropout)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        if moe:
            self.ffn: nn.Module = MoELayer(
                config.n_embd,
                config.num_experts,
                config.expert_dim,
                config.top_k,
                config.capacity_factor,
                config.dropout,
                config.eval_capacity_factor,
                dropless=config.dropless,
                router_jitter=config.router_jitter,
                num_shared_experts=config.num_shared_experts,
                aux_free_bias_rate=config.aux_free_bias_rate,
            )
        else:
            self.ffn = MLP(config.n_embd, config.ffn_dim, config.dropout)

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """-> (x, (balance loss, router z-loss) of an MoE FFN, None for a dense one)."""
        x = x + self.attn(self.ln_1(x))
        if isinstance(self.ffn, MoELayer):
            h, balance_loss = self.ffn(self.ln_2(x))
            return x + h, (balance_loss, self.ffn.last_z_loss)
        return x + self.ffn(self.ln_2(x)), None


@dataclass
class GPTConfig:
    vocab_size: int = 10000
    block_size: int = 256  # longest sequence
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 256
    ffn_dim: int = 1024  # dense FFN hidden size
    dropout: float = 0.1
    moe_layers: tuple[int, ...] = field(default_factory=tuple)  # empty: a dense model
    num_experts: int = 8
    expert_dim: int = 1024
    top_k: int = 1
    capacity_factor: float = 1.25
    eval_capacity_factor: float | None = None  # None: evaluation drops nothing
    aux_weight: float = 0.01  # Switch Transformer, sec. 2.2: alpha = 1e-2
    # Routing options, all off (docs/routing-options.md)
    router_z_loss: float = 0.0  # ST-MoE, sec. 3.1: 1e-3
    dropless: bool = False  # MegaBlocks: no capacity in training
    router_jitter: float = 0.0  # Switch Transformer, sec. 2.4: 1e-2
    num_shared_experts: int = 0  # DeepSeekMoE, sec. 3.2
    aux_free_bias_rate: float = 0.0  # DeepSeek-V3, sec. 2.1.2: gamma = 1e-3


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

    def set_gating_temperature(self, temperature: float) -> None:
        for layer in self.moe_layers:
            layer.router.temperature = temperature

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """idx: (B, T) token ids -> (logits (B, T, vocab), weighted aux loss (scalar))."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(
                f"sequence of {T} tokens is longer than block_size {self.config.block_size}"
            )
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        balance_losses, z_losses = [], []
        for block in self.blocks:
            x, router_losses = block(x)
            if router_losses is not None:
                balance_losses.append(router_losses[0])
                z_losses.append(router_losses[1])
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        return logits, self.aux_loss(balance_losses, idx.device, z_losses)

    def aux_loss(
        self,
        balance_losses: list[torch.Tensor],
        device=None,
        z_losses: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The weighted aux loss from the MoE layers' balance losses and, with a
        `router_z_loss` coefficient, their router z-losses (zero when dense)."""
        if not balance_losses:
            return torch.zeros((), device=device)
        # Mean over MoE layers: the aux term keeps one scale (aux_weight at perfect
        # balance) however many layers are MoE.
        aux = self.config.aux_weight * torch.stack(balance_losses).mean()
        if self.config.router_z_loss > 0 and z_losses:
            aux = aux + self.config.router_z_loss * torch.stack(z_losses).mean()
        return aux
