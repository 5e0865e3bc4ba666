"""The spec's experiment presets and the base presets, as full configs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Query

from api.schemas import Presets
from moe_core.config import BASE_PRESETS, base_config, dense_config, get_experiment_configs
from moe_core.presets import DENSE_UNUSED

router = APIRouter(prefix="/presets", tags=["presets"])


# A Literal of the base presets' names, built at import; a str to a type checker
if TYPE_CHECKING:
    BaseName = str
else:
    BaseName = Literal[tuple(BASE_PRESETS)]


@router.get("", response_model=Presets)
def read_presets(
    *,
    base: Annotated[
        BaseName,
        Query(
            description="the base preset the experiment and dense configs are built on (a "
            "preset's expert width and sizes follow its base)"
        ),
    ] = "spec",
) -> Presets:
    spec = base_config(base)
    return Presets(
        experiments={
            name: config.model_dump(mode="json")
            for name, config in get_experiment_configs(spec).items()
        },
        dense=dense_config(spec).model_dump(mode="json"),
        base={name: base_config(name).model_dump(mode="json") for name in BASE_PRESETS},
        dense_unused=sorted(DENSE_UNUSED),
    )
