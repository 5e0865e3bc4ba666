"""What a run would be, from its config alone: sizes and steps, torch-free (the API has no
torch). The arithmetic is moe_core.model's GPT: tied embeddings, learned positions,
LayerNorms with a bias, no Linear biases; tests/api/test_plan.py holds it to the engine's
count_parameters and count_active_parameters."""

from __future__ import annotations

from typing import Any

from moe_core.config import BaseConfig, ExperimentConfig


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


def plan(config: ExperimentConfig, base: BaseConfig, *, dense: bool) -> dict[str, Any]:
    """A dry run's answer: the resolved configs, the model's size, an epoch's steps and
    tokens (with a token cap; without one the corpus decides, and they are null)."""
    total, active = parameters(config, base, dense=dense)
    steps = tokens = None
    if base.max_train_tokens is not None:
        blocks = base.max_train_tokens // (base.seq_len + 1)
        steps = blocks // config.batch_size  # training drops a last partial batch
        tokens = steps * config.batch_size * base.seq_len
    return {
        "config": config.model_dump(mode="json"),
        "base": base.model_dump(mode="json"),
        "dense": dense,
        "params": total,
        "active_params": active,
        "steps_per_epoch": steps,
        "tokens_per_epoch": tokens,
        "num_epochs": base.num_epochs,
    }
