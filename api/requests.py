"""The HTTP API's request bodies: an experiment, a study, and the overrides of the
engine's configs they carry (generated from ExperimentConfig and BaseConfig, so that a
field is declared once), strict to their JSON types and stating every rule they meet."""

from __future__ import annotations

from collections.abc import Sequence
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from api import rules
from api.resolve import DEFAULT_BASE_PRESET, LIMITS, LOWER_LIMITS, MAX_ID, WORKER_ONLY
from api.rules import MAX_TAGS, Rule, stated
from moe_core.config import BaseConfig, ExperimentConfig
from moe_core.presets import BASE_PRESETS, EXPERIMENT_PRESETS, SPEC_EXPERIMENTS

# The presets' names, from the engine's registry (moe_core.presets).
ExperimentPreset = Literal[tuple(EXPERIMENT_PRESETS)]  # type: ignore[valid-type]
BasePreset = Literal[tuple(BASE_PRESETS)]  # type: ignore[valid-type]
PRESETS_STATED = (
    f"the spec's four experiments ({', '.join(SPEC_EXPERIMENTS)}) or a routing option's "
    f"({', '.join(n for n in EXPERIMENT_PRESETS if n not in SPEC_EXPERIMENTS)}; "
    "docs/routing-options.md)"
)

# A label a researcher filters runs by (`?tag=`): short, and safe in a URL and a shell.
Tag = Annotated[str, StringConstraints(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.:-]+$")]


def _integral(value: Any) -> Any:
    # JSON Schema's integer is any number without a fraction part: 2.0 is the integer 2.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def json_int(*constraints: Any) -> Any:
    """An integer as JSON Schema has it: 2 or 2.0, never "2" or true (body models are
    strict). The constraints go on the integer itself, where the schema shows them."""
    value = Annotated[int, *constraints] if constraints else int
    return Annotated[value, BeforeValidator(_integral)]


# Request bodies take the JSON types their schema names, and nothing else: strict, so that
# every body the API accepts is valid against /openapi.json ("2" is not an integer).
BODY = ConfigDict(extra="forbid", strict=True)


def _json_typed(annotation: Any, constraints: Sequence[Any] = ()) -> Any:
    """`annotation` as a body takes it, with `constraints` on its value (not on null): ints
    as json_int, models as strict copies."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is int:
        return json_int(*constraints)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _body_model(annotation)
    if origin in (Union, UnionType):
        arms = [arm if arm is type(None) else _json_typed(arm, constraints) for arm in args]
        return Union[tuple(arms)]  # noqa: UP007 (built from parts)
    if origin is list:
        annotation = list[_json_typed(args[0])]
    return Annotated[annotation, *constraints] if constraints else annotation


def _body_model(model: type[BaseModel]) -> type[BaseModel]:
    """A strict copy of an engine model (GatingTempSchedule), its fields and constraints kept."""
    fields = {
        name: (
            _json_typed(info.annotation, info.metadata),
            Field(info.default, description=info.description),
        )
        for name, info in model.model_fields.items()
    }
    return create_model(model.__name__, __config__=BODY, __doc__=model.__doc__, **fields)


def _no_default(schema: dict[str, Any]) -> None:
    # A field left out keeps the preset's value; its own default (None) is not a value a
    # client may send, so the schema names none.
    schema.pop("default", None)


def _overrides_of(
    model: type[BaseModel], name: str, doc: str, rules: dict[str, tuple[Rule, ...]]
) -> type[BaseModel]:
    """`model`'s fields, each optional with its constraints and description kept, unknown
    ones rejected: generated, so a request body cannot drift from the engine's config.
    Sizes get the API's bounds (resolve.LIMITS), strings and lists a maximum length; the
    worker's own paths (resolve.WORKER_ONLY) are not a client's to give. A field takes null
    only where the engine's value may be null (num_experts: the base's; max_train_tokens:
    no cap): elsewhere null would mean nothing, so the schema does not offer it.
    `rules` adds to a field's description the rules beyond its schema (api.rules)."""
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        if field_name in WORKER_ONLY:
            continue
        bounds: dict[str, Any] = {}
        if field_name in LIMITS:
            bounds["le"] = LIMITS[field_name]
        if field_name in LOWER_LIMITS:
            bounds["ge"] = LOWER_LIMITS[field_name]
        if info.annotation in (str, str | None):
            # Postgres text holds no NUL character: said in the schema, not found on a worker
            bounds["pattern"] = NO_NUL
            if not _has_max_length(info):
                bounds["max_length"] = 200
        if field_name == "moe_layers":
            bounds["max_length"] = LIMITS["num_layers"]
        constraints = [*info.metadata, Field(**bounds)] if bounds else info.metadata
        annotation = _json_typed(info.annotation, constraints)
        extra: Any = None
        if field_name == "moe_layers":
            # indices of layers, each once (within num_layers: a rule across fields)
            layer = json_int(Field(ge=0, lt=LIMITS["num_layers"]))
            annotation = Annotated[list[layer], *constraints]
            extra = {"uniqueItems": True}
        elif type(None) not in get_args(info.annotation):
            extra = _no_default
        default = info.get_default(call_default_factory=True)
        description = info.description or ""
        if not info.is_required() and (default is not None or info.default_factory is not None):
            description = f"{description} (spec default: {default!r})".lstrip()
        if field_name in rules:
            said = stated(*rules[field_name])
            description = f"{description.rstrip('.')}. {said}" if description else said
        fields[field_name] = (
            annotation,
            Field(None, description=description, json_schema_extra=extra),
        )
    return create_model(name, __config__=BODY, __doc__=doc, **fields)


