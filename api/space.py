"""A sweep's space as a request body gives it (POST /sweeps' `space`): one declared field per
searchable field (moe_core.search.SEARCHABLE), each a choice of values of that field's kind
or, for numbers, a range; whole-number fields are searched in whole numbers. Each value is
then checked against its field's bound in api.overrides (api.resolve.resolve_sweep), so a
sweep reaches no size /experiments would refuse. tests/api/test_overrides.py holds the
space to the searchable fields."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, model_validator
from pydantic import Tag as Arm

from api import rules
from api.overrides import BODY, NO_NUL, JsonInt, Layers, Whole, no_default
from api.rules import stated
from moe_core.config import ExperimentConfig
from moe_core.search import BASE_FIELDS

# The fields a `when` may name: a searched field or any ExperimentConfig field.
# A Literal of the engine's field names, built at import; a str to a type checker
if TYPE_CHECKING:
    WhenField = str
else:
    WhenField = Literal[tuple(dict.fromkeys([*ExperimentConfig.model_fields, *BASE_FIELDS]))]
WhenValue = (
    bool
    | JsonInt
    | float
    | Annotated[str, Field(max_length=200, pattern=NO_NUL)]
    | list[JsonInt]
    | None
)
When = Annotated[
    dict[WhenField, Annotated[list[WhenValue], Field(min_length=1, max_length=100)]],
    Field(description="only where each named field takes one of these values"),
]
MAX_CHOICES = 100  # values one field lists


class IntChoice(BaseModel):
    """Listed whole numbers."""

    model_config = BODY
    choices: list[JsonInt] = Field(min_length=1, max_length=MAX_CHOICES)
    when: When | None = None


class FloatChoice(BaseModel):
    """Listed numbers."""

    model_config = BODY
    choices: list[float] = Field(min_length=1, max_length=MAX_CHOICES)
    when: When | None = None


class BoolChoice(BaseModel):
    """true, false or both."""

    model_config = BODY
    choices: list[bool] = Field(min_length=1, max_length=2)
    when: When | None = None


class LayersChoice(BaseModel):
    """Listed sets of MoE layer indices."""

    model_config = BODY
    choices: list[Layers] = Field(min_length=1, max_length=MAX_CHOICES)
    when: When | None = None


class IntRange(BaseModel):
    """Whole numbers from `low` to `high` (a field of whole numbers is sampled as such)."""

    model_config = BODY
    low: JsonInt
    high: JsonInt
    log: bool = Field(False, description="log-uniform (low > 0)")
    integer: Literal[True] = True
    step: Whole[Annotated[int, Field(ge=1)]] | None = Field(None, description="a grid's spacing")
    when: When | None = None


class FloatRange(BaseModel):
    """Numbers from `low` to `high`, uniform or log-uniform."""

    model_config = BODY
    low: float
    high: float
    log: bool = Field(False, description="log-uniform (low > 0)")
    integer: bool = Field(False, description="whole numbers only (integer bounds)")
    step: Annotated[float, Field(gt=0)] | None = Field(None, description="a grid's spacing")
    when: When | None = None


def _param_kind(value: Any) -> str:
    # `choices` makes a Choice; anything else is read as a range (its errors then say why)
    listed = "choices" in value if isinstance(value, dict) else hasattr(value, "choices")
    return "choice" if listed else "range"


IntParam = Annotated[
    Annotated[IntChoice, Arm("choice")] | Annotated[IntRange, Arm("range")],
    Discriminator(_param_kind),
]
FloatParam = Annotated[
    Annotated[FloatChoice, Arm("choice")] | Annotated[FloatRange, Arm("range")],
    Discriminator(_param_kind),
]


def _searched(kind: str) -> Any:
    # Left out: not searched. Null is not offered (a field is searched or absent).
    return Field(None, description=f"{kind}; absent: the preset's (or overrides') value",
                 json_schema_extra=no_default)  # fmt: skip


class SweepSpace(BaseModel):
    __doc__ = (
        "What a sweep varies: each field a choice (`choices`: listed values) or a range "
        "(`low`..`high`; `log`, `step` for a grid), optionally only `when` other fields take "
        "given values. Every ExperimentConfig field but name and gating_temp_schedule, and "
        f"the base's {', '.join(BASE_FIELDS)}; each value within that field's bounds in "
        "ConfigOverrides or BaseOverrides. "
        + stated(rules.SWEEP_POINT_REFUSED, rules.SWEEP_CONSISTENT)
    )
    model_config = ConfigDict(**BODY, json_schema_extra={"minProperties": 1})
    # The fields in the order the client gave them: the sweep's tables and axes follow it.
    _order: list[str] = PrivateAttr(default_factory=list)

    expert_dim: IntParam = _searched("each expert's FFN width")
    top_k: IntParam = _searched("experts each token is routed to")
    aux_weight: FloatParam = _searched("load-balancing loss weight")
    capacity_factor: FloatParam = _searched("expert capacity factor")
    num_experts: IntParam = _searched("routed experts per MoE layer")
    dropless: BoolChoice = _searched("no expert capacity in training")
    router_z_loss: FloatParam = _searched("router z-loss weight")
    router_jitter: FloatParam = _searched("router input noise")
    num_shared_experts: IntParam = _searched("shared experts")
    aux_free_bias_rate: FloatParam = _searched("aux-loss-free balancing rate")
    dropout: FloatParam = _searched("dropout")
    weight_decay: FloatParam = _searched("weight decay")
    label_smoothing: FloatParam = _searched("label smoothing")
    batch_size: IntParam = _searched("a trial's batch size")
    early_stopping_patience: IntParam = _searched("early-stopping patience")
    moe_layers: LayersChoice = _searched("the base's MoE layers")
    learning_rate: FloatParam = _searched("the base's learning rate")

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: Any) -> SweepSpace:
        space = handler(data)
        if not space.model_fields_set:
            raise ValueError("the space names no field: give at least one")
        given = list(data) if isinstance(data, dict) else list(space.model_fields_set)
        space._order = [field for field in given if field in space.model_fields_set]
        return space

    def params(self) -> dict[str, dict[str, Any]]:
        """The space as the engine reads it (moe_core.search.SweepConfig.space), in the
        client's order."""
        return {field: getattr(self, field).model_dump(exclude_none=True) for field in self._order}
