"""The engine's configs as a request body overrides them: `ConfigOverrides` (ExperimentConfig's
fields) and `BaseOverrides` (BaseConfig's), each field declared here with its JSON type and
its bounds, its description and spec default read from the engine's field. Every body that
carries a config goes through these: POST /experiments, /studies and /sweeps (whose space
values are checked against the same fields). tests/api/test_overrides.py holds each class to
its engine model, so that a field added, removed or re-bounded in one place only fails.

What the API adds to the engine's rules: sizes bounded (resolve.LIMITS), strings bounded and
storable, strict JSON types (`"2"` is not an integer), and the worker's own paths
(resolve.WORKER_ONLY) absent: a client never chooses where a worker reads or writes.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from api import rules
from api.limits import LIMITS
from api.rules import Rule, stated
from moe_core.config import BaseConfig, ExperimentConfig, GatingTempSchedule, Precision
from moe_core.config import CompileMode as Compile


def _integral(value: Any) -> Any:
    # JSON Schema's integer is any number without a fraction part: 2.0 is the integer 2.
    return int(value) if isinstance(value, float) and value.is_integer() else value


T = TypeVar("T")
# An integer as JSON Schema has it: 2 or 2.0, never "2" or true (body models are strict).
# Whole[Annotated[int, Field(ge=1)]] puts the bounds before the conversion, where pydantic
# and the schema read them (after it they would be neither checked as such nor shown).
Whole = Annotated[T, BeforeValidator(_integral)]
JsonInt = Whole[int]

# Request bodies take the JSON types their schema names, and nothing else: strict, so that
# every body the API accepts is valid against /openapi.json ("2" is not an integer).
BODY = ConfigDict(extra="forbid", strict=True)

# No NUL character (Postgres text cannot hold one): a pattern a JSON Schema validator checks.
NO_NUL = r"^[^\x00]*$"
# A string a run stores: bounded, and storable.
Text = Annotated[str, Field(max_length=200, pattern=NO_NUL)]


def no_default(schema: dict[str, Any]) -> None:
    # A field left out keeps the preset's value; its own default (None) is not a value a
    # client may send, so the schema names none.
    schema.pop("default", None)


def _unique_no_default(schema: dict[str, Any]) -> None:
    no_default(schema)
    schema["uniqueItems"] = True  # BaseConfig refuses a repeated moe_layers index


def overriding(model: type[BaseModel], name: str, *said: Rule, unique: bool = False) -> Any:
    """The Field of an override of `model.name`: absent by default (None: keep the preset's
    value), described as the engine describes it, with its spec default and the rules
    beyond its schema (`said`). Null is offered only where the engine's value may be null."""
    info = model.model_fields[name]
    description = info.description or ""
    default = info.get_default(call_default_factory=True)
    if not info.is_required() and (default is not None or info.default_factory is not None):
        description = f"{description} (spec default: {default!r})".lstrip()
    if said:
        description = (
            f"{description.rstrip('.')}. {stated(*said)}" if description else stated(*said)
        )
    nullable = type(None) in getattr(info.annotation, "__args__", ())
    extra = None if nullable else _unique_no_default if unique else no_default
    return Field(None, description=description, json_schema_extra=extra)


def _experiment(name: str, *said: Rule) -> Any:
    return overriding(ExperimentConfig, name, *said)


def _base(name: str, *said: Rule, unique: bool = False) -> Any:
    return overriding(BaseConfig, name, *said, unique=unique)


class GatingTempScheduleBody(BaseModel):
    __doc__ = GatingTempSchedule.__doc__
    model_config = ConfigDict(**BODY, title="GatingTempSchedule")

    start: Annotated[float, Field(gt=0)] = overriding(GatingTempSchedule, "start")
    end: Annotated[float, Field(gt=0)] = overriding(GatingTempSchedule, "end")
    epochs: Whole[Annotated[int, Field(ge=1, le=LIMITS["num_epochs"])]] = overriding(
        GatingTempSchedule, "epochs"
    )


