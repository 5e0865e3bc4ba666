"""Experiment and base configuration, with the spec's defaults.

This module imports no torch: the API validates user configs with it, and the API
image ships without torch.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

# BASE_PRESETS and EXPERIMENT_PRESETS are re-exported (`as`): the CLI and the API take them
# from here, beside the configs they build.
from .presets import BASE_PRESETS as BASE_PRESETS
from .presets import EXPERIMENT_PRESETS as EXPERIMENT_PRESETS
from .presets import FINE_GRAINED_SPLIT, SPEC_EXPERIMENTS

Precision = Literal["auto", "bf16", "fp32"]
CompileMode = Literal["off", "default", "graphs"]


class GatingTempSchedule(BaseModel):
    """Linear annealing of the router temperature: `start` -> `end` over `epochs`, then held."""

    model_config = ConfigDict(extra="forbid")

    start: float = Field(1.0, gt=0, description="temperature at epoch 1")
    end: float = Field(0.5, gt=0, description="temperature from epoch `epochs + 1` on")
    epochs: int = Field(5, ge=1, description="length of the annealing period, in epochs")

    def temperature(self, epoch_index: int) -> float:
        """Temperature for the 0-based epoch `epoch_index`: start at 0, end at `epochs` and after."""
        progress = min(epoch_index / self.epochs, 1.0)
        return self.start + (self.end - self.start) * progress


class RoutingConfig(BaseModel):
    """How an MoE layer routes its tokens, declared once: ExperimentConfig and MoEConfig
    both extend it. The expert count is not here: an experiment may leave it to its base
    (None), a layer always has one."""

    model_config = ConfigDict(extra="forbid")

    # Model architecture: each expert's FFN hidden size
    expert_dim: int = Field(gt=0)
    top_k: int = Field(1, ge=1, description="experts each token is routed to")
    aux_weight: float = Field(
        0.01, ge=0, description="load-balancing loss weight"
    )  # Switch Transformer, sec. 2.2
    capacity_factor: float = Field(1.25, gt=0)  # Switch Transformer uses 1.0-1.25 in training
    # Routing options (docs/routing-options.md): each off by default, so the spec's presets
    # and results are unchanged.
    dropless: bool = Field(
        False, description="no expert capacity in training: nothing is dropped"
    )  # MegaBlocks (Gale et al. 2022): variable-size expert groups; capacity_factor unused
    router_z_loss: float = Field(
        0.0, ge=0, description="router z-loss weight (mean squared log-sum-exp of the logits)"
    )  # ST-MoE (Zoph et al. 2022), sec. 3.1: 1e-3
    router_jitter: float = Field(
        0.0, ge=0, lt=1, description="training-only router input noise U(1-eps, 1+eps)"
    )  # Switch Transformer, sec. 2.4: eps = 1e-2
    num_shared_experts: int = Field(
        0, ge=0, description="experts of expert_dim that every token passes through"
    )  # DeepSeekMoE (Dai et al. 2024), sec. 3.2
    aux_free_bias_rate: float = Field(
        0.0, ge=0, description="auxiliary-loss-free balancing bias update rate; 0 disables"
    )  # DeepSeek-V3, sec. 2.1.2: gamma = 1e-3


# The fields an MoE layer is built from, besides its expert count.
ROUTING_FIELDS = tuple(RoutingConfig.model_fields)


class ExperimentConfig(RoutingConfig):
    """One experiment's MoE, regularisation and training settings (the spec's fields and
    defaults): the routing (RoutingConfig's fields, first) and the rest."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Identification
    name: str = Field(min_length=1, max_length=200)
    # A routing option whose None defers to the base, so an MoE layer's is its own field
    num_experts: int | None = Field(
        None, ge=1, description="routed experts per MoE layer; None: the base's num_experts"
    )  # fine-grained experts (DeepSeekMoE, sec. 3.1): more, narrower ones at equal active size
    # Regularisation
    dropout: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Training
    batch_size: int = Field(16, ge=1)
    early_stopping_patience: int = Field(0, ge=0, description="0 disables early stopping")
    gating_temp_schedule: GatingTempSchedule | None = None

    @model_validator(mode="after")
    def _check_routing(self) -> ExperimentConfig:
        if self.num_experts is not None:  # without a base, only its own count can be checked
            _check_top_k(self.top_k, self.num_experts)
        return self

    def experts(self, base: BaseConfig) -> int:
        """The routed experts per MoE layer this experiment runs with: its own count, else
        the base's."""
        return base.num_experts if self.num_experts is None else self.num_experts

    def moe(self, base: BaseConfig) -> MoEConfig:
        """What this experiment's MoE layers are built from (the base decides the count
        unless the experiment does). Raises ValueError when top_k exceeds that count."""
        return MoEConfig(
            num_experts=self.experts(base), **self.model_dump(include=set(ROUTING_FIELDS))
        )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


class BaseConfig(BaseModel):
    """The hyperparameters of the spec's `main()`, plus data settings and a seed."""

    model_config = ConfigDict(extra="forbid")

    seq_len: int = Field(256, ge=2)
    batch_size: int = Field(16, ge=1)
    hidden_dim: int = Field(256, ge=1)
    num_layers: int = Field(6, ge=1)
    num_heads: int = Field(8, ge=1)
    ffn_dim: int = Field(1024, ge=1)
    num_epochs: int = Field(20, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    vocab_size: int = Field(10000, ge=300)  # byte-level BPE needs 256 bytes + merges
    num_experts: int = Field(8, ge=1)
    moe_layers: list[int] = Field(default_factory=lambda: [2, 4])
    dense_patience: int = Field(
        3, ge=0, description="early-stopping patience of the dense baseline"
    )
    # How a run uses its device (docs: "On a GPU"). Neither changes a CPU run's numbers at
    # their defaults: auto is float32 there, and compile is off.
    precision: Precision = Field(
        "auto",
        description="auto: bf16 autocast on a CUDA device that supports it, else float32; "
        "bf16; fp32. The router, the softmax and the losses stay float32 in bf16 too",
    )
    compile: CompileMode = Field(
        "off",
        description="torch.compile the training and evaluation steps: off; default "
        "(inductor's fused kernels); graphs (the same, replayed as CUDA graphs: "
        "mode='reduce-overhead'; on the CPU the same as default)",
    )
    # The run's parallel layout (docs/distributed.md): `gpus` processes launched by torchrun,
    # each MoE layer's experts split over `expert_parallel` of them, the rest data parallel.
    gpus: int = Field(
        1,
        ge=1,
        description="processes the run trains on, one per GPU (on a CPU worker, processes on "
        "gloo); above 1 the run is launched by torchrun and its global batch split between them",
    )
    expert_parallel: int = Field(
        1,
        ge=1,
        description="ranks each MoE layer's experts are split over (all-to-all between them); "
        "divides gpus and the experts per layer; gpus / expert_parallel replicas of each expert",
    )

    seeds_together: bool | None = Field(
        None,
        description="train a study's (or a sweep trial's) seeds of one configuration as one "
        "stacked model, each still a run of its own: null decides (on a GPU when the stack "
        "fits the run's memory share, never on a CPU); true or false as said",
    )

    # Data: the hub's wikitext-2-v1 unless `data_dir` holds train.txt/valid.txt/test.txt
    dataset_name: str = "wikitext"
    dataset_config: str = "wikitext-2-v1"
    data_dir: str | None = None
    max_train_tokens: int | None = Field(None, ge=2, description="cap on training tokens")
    max_val_tokens: int | None = Field(None, ge=2, description="cap on validation tokens")
    cache_dir: str | None = Field(
        None, description="tokenizer/dataset cache; default ~/.cache/moe_lab"
    )
    seed: int = 1337

    @field_validator("expert_parallel")
    @classmethod
    def _expert_parallel_layout(cls, value: int, info: ValidationInfo) -> int:
        # a field's own check, so that a refusal names expert_parallel (gpus comes before it)
        gpus = info.data.get("gpus")
        if gpus is not None and gpus % value:
            raise PydanticCustomError(
                "expert_parallel_layout",
                "expert_parallel ({expert_parallel}) must divide gpus ({gpus})",
                {"expert_parallel": value, "gpus": gpus},
            )
        return value

    @model_validator(mode="after")
    def _check_shapes(self) -> BaseConfig:
        if self.hidden_dim % self.num_heads:
            raise PydanticCustomError(
                "hidden_dim_heads",
                "hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})",
                {"hidden_dim": self.hidden_dim, "num_heads": self.num_heads},
            )
        bad = [i for i in self.moe_layers if not 0 <= i < self.num_layers]
        if bad:
            raise PydanticCustomError(
                "moe_layers_range",
                "moe_layers {bad} outside 0..{last} (num_layers)",
                {"bad": str(bad), "last": self.num_layers - 1},
            )
        if len(set(self.moe_layers)) != len(self.moe_layers):
            raise PydanticCustomError(
                "moe_layers_repeat",
                "moe_layers has duplicates: {moe_layers}",
                {"moe_layers": str(self.moe_layers)},
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def _check_top_k(top_k: int, num_experts: int, where: str = "num_experts") -> None:
    """The one statement of the rule (a token picks top_k distinct experts). A typed error:
    the API tells its clients each rule by its type (api/rules.py)."""
    if top_k > num_experts:
        raise PydanticCustomError(
            "top_k_over_experts",
            "top_k ({top_k}) exceeds {where} ({num_experts})",
            {"top_k": top_k, "num_experts": num_experts, "where": where},
        )


class MoEConfig(RoutingConfig):
    """What GPTConfig hands whole to each MoELayer: the routing fields (RoutingConfig), the
    expert count resolved against the base, and the evaluation capacity factor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_experts: int = Field(BaseConfig.model_fields["num_experts"].default, ge=1)
    # None: evaluation drops nothing (so its losses do not depend on how it is batched)
    eval_capacity_factor: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check_routing(self) -> MoEConfig:
        _check_top_k(self.top_k, self.num_experts)
        return self


def check(config: ExperimentConfig, base: BaseConfig, *, dense: bool = False) -> list[Problem]:
    """Everything about a config and its base together that neither can check alone, and
    that the engine would otherwise find only on a worker once the data is prepared. The
    engine raises on the first problem (`check_or_raise`); the API answers 422 with all."""
    problems = []
    if not dense:
        where = "config.num_experts" if config.num_experts is not None else "base.num_experts"
        try:
            _check_top_k(config.top_k, config.experts(base), where)
        except PydanticCustomError as exc:
            problems.append(Problem(exc.type, "config.top_k", str(exc), config.top_k))
        experts = config.experts(base)
        if experts % base.expert_parallel:
            where = "config.num_experts" if config.num_experts is not None else "base.num_experts"
            problems.append(Problem(
                "experts_over_ranks",
                "base.expert_parallel",
                f"expert_parallel ({base.expert_parallel}) must divide the experts per layer "
                f"({where} = {experts})",
                base.expert_parallel,
            ))  # fmt: skip
    if config.batch_size % base.gpus:
        problems.append(Problem(
            "batch_over_ranks",
            "base.gpus",
            f"gpus ({base.gpus}) must divide the batch size ({config.batch_size}): each rank "
            "trains an equal share of every batch",
            base.gpus,
        ))  # fmt: skip
    batch_tokens = config.batch_size * (base.seq_len + 1)
    if base.max_train_tokens is not None and base.max_train_tokens < batch_tokens:
        problems.append(Problem(
            "train_tokens_under_batch",
            "base.max_train_tokens",
            f"{base.max_train_tokens} training tokens are fewer than one batch: "
            f"batch_size ({config.batch_size}) x (seq_len + 1) = {batch_tokens}",
            base.max_train_tokens,
        ))  # fmt: skip
    if base.max_val_tokens is not None and base.max_val_tokens < base.seq_len + 1:
        problems.append(Problem(
            "val_tokens_under_block",
            "base.max_val_tokens",
            f"{base.max_val_tokens} validation tokens are fewer than one block of "
            f"seq_len + 1 = {base.seq_len + 1}",
            base.max_val_tokens,
        ))  # fmt: skip
    return problems


def check_or_raise(config: ExperimentConfig, base: BaseConfig, *, dense: bool = False) -> None:
    problems = check(config, base, dense=dense)
    if problems:
        raise ValueError("; ".join(f"{p.field}: {p.message}" for p in problems))


class Problem(NamedTuple):
    """One reason `check` refuses a config: its rule (the type of the API's 422, stated in
    its schema: api/rules.py), the field, as `config.x` or `base.x`, and why."""

    type: str
    field: str
    message: str
    value: Any = None


def base_config(preset: str = "spec", /, **overrides: Any) -> BaseConfig:
    """A `BaseConfig` from a named preset, with field overrides (an unknown one is rejected)."""
    if preset not in BASE_PRESETS:
        raise ValueError(f"unknown base preset {preset!r}; choose from {sorted(BASE_PRESETS)}")
    return BaseConfig(**{**BASE_PRESETS[preset], **overrides})


def _base_relative(base: BaseConfig) -> dict[str, dict[str, Any]]:
    """Preset fields that follow the base's sizes."""
    return {
        "fine_grained": dict(
            num_experts=FINE_GRAINED_SPLIT * base.num_experts,
            expert_dim=max(1, base.ffn_dim // FINE_GRAINED_SPLIT),
        )
    }


def get_experiment_configs(base: BaseConfig | None = None) -> dict[str, ExperimentConfig]:
    """Every predefined experiment; each expert is as wide as the base's dense FFN, except
    fine_grained's (FINE_GRAINED_SPLIT times as many, that much narrower)."""
    base = base or BaseConfig()
    sized = _base_relative(base)
    return {
        name: ExperimentConfig(
            **{"name": name, "expert_dim": base.ffn_dim, **overrides, **sized.get(name, {})}
        )
        for name, overrides in EXPERIMENT_PRESETS.items()
    }


def dense_config(base: BaseConfig | None = None) -> ExperimentConfig:
    """The dense baseline's training settings: spec defaults, early-stopping patience from the base."""
    base = base or BaseConfig()
    return ExperimentConfig(
        name="dense",
        expert_dim=base.ffn_dim,
        batch_size=base.batch_size,
        early_stopping_patience=base.dense_patience,
    )


class StudyRun(NamedTuple):
    """One run of a study: a seed's dense baseline (`preset` None) or one of its
    experiments, with the base it runs on (the study's, at that seed)."""

    name: str  # the member's name: the preset's (or "dense"), and its seed when several
    preset: str | None
    config: ExperimentConfig
    base: BaseConfig
    seed: int

    @property
    def dense(self) -> bool:
        return self.preset is None


def study_runs(
    base: BaseConfig, experiments: list[str] | None = None, seeds: int = 1
) -> list[StudyRun]:
    """The spec's main() as runs: for each seed (base.seed, +1, ...), the dense baseline
    first, then each experiment (default: the spec's four). The one expansion that the
    engine's study and POST /studies both use; each checks the runs (`check`) its own way.
    Raises ValueError on an unknown preset or a seed count under 1."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    names = list(experiments or SPEC_EXPERIMENTS)
    configs = get_experiment_configs(base)
    unknown = sorted(set(names) - set(configs))
    if unknown:
        raise ValueError(f"unknown experiments {unknown}; choose from {sorted(configs)}")
    out = []
    for seed in range(base.seed, base.seed + seeds):
        seeded = base.model_copy(update={"seed": seed})
        members: list[tuple[str, str | None, ExperimentConfig]]
        members = [("dense", None, dense_config(seeded))]
        members += [(name, name, configs[name]) for name in names]
        for name, preset, config in members:
            label = name if seeds == 1 else f"{name} (seed {seed})"
            out.append(StudyRun(label, preset, config, seeded, seed))
    return out
