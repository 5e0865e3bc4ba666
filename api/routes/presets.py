"""The spec's experiment presets and the base presets, as full configs."""

from __future__ import annotations

from fastapi import APIRouter

from api.schemas import Presets
from moe_core.config import BASE_PRESETS, base_config, dense_config, get_experiment_configs

router = APIRouter(prefix="/presets", tags=["presets"])


@router.get("", response_model=Presets)
def read_presets() -> Presets:
    spec = base_config("spec")
    return Presets(
        experiments={
            name: config.model_dump(mode="json")
            for name, config in get_experiment_configs(spec).items()
        },
        dense=dense_config(spec).model_dump(mode="json"),
        base={name: base_config(name).model_dump(mode="json") for name in BASE_PRESETS},
    )
