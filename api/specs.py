"""From a request's presets and partial overrides to full, validated engine configs."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from moe_core.config import (
    BaseConfig,
    ExperimentConfig,
    base_config,
    dense_config,
    get_experiment_configs,
)


class SpecError(ValueError):
    """A config that the engine rejects; `errors` are pydantic-style, located in the body."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


def resolve_base(*, base_preset: str | None, overrides: dict[str, Any]) -> BaseConfig:
    """The named base preset (default: the spec's), with the request's fields on top."""
    try:
        return base_config(base_preset or "spec", **overrides)
    except ValidationError as exc:
        raise SpecError(_located(exc, "base")) from exc


def resolve_config(
    *,
    name: str,
    base: BaseConfig,
    preset: str | None = None,
    dense: bool = False,
    overrides: dict[str, Any],
) -> ExperimentConfig:
    """An experiment's config: the dense defaults, a preset, or the spec defaults, then the
    request's fields. expert_dim follows the base's ffn_dim unless given."""
    if dense:
        start = dense_config(base)
    elif preset is not None:
        start = get_experiment_configs(base)[preset]
    else:
        start = ExperimentConfig(name=name, expert_dim=base.ffn_dim)
    try:
        return ExperimentConfig.model_validate({**start.model_dump(), "name": name, **overrides})
    except ValidationError as exc:
        raise SpecError(_located(exc, "config")) from exc


def _located(exc: ValidationError, field: str) -> list[dict[str, Any]]:
    # Report errors where they are in the request body, as FastAPI does for its own.
    return [
        {**error, "loc": ("body", field, *error["loc"])}
        for error in exc.errors(include_url=False, include_context=False)
    ]
