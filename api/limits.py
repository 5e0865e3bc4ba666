"""The API's bounds on what a request may ask: the sizes a worker could hold, the ids the
database has, and the fields that are the worker's own. api.overrides declares them on the
request bodies' fields; api.resolve checks what only a whole config can show."""

from __future__ import annotations

# The largest value a request may give each size: generous for research on one GPU, but a
# valid-looking body cannot ask a worker for a model or a run it could never finish.
# The README's "HTTP API" section states them.
LIMITS: dict[str, int | float] = {
    "hidden_dim": 4096,
    "seq_len": 4096,
    "num_layers": 48,
    "num_heads": 64,
    "ffn_dim": 16384,
    "expert_dim": 16384,
    "num_experts": 64,
    "vocab_size": 65536,
    "num_epochs": 1000,
    "batch_size": 1024,
    "num_shared_experts": 8,
    "router_z_loss": 1.0,  # ST-MoE uses 1e-3
    "aux_free_bias_rate": 0.1,  # DeepSeek-V3 uses 1e-3
    # numpy's seeds are 32-bit unsigned; a study's seeds run up to base.seed + 9
    "seed": 2**31 - 1,
    # ranks one run spans: a node's GPUs (MOE_MAX_GPUS_PER_RUN bounds it per deployment)
    "gpus": 64,
}
# The smallest value a request may give: a negative seed would fail on a worker (numpy).
LOWER_LIMITS: dict[str, int | float] = {"seed": 0}
# The base a request without `base_preset` gets: the same as `python -m moe_core`'s, a
# 4-epoch run that a CPU worker finishes in minutes (the spec's 20-epoch run is asked for).
DEFAULT_BASE_PRESET = "tiny"
# Paths on a worker are the worker's to choose (MOE_DATA_DIR, MOE_CACHE_DIR), not a client's.
WORKER_ONLY = ("data_dir", "cache_dir")
# The largest id a path or body may name: the database's ids are 32-bit.
MAX_ID = 2**31 - 1
