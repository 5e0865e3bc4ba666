"""The HTTP API's request bodies: an experiment, a study, a sweep, and a run's labels. The
engine's configs they carry are overridden through api.overrides (each field declared there,
with the API's bounds); every body is strict to its JSON types and states every rule it
meets (api.rules), so that a body valid against /openapi.json is accepted or refused only by
a rule the schema states (tests/api/test_fuzz.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from api import rules
from api.limits import DEFAULT_BASE_PRESET, LIMITS, MAX_ID
from api.overrides import (
    BODY,
    NO_NUL,
    BaseOverrides,
    ConfigOverrides,
    Whole,
)
from api.rules import MAX_TAGS, stated
from api.space import SweepSpace
from moe_core.presets import BASE_PRESETS, EXPERIMENT_PRESETS, SPEC_EXPERIMENTS
from moe_core.search import MAX_RUNS, SweepConfig

# The presets' names, from the engine's registry (moe_core.presets): a Literal built at
# import, which pydantic validates and states; to a type checker, which cannot build one,
# a str.
if TYPE_CHECKING:
    ExperimentPreset = str
    BasePreset = str
else:
    ExperimentPreset = Literal[tuple(EXPERIMENT_PRESETS)]
    BasePreset = Literal[tuple(BASE_PRESETS)]
PRESETS_STATED = (
    f"the spec's four experiments ({', '.join(SPEC_EXPERIMENTS)}) or a routing option's "
    f"({', '.join(n for n in EXPERIMENT_PRESETS if n not in SPEC_EXPERIMENTS)}; "
    "docs/routing-options.md)"
)

# A label a researcher filters runs by (`?tag=`): short, and safe in a URL and a shell.
Tag = Annotated[str, StringConstraints(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.:-]+$")]


class ExperimentCreate(BaseModel):
    __doc__ = "One experiment to train. " + stated(rules.TEXT_NOT_STORABLE, rules.NUMBER_NOT_FINITE)

    model_config = ConfigDict(
        **BODY,
        json_schema_extra={
            "examples": [
                {
                    "name": "top2-dropout",
                    "preset": "top2",
                    "base_preset": "tiny",
                    "config": {"dropout": 0.2},
                    "base": {"num_epochs": 2, "seed": 7},
                    "tags": ["dropout-sweep"],
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    preset: ExperimentPreset | None = Field(
        None, description=f"start from a preset: {PRESETS_STATED}"
    )
    config: ConfigOverrides = Field(
        default_factory=ConfigOverrides,
        description="ExperimentConfig fields overriding the preset (or the spec defaults)",
    )
    base: BaseOverrides = Field(
        default_factory=BaseOverrides, description="BaseConfig fields overriding the base preset"
    )
    base_preset: BasePreset = Field(
        DEFAULT_BASE_PRESET,
        description="the base the `base` fields go over; the default is the engine CLI's",
    )
    dense: bool = Field(
        False,
        description="a dense baseline run (no MoE layers). " + stated(rules.DENSE_WITH_PRESET),
    )
    baseline_id: Whole[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        None,
        description="the dense experiment this one's verdict is judged against. "
        + stated(
            rules.DENSE_WITH_BASELINE, rules.BASELINE_NOT_DENSE, rules.BASELINE_NOT_COMPARABLE
        ),
    )
    tags: list[Tag] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description="labels to find the run by (GET /experiments?tag=...), each once",
        json_schema_extra={"uniqueItems": True},
    )

    @field_validator("tags")
    @classmethod
    def _tags_unique(cls, tags: list[str]) -> list[str]:
        if len(set(tags)) != len(tags):
            raise ValueError("tags must not repeat")
        return tags

    @field_validator("dense")
    @classmethod
    def _dense_has_no_preset(cls, dense: bool, info: ValidationInfo) -> bool:
        if dense and info.data.get("preset") is not None:
            raise rules.DENSE_WITH_PRESET.broken("a dense run takes no MoE preset")
        return dense

    @field_validator("baseline_id")
    @classmethod
    def _dense_has_no_baseline(cls, baseline_id: int | None, info: ValidationInfo) -> int | None:
        if baseline_id is not None and info.data.get("dense"):
            raise rules.DENSE_WITH_BASELINE.broken("a dense run is itself a baseline; it has none")
        return baseline_id


class StudyCreate(BaseModel):
    __doc__ = (
        "The spec's main(): a dense baseline plus MoE presets on one base, over one or more "
        "seeds. " + stated(rules.TEXT_NOT_STORABLE, rules.NUMBER_NOT_FINITE)
    )

    model_config = ConfigDict(
        **BODY,
        json_schema_extra={
            "examples": [
                {
                    "name": "first",
                    "base_preset": "tiny",
                    "base": {"num_epochs": 2},
                    "experiments": ["baseline", "top2"],
                    "seeds": 1,
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    base: BaseOverrides = Field(
        default_factory=BaseOverrides,
        description="BaseConfig fields overriding the base preset. "
        + stated(rules.BASE_BATCH_SIZE_UNUSED),
    )
    base_preset: BasePreset = Field(
        DEFAULT_BASE_PRESET,
        description="the base the `base` fields go over; the default is the engine CLI's",
    )
    experiments: list[ExperimentPreset] = Field(
        default_factory=lambda: list(SPEC_EXPERIMENTS),  # the spec's four
        min_length=1,
        description=f"the MoE presets, each once, on the study's base: {PRESETS_STATED}. "
        + stated(rules.TOP_K_OVER_EXPERTS),
        json_schema_extra={"uniqueItems": True},
    )
    seeds: Whole[Annotated[int, Field(ge=1, le=10)]] = Field(
        1,
        description="run the dense baseline and each preset once per seed (base.seed, "
        "base.seed + 1, ...); each preset's verdict then reports mean ± SE over the seeds",
    )

    @field_validator("experiments")
    @classmethod
    def _unique(cls, presets: list[str]) -> list[str]:
        if len(set(presets)) != len(presets):
            raise ValueError("experiments must not repeat a preset")
        return presets


# ---------------------------------------------------------------------------------- sweeps


def _sweep(name: str) -> str | None:
    return SweepConfig.model_fields[name].description


class SweepCreate(BaseModel):
    __doc__ = (
        "A sweep (docs/sweeps.md): a design space searched on one base, each trial run once "
        "per seed and judged against the sweep's dense run of that seed; `parallel` trials "
        "train at once. "
        + stated(
            rules.SWEEP_CONSISTENT,
            rules.SWEEP_TOO_LARGE,
            rules.SWEEP_POINT_REFUSED,
            rules.TEXT_NOT_STORABLE,
            rules.NUMBER_NOT_FINITE,
        )  # fmt: skip
    )
    model_config = ConfigDict(
        **BODY,
        json_schema_extra={
            "examples": [
                {
                    "name": "capacity",
                    "base_preset": "micro",
                    "space": {"capacity_factor": {"choices": [1.0, 2.0]}},
                    "method": "grid",
                    "seeds": 1,
                    "parallel": 2,
                }
            ]
        },
    )

    # A trial's run is named "{name} trial {n} (seed {s})", within a run name's 200
    name: str = Field("sweep", min_length=1, max_length=100, pattern=NO_NUL)
    base_preset: BasePreset = Field("small", description="the base every run shares")
    base: BaseOverrides = Field(
        default_factory=BaseOverrides,
        description="BaseConfig fields over the base preset's, shared by every run (the "
        "dense baselines' too). " + stated(rules.BASE_BATCH_SIZE_UNUSED),
    )
    preset: ExperimentPreset = Field("baseline", description=_sweep("preset"))
    overrides: ConfigOverrides = Field(
        default_factory=ConfigOverrides, description=_sweep("overrides")
    )
    space: SweepSpace
    method: Literal["grid", "random", "tpe"] = "tpe"
    trials: Whole[Annotated[int, Field(ge=1, le=MAX_RUNS)]] | None = Field(
        None, description=_sweep("trials")
    )
    seeds: Whole[Annotated[int, Field(ge=1, le=10)]] = Field(2, description=_sweep("seeds"))
    sampler_seed: Whole[Annotated[int, Field(ge=0, le=LIMITS["seed"])]] = Field(
        0, description="the proposals' random seed"
    )
    objective: Literal["delta_val_ce", "delta_val_ce_at_equal_time", "val_ce"] = "delta_val_ce"
    prune: bool = Field(True, description=_sweep("prune"))
    prune_margin: Annotated[float, Field(ge=0, le=10)] = Field(
        0.0, description=_sweep("prune_margin")
    )
    parallel: Whole[Annotated[int, Field(ge=1, le=64)]] = Field(
        2, description="trials training at once"
    )


# A note is prose, a paragraph or a few: bounded so that a list of runs stays light.
MAX_NOTE_CHARS = 4000
# What PATCH /experiments/{id} changes; everything else about a run is immutable.
MUTABLE = ("tags", "note")


class TagChanges(BaseModel):
    model_config = BODY

    add: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="tags to add (present: kept)",
        json_schema_extra={"uniqueItems": True},
    )  # fmt: skip
    remove: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="tags to remove (absent: fine)",
        json_schema_extra={"uniqueItems": True},
    )  # fmt: skip

    @field_validator("add", "remove")
    @classmethod
    def _unique(cls, tags: list[str]) -> list[str]:
        if len(set(tags)) != len(tags):
            raise ValueError("tags must not repeat")  # as at POST /experiments
        return tags

    @field_validator("remove")
    @classmethod
    def _not_both(cls, remove: list[str], info: ValidationInfo) -> list[str]:
        both = sorted(set(remove) & set(info.data.get("add") or []))
        if both:
            raise rules.TAG_ADDED_AND_REMOVED.broken(
                f"a tag is both added and removed: {', '.join(both)}"
            )
        return remove


class ExperimentUpdate(BaseModel):
    __doc__ = (
        "A run's tags and note (its owner's or an admin's to change) and its priority in the "
        "queue (an admin's), the only fields that change after submission (its config, name "
        "and results are what was run, and stay so); any other field is refused as "
        "immutable. "
        + stated(
            rules.NOTHING_TO_CHANGE,
            rules.TAG_ADDED_AND_REMOVED,
            rules.TOO_MANY_TAGS,
            rules.TEXT_NOT_STORABLE,
        )  # fmt: skip
    )

    model_config = ConfigDict(
        **BODY,
        json_schema_extra={
            "minProperties": 1,
            "examples": [
                {"tags": {"add": ["keep", "paper"], "remove": ["draft"]}},
                {"note": "lr too high from epoch 3: see the spike", "tags": {"add": ["lr"]}},
            ],
        },
    )

    tags: TagChanges | None = Field(
        None,
        description=f"tags to add and remove, applied to the run's (at most {MAX_TAGS} after)",
    )
    note: Annotated[str, StringConstraints(max_length=MAX_NOTE_CHARS, pattern=NO_NUL)] | None = (
        Field(
            None, description=f"the run's note, up to {MAX_NOTE_CHARS} characters; null clears it"
        )
    )

    priority: Whole[Annotated[int, Field(ge=-1000, le=1000)]] | None = Field(
        None,
        description="admins only: the run's place among equals in the fair queue "
        "(higher first; null resets it to 0)",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _immutable(cls, data: Any, handler: Any) -> ExperimentUpdate:
        """A field other than tags, note and priority is refused by name, as immutable (pydantic's
        own word for an unknown field, "extra", would suggest a typo)."""
        if isinstance(data, dict) and not data:
            raise rules.NOTHING_TO_CHANGE.broken("give tags, a note, a priority, or more")
        try:
            return handler(data)
        except ValidationError as exc:
            if not any(_is_unknown_field(error) for error in exc.errors()):
                raise
            # rebuilt whole: each error keeps its type, location and message
            errors = [
                InitErrorDetails(
                    type=PydanticCustomError(
                        "immutable",
                        "{field} is immutable: a run changes only its tags, note and priority",
                        {"field": str(error["loc"][-1])},
                    )
                    if _is_unknown_field(error)
                    else PydanticCustomError(error["type"], error["msg"], error.get("ctx")),
                    loc=error["loc"],
                    input=error["input"],
                )
                for error in exc.errors()
            ]
            raise ValidationError.from_exception_data(exc.title, errors) from None


def _is_unknown_field(error: Any) -> bool:
    return error["type"] == "extra_forbidden" and len(error["loc"]) == 1
