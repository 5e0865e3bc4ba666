"""From a request to the runs the engine will train, in one call per kind of request
(`resolve_experiment`, `resolve_study`): its presets and partial overrides made into full,
validated engine configs, checked as a whole (moe_core.config.check, the engine's own
rules, and the API's limits that keep what a GPU could not hold off the queue), every
problem a 422 located in the body."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from api import rules
from moe_core.config import (
    BaseConfig,
    ExperimentConfig,
    StudyRun,
    base_config,
    check,
    dense_config,
    get_experiment_configs,
    study_runs,
)
from moe_core.search import SweepConfig, check_sweep

if TYPE_CHECKING:  # api.requests' models state the rules this module checks
    from api.requests import ExperimentCreate, StudyCreate, SweepCreate
    from store.settings import Settings

# Re-exported: the README, the docs and the tests name them as api.resolve's.
from api.limits import DEFAULT_BASE_PRESET, LIMITS, LOWER_LIMITS, MAX_ID, WORKER_ONLY  # noqa: E402

__all__ = ["DEFAULT_BASE_PRESET", "LIMITS", "LOWER_LIMITS", "MAX_ID", "WORKER_ONLY"]


class ConfigRefused(ValueError):
    """A config that the engine rejects; `errors` are pydantic-style, located in the body."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


def resolve_base(*, base_preset: str, overrides: dict[str, Any]) -> BaseConfig:
    """The named base preset, with the request's fields on top."""
    try:
        return base_config(base_preset, **overrides)
    except ValidationError as exc:
        raise ConfigRefused(_located(exc, "base")) from exc


def resolve_config(
    *,
    name: str,
    base: BaseConfig,
    preset: str | None = None,
    dense: bool = False,
    overrides: dict[str, Any],
    field: str = "config",
) -> ExperimentConfig:
    """An experiment's config: the dense defaults, a preset, or the spec defaults, then the
    request's fields (the body's `field`). expert_dim follows the base's ffn_dim unless
    given."""
    if dense:
        start = dense_config(base)
    elif preset is not None:
        start = get_experiment_configs(base)[preset]
    else:
        start = ExperimentConfig(name=name, expert_dim=base.ffn_dim)
    try:
        return ExperimentConfig.model_validate({**start.model_dump(), "name": name, **overrides})
    except ValidationError as exc:
        raise ConfigRefused(_located(exc, field)) from exc


def _located(exc: ValidationError, *field: str | int) -> list[dict[str, Any]]:
    # Report errors where they are in the request body, as FastAPI does for its own.
    return [
        {**error, "loc": ("body", *field, *error["loc"])}
        for error in exc.errors(include_url=False, include_context=False)
    ]


def check_deployment(*, base: BaseConfig, settings: Settings) -> None:
    """What the deployment has: the text a run names is one it offers (MOE_DATASETS: a
    worker fetches nothing from a hub on a client's word), and the GPUs a run asks for are
    what one of its workers has (MOE_MAX_GPUS_PER_RUN: a run no worker can take would wait
    in the queue for ever)."""
    errors = []
    named, offered = f"{base.dataset_name}/{base.dataset_config}", settings.datasets
    if named not in offered:
        errors.append(rules.DATASET_NOT_OFFERED.error(
            ("body", "base", "dataset_name"),
            f"dataset {named!r} is not offered here; this deployment offers "
            f"{', '.join(offered) or 'none'} (MOE_DATASETS)",
            base.dataset_name,
        ))  # fmt: skip
    if base.gpus > settings.max_gpus_per_run:
        errors.append(rules.GPUS_OVER_DEPLOYMENT.error(
            ("body", "base", "gpus"),
            f"the run asks for {base.gpus} GPUs; a worker of this deployment has at most "
            f"{settings.max_gpus_per_run} (MOE_MAX_GPUS_PER_RUN)",
            base.gpus,
        ))  # fmt: skip
    if errors:
        raise ConfigRefused(errors)