def _has_max_length(info: FieldInfo) -> bool:
    return any(getattr(item, "max_length", None) is not None for item in info.metadata)


# No NUL character (Postgres text cannot hold one): a pattern a JSON Schema validator checks.
NO_NUL = r"^[^\x00]*$"

ConfigOverrides = _overrides_of(
    ExperimentConfig,
    "ConfigOverrides",
    "ExperimentConfig fields over the preset's (or the spec defaults); any field left out "
    "keeps its preset value. expert_dim follows the base's ffn_dim unless given. "
    + stated(rules.TOP_K_OVER_EXPERTS),
    {"top_k": (rules.TOP_K_OVER_EXPERTS,), "num_shared_experts": (rules.SHARED_EXPERTS_WIDTH,)},
)
BaseOverrides = _overrides_of(
    BaseConfig,
    "BaseOverrides",
    "BaseConfig fields over the base preset's; any field left out keeps the preset's value. "
    "data_dir and cache_dir are the worker's (MOE_DATA_DIR, MOE_CACHE_DIR), not a client's. "
    + stated(rules.HIDDEN_DIM_HEADS, rules.MOE_LAYERS_RANGE),
    {
        "batch_size": (rules.BASE_BATCH_SIZE_UNUSED,),
        "max_train_tokens": (rules.TRAIN_TOKENS_UNDER_BATCH,),
        "max_val_tokens": (rules.VAL_TOKENS_UNDER_BLOCK,),
    },
)


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
    config: ConfigOverrides = Field(  # type: ignore[valid-type]
        default_factory=ConfigOverrides,
        description="ExperimentConfig fields overriding the preset (or the spec defaults)",
    )
    base: BaseOverrides = Field(  # type: ignore[valid-type]
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
    baseline_id: json_int(Field(ge=1, le=MAX_ID)) | None = Field(  # type: ignore[valid-type]
        None,
        description="the dense experiment this one's verdict is judged against. "
        + stated(rules.DENSE_WITH_BASELINE, rules.BASELINE_NOT_DENSE),
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
    base: BaseOverrides = Field(  # type: ignore[valid-type]
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
    seeds: json_int(Field(ge=1, le=10)) = Field(  # type: ignore[valid-type]
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
        "A run's tags and note, the only fields that change after submission (its config, "
        "name and results are what was run, and stay so); any other field is refused as "
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

    @model_validator(mode="wrap")
    @classmethod
    def _immutable(cls, data: Any, handler: Any) -> ExperimentUpdate:
        """A field other than tags and note is refused by name, as immutable (pydantic's
        own word for an unknown field, "extra", would suggest a typo)."""
        if isinstance(data, dict) and not data:
            raise rules.NOTHING_TO_CHANGE.broken("give tags, a note, or both")
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
                        "{field} is immutable: a run changes only its tags and note",
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
