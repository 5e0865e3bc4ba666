"""The presets, as data: the named bases and the experiments' overrides of the
ExperimentConfig defaults. Plain Python with no dependency, so that every part of the
project names them from here: the engine (moe_core.config builds configs from them), the
API's schema, the CLI's help and the dashboard (through GET /presets)."""

from __future__ import annotations

from typing import Any

# Named bases. "spec" is the spec's main(); "tiny" is sized so the whole study of main()
# (dense baseline + the four experiments) finishes in a few minutes on 2 CPU cores;
# "micro" is for tests and smoke runs (SMOKE_BASES).
BASE_PRESETS: dict[str, dict[str, Any]] = {
    "spec": {},
    "tiny": dict(
        seq_len=64,
        hidden_dim=64,
        num_layers=6,
        num_heads=4,
        ffn_dim=256,
        num_epochs=4,
        vocab_size=4096,
        max_train_tokens=80_000,
        max_val_tokens=16_000,
        learning_rate=1e-3,
    ),
    "micro": dict(
        seq_len=32,
        hidden_dim=32,
        num_layers=6,
        num_heads=2,
        ffn_dim=64,
        num_epochs=2,
        vocab_size=512,
        max_train_tokens=8_192,
        max_val_tokens=2_048,
        learning_rate=1e-3,
    ),
}


# Bases that check that a run goes through, not what it learns: on micro, the presets'
# validation CEs differ by ~1e-5 nats, noise. The CLI says so beside a study or a
# comparison on one.
SMOKE_BASES: tuple[str, ...] = ("micro",)


# A study that says something on 2 CPU cores: tiny's model on 4.5x the text, so that dense,
# baseline and top2 over 3 seeds finish in under 45 minutes and differences are resolved to
# about +-0.01 nats (docs/results/).
BASE_PRESETS["small"] = {
    **BASE_PRESETS["tiny"],
    "max_train_tokens": 360_000,
    "max_val_tokens": 40_000,
}


FINE_GRAINED_SPLIT = 4  # fine_grained: 4x the experts, each 1/4 as wide, top-4

# The spec's four experiments, then the routing options (docs/routing-options.md), each
# the baseline plus one option, as overrides of the ExperimentConfig defaults.
EXPERIMENT_PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {},  # top-1, standard regularisation
    "top2": dict(
        top_k=2, capacity_factor=2.5
    ),  # "double expert capacity" for twice the assignments
    "strong_reg": dict(dropout=0.2, weight_decay=1e-3, label_smoothing=0.1),
    "throughput_opt": dict(batch_size=32),
    "zloss": dict(router_z_loss=1e-3),  # ST-MoE, sec. 3.1
    # DeepSeek-V3 trains with the bias and a tiny sequence-wise balance loss (1e-4)
    "aux_free": dict(aux_free_bias_rate=1e-3, aux_weight=1e-4),
    "shared_expert": dict(num_shared_experts=1),  # DeepSeekMoE
    "dropless": dict(dropless=True),  # MegaBlocks
    "jitter": dict(router_jitter=1e-2),  # Switch Transformer, sec. 2.4
    # Fine-grained experts (DeepSeekMoE, sec. 3.1): FINE_GRAINED_SPLIT times the base's
    # experts, each that much narrower, top-FINE_GRAINED_SPLIT: the same active expert
    # parameters (32 experts of 256, top-4, at the spec's sizes). The count and the width
    # follow the base: see _base_relative. Capacity counts tokens, not assignments, so it
    # grows with top_k, as top2's does: the same headroom per assignment as the baseline's.
    "fine_grained": dict(top_k=FINE_GRAINED_SPLIT, capacity_factor=1.25 * FINE_GRAINED_SPLIT),
}
# The spec's main() runs these, unless told otherwise.
SPEC_EXPERIMENTS: tuple[str, ...] = ("baseline", "top2", "strong_reg", "throughput_opt")

# What a dense run's configs hold but nothing of it uses: it has no router and no experts
# (its FFN is base.ffn_dim wide). They are never a dense run's difference from a preset or
# another run: the CLI's show and compare, and GET /presets' `dense_unused` (for the
# dashboard), leave them out. The routing fields are RoutingConfig's (moe_core.config:
# tests/test_presets.py holds them to it), named here for the torch- and
# pydantic-free client.
DENSE_UNUSED: frozenset[str] = frozenset(
    ["config.expert_dim", "config.top_k", "config.aux_weight", "config.capacity_factor"]
    + ["config.dropless", "config.router_z_loss", "config.router_jitter"]
    + ["config.num_shared_experts", "config.aux_free_bias_rate", "config.num_experts"]
    + ["config.gating_temp_schedule", "base.num_experts", "base.moe_layers"]
    + ["base.expert_parallel"]
)