def check_run(
    *,
    config: ExperimentConfig,
    base: BaseConfig,
    dense: bool,
    config_loc: tuple[str, ...] = ("body", "config"),
) -> None:
    """What the engine would reject only on a worker, after the data is prepared: the
    engine's own check of the config and base together (moe_core.config.check), and the
    API's limit on the shared experts' width. `config_loc` locates config errors."""
    errors = [
        rules.BY_TYPE[problem.type].error(
            _body_loc(problem.field, config_loc), problem.message, problem.value
        )
        for problem in check(config, base, dense=dense)
    ]
    shared_width = config.num_shared_experts * config.expert_dim
    if not dense and shared_width > LIMITS["expert_dim"]:
        errors.append(
            rules.SHARED_EXPERTS_WIDTH.error(
                (*config_loc, "num_shared_experts"),
                f"the shared experts' width, num_shared_experts x expert_dim = {shared_width},"
                f" is over {LIMITS['expert_dim']}",
                config.num_shared_experts,
            )
        )
    if errors:
        raise ConfigRefused(errors)


def _body_loc(field: str, config_loc: tuple[str, ...]) -> tuple[str, ...]:
    """`config.top_k` or `base.max_train_tokens` where the request body has it."""
    part, _, name = field.partition(".")
    return (*config_loc, name) if part == "config" else ("body", part, name)


def check_base_batch_size(*, base_overrides: dict[str, Any], applies: bool) -> None:
    """`base.batch_size` is the dense baseline's batch size (moe_core.config.dense_config);
    a MoE run's is `config.batch_size`. Where it would not apply, it is refused rather than
    silently ignored."""
    if "batch_size" in base_overrides and not applies:
        raise ConfigRefused(
            [
                rules.BASE_BATCH_SIZE_UNUSED.error(
                    ("body", "base", "batch_size"),
                    "base.batch_size sets only a dense run's batch size; a MoE run's is "
                    "config.batch_size (presets: 16, throughput_opt 32)",
                    base_overrides["batch_size"],
                )
            ]
        )


def check_values(body: Any, loc: tuple[str | int, ...] = ("body",)) -> None:
    """Numbers finite, strings storable: no NUL bytes (Postgres text refuses them) and no
    lone surrogates (not UTF-8). JSON's 1e400 arrives as inf."""
    errors = [rule.error(where, why, None) for where, rule, why in _bad_values(body, loc)]
    if errors:
        raise ConfigRefused(errors)


