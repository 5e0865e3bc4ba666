"""What a run costs, from its configs alone (torch-free: the API sizes a dry run with it):
parameters, active parameters, training FLOPs per token and an estimate of its memory on a
GPU. The arithmetic is moe_core.model's GPT: tied embeddings, learned positions, LayerNorms
with a bias, no Linear biases; tests/moe_core/test_sizing.py holds it to the modules.
"""

from __future__ import annotations

from typing import Literal

from .config import BaseConfig, ExperimentConfig

GiB = 1024**3


def parameters(config: ExperimentConfig, base: BaseConfig, *, dense: bool) -> tuple[int, int]:
    """(total, active) parameters: active leaves out, in each MoE layer, the experts a token
    is not routed to (experts - top_k); shared experts see every token."""
    c, layers = base.hidden_dim, base.num_layers
    embeddings = base.vocab_size * c + base.seq_len * c  # the LM head is tok_emb, tied
    final_norm = 2 * c
    per_block = 2 * (2 * c) + 4 * c * c  # ln_1, ln_2 (weight, bias); qkv and proj
    mlp = 2 * c * base.ffn_dim
    expert = 2 * c * config.expert_dim  # w1 [C, H] and w2 [H, C]
    experts = config.experts(base)  # the config's own count (fine-grained), else the base's
    shared = config.num_shared_experts * expert  # one MLP of num_shared * expert_dim units
    moe = 0 if dense else len(base.moe_layers)
    moe_block = experts * c + experts * expert + shared  # router, experts, shared experts
    total = embeddings + final_norm + layers * per_block + (layers - moe) * mlp + moe * moe_block
    inactive = moe * (experts - config.top_k) * expert
    return total, total - inactive


def train_flops_per_token(config: ExperimentConfig, base: BaseConfig, *, dense: bool) -> float:
    """6 x active parameters without the position table, plus attention's 12 x layers x
    width x sequence (PaLM, appendix B): the model FLOPs that MFU divides by."""
    _, active = parameters(config, base, dense=dense)
    active -= base.seq_len * base.hidden_dim  # a lookup, not a matmul
    return 6 * active + 12 * base.num_layers * base.hidden_dim * base.seq_len


def memory_estimate(
    config: ExperimentConfig,
    base: BaseConfig,
    *,
    dense: bool,
    precision: Literal["bf16", "fp32"] = "bf16",
    replicas: int = 1,
) -> dict[str, int]:
    """Bytes a training run holds on a GPU at its peak: float32 weights and gradients, AdamW's
    two moments, bf16 copies of the matmul weights under autocast, and one step's saved
    activations (with fused attention: no T x T scores). An estimate, meant to refuse a run
    that cannot fit and to place runs side by side, not to budget to the last MiB; it errs
    high (the allocator's caching and fragmentation are counted as 10%).

    Per rank when the run spans several (base.gpus, base.expert_parallel): each holds the
    dense parameters, its share of the experts and its share of each batch. With `replicas`,
    that many seeds trained together as one stack (moe_core.together): each figure that many
    times, every replica holding its own weights, state and step's activations."""
    total, _ = parameters(config, base, dense=dense)
    moe_layers = 0 if dense else len(base.moe_layers)
    experts = config.experts(base)
    # The routed experts' two matrices per MoE layer, split over the expert-parallel ranks.
    expert_params = moe_layers * experts * 2 * base.hidden_dim * config.expert_dim
    total -= expert_params - expert_params // base.expert_parallel
    weights = 4 * total
    state = 12 * total  # float32 gradients, and AdamW's exp_avg and exp_avg_sq
    half = 2 if precision == "bf16" else 4
    casts = 2 * total if precision == "bf16" else 0  # autocast's cached bf16 weights
    n = config.batch_size // base.gpus * base.seq_len  # tokens per step, on this rank
    c = base.hidden_dim
    # Saved for the backward, in values per token per block (Korthikanti et al. 2022,
    # table 2, without the attention scores): attention's inputs, Q, K, V, its output,
    # and a dropout mask; then the FFN's input, hidden pre- and post-GELU, and its mask.
    attention = 6 * c
    mlp = 2 * c + 2 * base.ffn_dim
    # MoE: the router's logits and probabilities, the k gathered rows and their hidden
    # activations, the weighted outputs, and the shared experts' hidden units.
    width = config.expert_dim
    moe = 2 * experts + config.top_k * (2 * c + 2 * width) + 2 * config.num_shared_experts * width
    per_token = base.num_layers * attention + (base.num_layers - moe_layers) * mlp
    per_token += moe_layers * moe
    activations = n * per_token * half
    if base.expert_parallel > 1 and moe_layers:
        # The all-to-all's buffers, padded to the capacity: sent, received and sent back.
        capacity = -(-config.capacity_factor * n // experts) if not config.dropless else n
        activations += moe_layers * 3 * int(experts * capacity) * c * half
    # float32 logits, their log-softmax and its gradient
    logits = 3 * 4 * n * base.vocab_size
    k = replicas
    subtotal = k * (weights + state + casts + activations + logits)
    return {
        "parameters": k * weights,
        "gradients_and_optimizer": k * state,
        "autocast_weights": k * casts,
        "activations": k * (activations + logits),
        "total": int(subtotal * 1.1),
    }
