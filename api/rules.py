"""The rules a request body must also meet, beyond what JSON Schema can say about it: across
fields (top_k against the experts there are), against the chosen preset, or against the
store (a baseline that must be a dense run).

Each rule is a 422 error `type`. /openapi.json states every one in the description of the
field or model it is about, with that type, so that a client generated from the schema
knows every refusal it can meet: a body valid against the schema is accepted, or refused
only by a rule stated there (tests/api/test_fuzz.py holds the API to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class Rule:
    type: str  # the 422 error's `type`
    text: str  # the rule, as the schema states it

    def error(self, loc: tuple, msg: str, value: Any) -> dict[str, Any]:
        """A pydantic-style error entry for a body that breaks this rule."""
        return {"type": self.type, "loc": loc, "msg": msg, "input": value}

    def broken(self, msg: str) -> PydanticCustomError:
        """What a validator raises for a body that breaks this rule."""
        return PydanticCustomError(self.type, msg)


def stated(*rules: Rule) -> str:
    """The rules as a description states them."""
    return " ".join(f"Refused (422 of type `{rule.type}`) unless {rule.text}." for rule in rules)


# The engine's own (moe_core.config raises them with these types).
HIDDEN_DIM_HEADS = Rule("hidden_dim_heads", "hidden_dim is a multiple of num_heads")
# A run on several ranks (docs/distributed.md): its layout fits its model and its batch.
EXPERT_PARALLEL_LAYOUT = Rule("expert_parallel_layout", "expert_parallel divides gpus")
EXPERTS_OVER_RANKS = Rule(
    "experts_over_ranks", "expert_parallel divides the experts per MoE layer (num_experts)"
)
BATCH_OVER_RANKS = Rule(
    "batch_over_ranks", "gpus divides the batch size (each rank trains an equal share)"
)
MOE_LAYERS_RANGE = Rule(
    "moe_layers_range", "every moe_layers index is below num_layers (the preset's values count)"
)
TOP_K_OVER_EXPERTS = Rule(
    "top_k_over_experts",
    "top_k is at most the routed experts per layer (config.num_experts, else base.num_experts; "
    "the preset's values count)",
)
# The API's checks of a run as a whole (api.resolve.check_run).
SHARED_EXPERTS_WIDTH = Rule(
    "shared_experts_width", "num_shared_experts x expert_dim is at most 16384"
)
TRAIN_TOKENS_UNDER_BATCH = Rule(
    "train_tokens_under_batch",
    "max_train_tokens (when set) holds one batch: batch_size x (seq_len + 1) tokens, with "
    "the run's batch size (config.batch_size; a study's presets': 16, throughput_opt 32)",
)
VAL_TOKENS_UNDER_BLOCK = Rule(
    "val_tokens_under_block", "max_val_tokens (when set) is at least seq_len + 1"
)
BASE_BATCH_SIZE_UNUSED = Rule(
    "base_batch_size_unused",
    "base.batch_size is given only for a dense run (it is the dense baseline's batch size; a "
    "MoE run's is config.batch_size, and a study's MoE runs keep their presets')",
)
# Across the body's own fields, and against the store.
DENSE_WITH_PRESET = Rule("dense_with_preset", "a dense run names no preset")
DENSE_WITH_BASELINE = Rule("dense_with_baseline", "a dense run names no baseline_id")
BASELINE_NOT_DENSE = Rule(
    "baseline_not_dense", "baseline_id names a dense run (one naming no experiment is a 404)"
)
BASELINE_NOT_COMPARABLE = Rule(
    "baseline_not_comparable",
    "the baseline's cross-entropy is measured as this run's: the same dataset_name, "
    "dataset_config, vocab_size, seq_len and max_val_tokens (moe_core.comparable)",
)
# PATCH /experiments/{id}: a run's tags and note.
NOTHING_TO_CHANGE = Rule(
    "nothing_to_change", "the body names tags, a note or a priority (one or more)"
)
TAG_ADDED_AND_REMOVED = Rule("tag_added_and_removed", "no tag is both added and removed")
MAX_TAGS = 20  # a run's tags (at POST and after a PATCH)
TOO_MANY_TAGS = Rule("too_many_tags", f"the run has at most {MAX_TAGS} tags after the change")
# What JSON text can carry but the store cannot keep.
TEXT_NOT_STORABLE = Rule(
    "text_not_storable", "every string is valid Unicode (no lone surrogates) without NUL"
)
NUMBER_NOT_FINITE = Rule("number_not_finite", "every number is finite (no NaN or Infinity)")
# The deployment's largest worker (MOE_MAX_GPUS_PER_RUN): with workers scaled from zero none
# may be registered yet, so the API's operator says what one will have.
GPUS_OVER_DEPLOYMENT = Rule(
    "gpus_over_deployment",
    "gpus is at most the GPUs one worker of this deployment has (MOE_MAX_GPUS_PER_RUN; the "
    "refusal says how many)",
)
# The text a worker trains on is the operator's choice (MOE_DATASETS), never fetched from a
# hub on a client's word.
DATASET_NOT_OFFERED = Rule(
    "dataset_not_offered",
    "dataset_name/dataset_config is one this deployment offers (its operator's MOE_DATASETS, "
    "by default only wikitext/wikitext-2-v1; the refusal lists them)",
)


# Every rule by its type: the engine's check (moe_core.config.check) names its problems so.
BY_TYPE = {rule.type: rule for rule in list(globals().values()) if isinstance(rule, Rule)}

# Sweeps (POST /sweeps): the space and its points, as moe_core.search checks them.
SWEEP_CONSISTENT = Rule(
    "value_error",
    "the sweep is consistent: a range's low below its high (above 0 when log, whole numbers "
    "when integer), only searchable fields, a `when` that names another field, a known "
    "preset and base preset, a budget of `trials` for random and tpe, and a grid of at most "
    "10,000 points",
)
SWEEP_TOO_LARGE = Rule(
    "too_many_runs", "its trials x seeds plus one dense run per seed are at most 400 runs"
)
SWEEP_POINT_REFUSED = Rule(
    "sweep_point_refused",
    "every point of the space (each grid point; for random and tpe each choice and each "
    "range's ends), with the base and overrides, is a run the engine accepts and within the "
    "bounds the field has in ConfigOverrides or BaseOverrides",
)