def _bad_values(value: Any, loc: tuple[str | int, ...]) -> Iterator[tuple[tuple, rules.Rule, str]]:
    if isinstance(value, float) and not math.isfinite(value):
        yield loc, rules.NUMBER_NOT_FINITE, "must be a finite number"
    elif isinstance(value, str):
        # (the schema's pattern refuses NUL in every string field before this runs)
        if "\x00" in value:
            yield loc, rules.TEXT_NOT_STORABLE, "must not contain NUL bytes"
        elif not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                yield loc, rules.TEXT_NOT_STORABLE, "must be valid UTF-8 (no lone surrogates)"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _bad_values(key, (*loc, key)) if isinstance(key, str) else ()
            yield from _bad_values(item, (*loc, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _bad_values(item, (*loc, index))


def resolve_experiment(
    body: ExperimentCreate, *, settings: Settings
) -> tuple[ExperimentConfig, BaseConfig]:
    """POST /experiments' run as the engine will train it, checked as a whole; raises
    ConfigRefused (a 422 naming every problem) otherwise. The baseline_id, a question for
    the store, is the route's."""
    check_values(body.model_dump(exclude_unset=True))
    base_overrides = body.base.model_dump(exclude_unset=True)
    check_base_batch_size(base_overrides=base_overrides, applies=body.dense)
    base = resolve_base(base_preset=body.base_preset, overrides=base_overrides)
    check_deployment(base=base, settings=settings)
    config = resolve_config(name=body.name, base=base, preset=body.preset, dense=body.dense,
                            overrides=body.config.model_dump(exclude_unset=True))  # fmt: skip
    check_run(config=config, base=base, dense=body.dense)
    return config, base


def resolve_study(body: StudyCreate, *, settings: Settings) -> list[StudyRun]:
    """POST /studies' runs, as the engine's study expands them (moe_core.config.study_runs:
    each seed's dense run, then its presets), checked as a whole; raises ConfigRefused."""
    check_values(body.model_dump(exclude_unset=True))
    base_overrides = body.base.model_dump(exclude_unset=True)
    # a study's MoE runs keep their presets' batch sizes: base.batch_size would not apply
    check_base_batch_size(base_overrides=base_overrides, applies=False)
    base = resolve_base(base_preset=body.base_preset, overrides=base_overrides)
    check_deployment(base=base, settings=settings)
    runs = study_runs(base, list(body.experiments), body.seeds)
    for run in runs[: len(runs) // body.seeds]:  # the seeds' runs differ only in their seed
        check_run(config=run.config, base=run.base, dense=run.dense,
                  config_loc=("body", "config") if run.dense else ("body", "experiments"))  # fmt: skip
    return runs


def resolve_sweep(body: SweepCreate, *, settings: Settings) -> SweepConfig:
    """POST /sweeps' sweep as the engine will run it, checked as a whole, by the rules of
    every other body: the base and the overrides as /experiments checks them, each value
    of the space within its field's bounds, then the engine's own check of the sweep
    (moe_core.search.check_sweep: its size, and every grid point or each choice and range
    end as a run). Raises ConfigRefused."""
    check_values(body.model_dump(exclude_unset=True))
    base_overrides = body.base.model_dump(exclude_unset=True)
    # a trial's batch size is its config's (overrides or space): base.batch_size would not apply
    check_base_batch_size(base_overrides=base_overrides, applies=False)
    base = resolve_base(base_preset=body.base_preset, overrides=base_overrides)
    check_deployment(base=base, settings=settings)
    overrides = body.overrides.model_dump(exclude_unset=True)
    config = resolve_config(name=body.name, base=base, preset=body.preset,
                            overrides=overrides, field="overrides")  # fmt: skip
    check_run(config=config, base=base, dense=False, config_loc=("body", "overrides"))
    _check_space_values(body.space.params())
    fields = body.model_dump(exclude_unset=True, exclude={"parallel", "space", "base", "overrides"})
    try:
        sweep = SweepConfig(**fields, base=base_overrides, overrides=overrides,
                            space=body.space.params())  # fmt: skip
    except ValidationError as exc:
        raise ConfigRefused(_located(exc)) from exc
    problems = check_sweep(sweep)
    if problems:
        raise ConfigRefused([
            (rules.SWEEP_TOO_LARGE if " runs (" in p else rules.SWEEP_POINT_REFUSED).error(
                ("body", "space"), p, None
            )
            for p in problems
        ])  # fmt: skip
    return sweep


def _check_space_values(space: dict[str, dict[str, Any]]) -> None:
    """Each choice and each range end of the space, as the field's override takes it (the
    API's bounds: a sweep reaches no size /experiments would refuse)."""
    from api.overrides import BaseOverrides, ConfigOverrides

    errors = []
    for field, param in space.items():
        model = ConfigOverrides if field in ConfigOverrides.model_fields else BaseOverrides
        values = (
            [(("choices", i), v) for i, v in enumerate(param["choices"])]
            if "choices" in param
            else [(("low",), param["low"]), (("high",), param["high"])]
        )
        for where, value in values:
            try:
                model.model_validate({field: value})
            except ValidationError as exc:
                problem = exc.errors(include_url=False)[0]
                errors.append(rules.SWEEP_POINT_REFUSED.error(
                    ("body", "space", field, *where),
                    f"space.{field}: {value!r} is refused: {problem['msg']}", value,
                ))  # fmt: skip
    if errors:
        raise ConfigRefused(errors)