class ConfigOverrides(BaseModel):
    __doc__ = (
        "ExperimentConfig fields over the preset's (or the spec defaults); any field left out "
        "keeps its preset value. expert_dim follows the base's ffn_dim unless given. "
        + stated(rules.TOP_K_OVER_EXPERTS)
    )
    model_config = BODY

    name: Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)] = _experiment("name")
    expert_dim: Whole[Annotated[int, Field(gt=0, le=LIMITS["expert_dim"])]] = _experiment(
        "expert_dim"
    )
    top_k: Whole[Annotated[int, Field(ge=1)]] = _experiment("top_k", rules.TOP_K_OVER_EXPERTS)
    aux_weight: Annotated[float, Field(ge=0)] = _experiment("aux_weight")
    capacity_factor: Annotated[float, Field(gt=0)] = _experiment("capacity_factor")
    num_experts: Whole[Annotated[int, Field(ge=1, le=LIMITS["num_experts"])]] | None = _experiment(
        "num_experts"
    )
    dropless: bool = _experiment("dropless")
    router_z_loss: Annotated[float, Field(ge=0, le=LIMITS["router_z_loss"])] = _experiment(
        "router_z_loss"
    )
    router_jitter: Annotated[float, Field(ge=0, lt=1)] = _experiment("router_jitter")
    num_shared_experts: Whole[Annotated[int, Field(ge=0, le=LIMITS["num_shared_experts"])]] = (
        _experiment("num_shared_experts", rules.SHARED_EXPERTS_WIDTH)
    )
    aux_free_bias_rate: Annotated[float, Field(ge=0, le=LIMITS["aux_free_bias_rate"])] = (
        _experiment("aux_free_bias_rate")
    )
    dropout: Annotated[float, Field(ge=0, lt=1)] = _experiment("dropout")
    weight_decay: Annotated[float, Field(ge=0)] = _experiment("weight_decay")
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = _experiment("label_smoothing")
    batch_size: Whole[Annotated[int, Field(ge=1, le=LIMITS["batch_size"])]] = _experiment(
        "batch_size"
    )
    early_stopping_patience: Whole[Annotated[int, Field(ge=0)]] = _experiment(
        "early_stopping_patience"
    )
    gating_temp_schedule: GatingTempScheduleBody | None = _experiment("gating_temp_schedule")


# indices of layers, each once (within num_layers: a rule across fields)
Layer = Whole[Annotated[int, Field(ge=0, lt=LIMITS["num_layers"])]]
Layers = Annotated[list[Layer], Field(max_length=LIMITS["num_layers"])]


class BaseOverrides(BaseModel):
    __doc__ = (
        "BaseConfig fields over the base preset's; any field left out keeps the preset's value. "
        "data_dir and cache_dir are the worker's (MOE_DATA_DIR, MOE_CACHE_DIR), not a client's; "
        "the text is the deployment's, one of its MOE_DATASETS. "
        + stated(
            rules.HIDDEN_DIM_HEADS,
            rules.MOE_LAYERS_RANGE,
            rules.DATASET_NOT_OFFERED,
            rules.EXPERT_PARALLEL_LAYOUT,
        )
    )
    model_config = BODY

    seq_len: Whole[Annotated[int, Field(ge=2, le=LIMITS["seq_len"])]] = _base("seq_len")
    batch_size: Whole[Annotated[int, Field(ge=1, le=LIMITS["batch_size"])]] = _base(
        "batch_size", rules.BASE_BATCH_SIZE_UNUSED
    )
    hidden_dim: Whole[Annotated[int, Field(ge=1, le=LIMITS["hidden_dim"])]] = _base("hidden_dim")
    num_layers: Whole[Annotated[int, Field(ge=1, le=LIMITS["num_layers"])]] = _base("num_layers")
    num_heads: Whole[Annotated[int, Field(ge=1, le=LIMITS["num_heads"])]] = _base("num_heads")
    ffn_dim: Whole[Annotated[int, Field(ge=1, le=LIMITS["ffn_dim"])]] = _base("ffn_dim")
    num_epochs: Whole[Annotated[int, Field(ge=1, le=LIMITS["num_epochs"])]] = _base("num_epochs")
    learning_rate: Annotated[float, Field(gt=0)] = _base("learning_rate")
    vocab_size: Whole[Annotated[int, Field(ge=300, le=LIMITS["vocab_size"])]] = _base("vocab_size")
    num_experts: Whole[Annotated[int, Field(ge=1, le=LIMITS["num_experts"])]] = _base("num_experts")
    moe_layers: Layers = _base("moe_layers", unique=True)
    dense_patience: Whole[Annotated[int, Field(ge=0)]] = _base("dense_patience")
    precision: Precision = _base("precision")
    compile: Compile = _base("compile")
    gpus: Whole[Annotated[int, Field(ge=1, le=LIMITS["gpus"])]] = _base(
        "gpus", rules.GPUS_OVER_DEPLOYMENT, rules.BATCH_OVER_RANKS
    )
    expert_parallel: Whole[Annotated[int, Field(ge=1, le=LIMITS["gpus"])]] = _base(
        "expert_parallel", rules.EXPERT_PARALLEL_LAYOUT, rules.EXPERTS_OVER_RANKS
    )
    seeds_together: bool | None = _base("seeds_together")
    dataset_name: Text = _base("dataset_name", rules.DATASET_NOT_OFFERED)
    dataset_config: Text = _base("dataset_config", rules.DATASET_NOT_OFFERED)
    max_train_tokens: Whole[Annotated[int, Field(ge=2)]] | None = _base(
        "max_train_tokens", rules.TRAIN_TOKENS_UNDER_BATCH
    )
    max_val_tokens: Whole[Annotated[int, Field(ge=2)]] | None = _base(
        "max_val_tokens", rules.VAL_TOKENS_UNDER_BLOCK
    )
    seed: Whole[Annotated[int, Field(ge=0, le=LIMITS["seed"])]] = _base("seed")
