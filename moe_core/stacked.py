"""Seeds of one configuration as one model: R replicas of a GPT (moe_core.model) whose every
parameter carries a leading replica dimension, so that one step trains all of them with
each matmul R times larger and one kernel launch where there were R (HFTA, Wang et al.,
MLSys 2021). The replicas share nothing but the kernels: each has its own weights, routing,
capacity, statistics and losses, and its gradient comes from its own loss alone.

The stack mirrors the GPT's module paths, so `replica_state(r)` is replica r's GPT state
dict (its weights, the tied LM head included, and its expert bias) and `load_replica(r)`
puts one back. Linear layers are batched matmuls, the embeddings one lookup in the
[R*V, C] table (replica r's tokens offset by r*V), attention one SDPA over [R*B, H, T, D],
and each MoE layer routes every replica with moe_core.routing, replica r's expert e being
grouped_mm's group r*E + e: one expert call for all of them, capacity counted per replica.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import GPT, CausalSelfAttention, GPTConfig, MoELayer, expert_ffn
from .routing import MoERouting, RoutingStats, weighted_aux_loss
from .step import LossStep


class StackedMoE(MoERouting):
    """R replicas of an MoELayer: its children (router, experts, shared) hold [R, ...]."""

    # _stack's containers, with the MoELayer's attribute names (Any: built by name)
    router: Any
    experts: Any
    shared: Any
    dropout: Any

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingStats]:
        R, B, T, C = x.size()
        x_flat = x.reshape(R, B * T, C)  # [R, N, C]
        N = x_flat.size(1)
        # The Router's forward, per replica: float32, jitter in training only.
        with torch.autocast(device_type=x.device.type, enabled=False):
            xr = x_flat.float()
            jitter = self.config.router_jitter
            if self.training and jitter > 0:
                xr = xr * torch.empty_like(xr).uniform_(1.0 - jitter, 1.0 + jitter)
            logits = torch.bmm(xr, self.router.weight.float().transpose(1, 2))  # [R, N, E]
        logits = logits / self.router.temperature[:, None, None]
        probs = F.softmax(logits, dim=-1)  # [R, N, E]
        bias = None if self.expert_bias is None else self.expert_bias[:, None, :]
        chosen, gates = self.choose(probs, bias)  # [R, N, k] each
        cap = self._forward_capacity(N)  # per replica: the capacity of its N tokens
        a = self.assign(chosen, cap)
        tokens = x_flat.reshape(R * N, C)  # [R*N, C]
        rows = self.rows(tokens, a)  # [R*k*N, C]
        w1, w2 = self.experts.w1, self.experts.w2  # [R, E, C, H], [R, E, H, C]
        expert_out = expert_ffn(rows, w1.flatten(0, 1), w2.flatten(0, 1), a.offsets)
        out = self.combine(tokens, expert_out, gates, a)  # [R*N, C]
        if self.shared is not None:
            out = out + _mlp(self.shared, x_flat).reshape(R * N, C).to(out.dtype)
        stats = self.statistics(logits, probs, a.counts, a.kept_counts, cap)  # each [R, ...]
        return self.dropout(out.to(x.dtype)).view(R, B, T, C), stats


class StackedGPT(nn.Module):
    """R GPTs of one GPTConfig as one model: `forward(idx [R, B, T])` returns GPT's outputs
    with a leading replica dimension (logits [R, B, T, V], aux [R], each RoutingStats
    field [R, ...])."""

    # _stack's containers, with the GPT's attribute names (Any: built by name)
    tok_emb: Any
    pos_emb: Any
    drop: Any
    blocks: Any
    ln_f: Any
    lm_head: Any

    def __init__(self, models: Sequence[GPT]):
        super().__init__()
        self.config: GPTConfig = models[0].config
        self.replicas = len(models)
        memo: dict[int, nn.Parameter] = {}  # a tied parameter stays tied (the LM head)
        for name, _ in models[0].named_children():
            self.add_module(name, _stack([getattr(m, name) for m in models], memo))

    @property
    def moe_layers(self) -> list[StackedMoE]:
        return [m for m in self.modules() if isinstance(m, StackedMoE)]

    def forward(
        self, idx: torch.Tensor, *, output_routing: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, list[RoutingStats]]:
        R, B, T = idx.size()
        V = self.config.vocab_size
        table = self.tok_emb.weight  # [R, V, C]
        offset = torch.arange(R, device=idx.device)[:, None, None] * V
        tok = F.embedding(idx + offset, table.flatten(0, 1))  # [R, B, T, C]
        x = self.drop(tok + self.pos_emb.weight[:, None, :T])  # [R, B, T, C]
        routing: list[RoutingStats] = []
        for block in self.blocks:
            x = x + _attention(block.attn, _layer_norm(x, block.ln_1))
            h = _layer_norm(x, block.ln_2)
            if isinstance(block.ffn, StackedMoE):
                h, stats = block.ffn(h)
                routing.append(stats)
            else:
                h = _mlp(block.ffn, h)
            x = x + h
        logits = _linear(_layer_norm(x, self.ln_f), self.lm_head.weight)  # [R, B, T, V]
        aux = weighted_aux_loss(self.config.moe, [s.balance_loss for s in routing],
                                [s.z_loss for s in routing], idx.device)  # fmt: skip
        aux = aux.expand(R) if aux.dim() == 0 else aux  # [R] (zeros when dense)
        return (logits, aux, routing) if output_routing else (logits, aux)

    def set_temperature(self, temperature: float) -> None:
        for layer in self.moe_layers:
            layer.router.temperature.fill_(temperature)

    def replica_state(self, r: int) -> dict[str, torch.Tensor]:
        """Replica r's GPT state dict, copied out of the stack."""
        return {name: t[r].clone() for name, t in self.state_dict().items()}

    def load_replica(self, r: int, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, t in self.state_dict().items():
                t[r].copy_(state[name])

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Each replica's gradient clipped by its own total norm (clip_grad_norm_'s
        arithmetic, per replica); returns the norms before clipping, [R]."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        R = self.replicas
        norms: torch.Tensor = torch.stack([g.reshape(R, -1).norm(dim=1) for g in grads]).norm(dim=0)
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # [R]
        for g in grads:
            g.mul_(coef.view(R, *([1] * (g.dim() - 1))).to(g.dtype))
        return norms

    @torch.no_grad()
    def keep(self, rows: list[int], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Keep only the replicas at `rows` (in that order), and their optimizer state:
        the others leave the stack (stopped, failed) and cost nothing from here on. New
        parameters replace the old (autograd keeps a leaf's shape: a new `.data` would not
        do), in the modules and in the optimizer."""
        index = torch.tensor(rows, device=self.tok_emb.weight.device)
        new: dict[int, nn.Parameter] = {}  # a tied parameter stays tied
        for module in self.modules():
            for name, p in list(module._parameters.items()):
                if p is None:
                    continue
                if id(p) not in new:
                    new[id(p)] = nn.Parameter(p.index_select(0, index))
                    if optimizer is not None and p in optimizer.state:
                        state = optimizer.state.pop(p)  # AdamW's moments; its step is shared
                        optimizer.state[new[id(p)]] = {
                            key: value.index_select(0, index)
                            if torch.is_tensor(value) and value.dim() > 0
                            else value
                            for key, value in state.items()
                        }
                module._parameters[name] = new[id(p)]
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    module._buffers[name] = buffer.index_select(0, index)
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["params"] = [new[id(p)] for p in group["params"]]
        self.replicas = len(rows)


class StackedLossStep(LossStep):
    """LossStep for a StackedGPT: each replica's losses [R] from its own logits."""

    def losses(
        self, logits: torch.Tensor, y: torch.Tensor, smoothing: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        R, V = logits.size(0), logits.size(-1)
        logp = F.log_softmax(logits.reshape(R, -1, V).float(), dim=-1)  # [R, B*T, V]
        ce = -logp.gather(2, y.reshape(R, -1, 1)).mean((1, 2))  # [R]
        if smoothing > 0:  # LossStep's smoothed objective, per replica
            return (1 - smoothing) * ce - smoothing * logp.mean((1, 2)), ce
        return ce, ce


class _Stacked(nn.Module):
    """A container of stacked parameters, buffers and children, named as in the GPT."""

    def __getattr__(self, name: str) -> Any:  # its attributes are built by name
        return super().__getattr__(name)


def replica_stats(routing: list[RoutingStats], i: int) -> list[RoutingStats]:
    """Replica i's RoutingStats from the stacked ones (each field [R, ...])."""
    return [RoutingStats(*(t[i] for t in stats)) for stats in routing]


def _stack(modules: list[nn.Module], memo: dict[int, nn.Parameter]) -> nn.Module:
    """A module holding `modules`' parameters and buffers stacked, under the same names."""
    first = modules[0]
    if isinstance(first, MoELayer):
        out: nn.Module = StackedMoE(first.config)
    elif isinstance(first, nn.ModuleList):
        out = nn.ModuleList()
    elif isinstance(first, CausalSelfAttention):
        out = _Stacked()
        setattr(out, "n_head", first.n_head)  # noqa: B010  # a plain attribute of a Module
        setattr(out, "attn_dropout", first.attn_dropout)  # noqa: B010
    elif not any(True for _ in first.parameters()):
        return copy.deepcopy(first)  # dropout: nothing to stack
    else:
        out = _Stacked()
    for name, p in first.named_parameters(recurse=False):
        if id(p) not in memo:
            memo[id(p)] = nn.Parameter(torch.stack([getattr(m, name).detach() for m in modules]))
        out.register_parameter(name, memo[id(p)])
    for name in dict(first.named_buffers(recurse=False)):
        persistent = name not in first._non_persistent_buffers_set
        stacked = torch.stack([getattr(m, name) for m in modules])
        out.register_buffer(name, stacked, persistent=persistent)
    for name, _ in first.named_children():
        out.add_module(name, _stack([getattr(m, name) for m in modules], memo))
    if isinstance(first, MoELayer):  # its options that are off are plain None attributes
        assert isinstance(out, StackedMoE)
        if first.shared is None:
            out.shared = None
        if first.expert_bias is None:
            out.expert_bias = None
    return out


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per replica x @ W.T: x [R, ..., in], weight [R, out, in] -> [R, ..., out]."""
    R = x.size(0)
    y = torch.bmm(x.reshape(R, -1, x.size(-1)), weight.transpose(1, 2))
    return y.view(*x.shape[:-1], weight.size(1))


def _layer_norm(x: torch.Tensor, ln: Any) -> torch.Tensor:
    """Per replica LayerNorm (weight, bias [R, C]) of x [R, ..., C]."""
    shape = (x.size(0),) + (1,) * (x.dim() - 2) + (x.size(-1),)
    y = F.layer_norm(x, (x.size(-1),), eps=1e-5)
    out: torch.Tensor = y * ln.weight.view(shape) + ln.bias.view(shape)
    return out


def _mlp(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = mlp.dropout(_linear(F.gelu(_linear(x, mlp.fc.weight)), mlp.proj.weight))
    return out


def _attention(attn: Any, x: torch.Tensor) -> torch.Tensor:
    R, B, T, C = x.size()
    H = attn.n_head
    q, k, v = _linear(x, attn.qkv.weight).view(R * B, T, 3 * C).split(C, dim=2)
    q = q.reshape(R * B, T, H, C // H).transpose(1, 2)  # (R*B, nh, T, hs)
    k = k.reshape(R * B, T, H, C // H).transpose(1, 2)  # (R*B, nh, T, hs)
    v = v.reshape(R * B, T, H, C // H).transpose(1, 2)  # (R*B, nh, T, hs)
    p = attn.attn_dropout if attn.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
    y = y.transpose(1, 2).reshape(R, B, T, C)  # re-assemble heads
    out: torch.Tensor = attn.resid_dropout(_linear(y, attn.proj.weight))
    return out
