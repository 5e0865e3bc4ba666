"""A sweep's design space and how its points are proposed: torch-free, so that whatever
accepts a sweep (the engine's `sweep` command, a service) checks it whole before anything
trains.

A space maps a field to a `Choice` (listed values) or a `Range` (`low`..`high`, uniform or
log-uniform, integer or not); either may apply only `when` other fields take given values.
A field is one of ExperimentConfig's or one of `BASE_FIELDS` (a few BaseConfig fields that
change the model or its training: the dense baseline keeps the sweep's base, so a trial is
always judged against the same dense run of its seed).

Here: the space, its grid, the checks, and how a trial is judged (its objective, the
ranking). Proposals, pruning and importances come from Optuna: moe_core.proposals.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from .config import BASE_PRESETS, EXPERIMENT_PRESETS, BaseConfig, ExperimentConfig
from .verdict_records import MIN_USAGE_TARGET, Objective

# BaseConfig fields a sweep may vary: the model's MoE layout and the optimiser's rate. The
# rest of the base (sizes, data, epochs) is the sweep's, shared with its dense baselines.
BASE_FIELDS = ("num_experts", "moe_layers", "learning_rate")
# ExperimentConfig fields that name or schedule rather than configure a trial.
NOT_SEARCHABLE = ("name", "gating_temp_schedule")
SEARCHABLE = tuple(f for f in ExperimentConfig.model_fields if f not in NOT_SEARCHABLE) + tuple(
    f for f in BASE_FIELDS if f not in ExperimentConfig.model_fields
)
MAX_RUNS = 400  # trials x seeds + the dense runs: more is a 422 / an error saying how many
MAX_GRID = 10_000  # points a grid may expand to (each is checked before anything runs)

Value = bool | int | float | str | list[int] | None


class Choice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    choices: list[Value] = Field(min_length=1, max_length=100)
    when: dict[str, list[Value]] | None = Field(
        None, description="only where each named field takes one of these values"
    )


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid")

    low: float
    high: float
    log: bool = Field(False, description="log-uniform (low > 0)")
    integer: bool = False
    step: float | None = Field(None, gt=0, description="a grid's spacing (grid only)")
    when: dict[str, list[Value]] | None = None

    @model_validator(mode="after")
    def _check(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.integer and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an integer range needs integer bounds")
        return self

    def grid(self, field: str) -> list[float | int]:
        if self.step is None:
            if not self.integer:
                raise ValueError(f"space.{field}: a grid needs choices, an integer range or a step")
            step: float = 1
        else:
            step = self.step
        n = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        if n > MAX_GRID:
            raise ValueError(f"space.{field}: a grid of {n:,} values; at most {MAX_GRID:,}")
        values = [self.low + i * step for i in range(n)]
        return [int(round(v)) for v in values] if self.integer else values


def _param_kind(value: Any) -> str:
    # A Choice lists `choices`; anything else is read as a Range (its errors then say why).
    return (
        "choice"
        if isinstance(value, dict | Choice) and (not isinstance(value, dict) or "choices" in value)
        else "range"
    )


Param = Annotated[
    Annotated[Choice, Tag("choice")] | Annotated[Range, Tag("range")], Discriminator(_param_kind)
]


class SweepConfig(BaseModel):
    """What a sweep searches, how, and on what: a base preset with overrides, the
    experiment preset every trial starts from with overrides, the space, the method, the
    budget and the seeds each trial (and each dense baseline) runs with."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("sweep", min_length=1, max_length=200)
    base_preset: str = "small"
    base: dict[str, Any] = Field(default_factory=dict, description="BaseConfig overrides")
    preset: str = Field("baseline", description="the experiment preset each trial starts from")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="ExperimentConfig fields every trial shares"
    )
    space: dict[str, Param] = Field(min_length=1)
    method: Literal["grid", "random", "tpe"] = "tpe"
    trials: int | None = Field(None, ge=1, description="the budget; grid: default every point")
    seeds: int = Field(2, ge=1, le=10, description="runs per trial, paired with dense by seed")
    sampler_seed: int = 0
    objective: Literal["delta_val_ce", "delta_val_ce_at_equal_time", "val_ce"] = "delta_val_ce"
    prune: bool = Field(True, description="Optuna's median pruner on each trial's val CE")
    prune_margin: float = Field(
        0.0, ge=0, le=10,
        description="nats: prune only a trial worse than the median by more than this (0: "
        "worse at all, Optuna's median pruner); about a seed's noise keeps the pruner off "
        "differences noise makes",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if self.base_preset not in BASE_PRESETS:
            raise ValueError(
                f"base_preset: unknown {self.base_preset!r}; choose from {sorted(BASE_PRESETS)}"
            )
        if self.preset not in EXPERIMENT_PRESETS:
            raise ValueError(
                f"preset: unknown {self.preset!r}; choose from {sorted(EXPERIMENT_PRESETS)}"
            )
        unknown = sorted(set(self.space) - set(SEARCHABLE))
        if unknown:
            raise ValueError(f"space: cannot search {unknown}; searchable: {', '.join(SEARCHABLE)}")
        for field, param in self.space.items():
            for other in param.when or {}:
                if other not in self.space and other not in ExperimentConfig.model_fields:
                    raise ValueError(f"space.{field}.when: unknown field {other!r}")
                if other == field:
                    raise ValueError(f"space.{field}.when: a field cannot depend on itself")
        if self.method != "grid" and self.trials is None:
            raise ValueError(f"trials: {self.method} needs a budget of trials")
        return self  # fmt: skip

    def base_config(self) -> BaseConfig:
        from .config import base_config

        return base_config(self.base_preset, **self.base)

    def trial_configs(
        self, params: Mapping[str, Any], base: BaseConfig, number: int
    ) -> tuple[ExperimentConfig, BaseConfig]:
        """A trial's ExperimentConfig and BaseConfig: the preset, the overrides, then the
        trial's values (BaseConfig's fields on the base)."""
        from .config import get_experiment_configs

        start = get_experiment_configs(base)[self.preset].model_dump()
        experiment = {k: v for k, v in params.items() if k in ExperimentConfig.model_fields}
        base_part = {k: v for k, v in params.items() if k not in ExperimentConfig.model_fields}
        config = ExperimentConfig(**{**start, **self.overrides, **experiment,
                                     "name": f"{self.name} trial {number}"})  # fmt: skip
        # validated, not copied: a searched moe_layers must fit the base's num_layers
        return config, BaseConfig.model_validate({**base.model_dump(), **base_part})

    def runs(self) -> int:
        """Runs the sweep trains at most: trials x seeds, and one dense run per seed."""
        return self.budget() * self.seeds + self.seeds

    def budget(self) -> int:
        if self.method == "grid":
            points = len(grid_points(self.space))
            return min(points, self.trials) if self.trials else points
        assert self.trials is not None
        return self.trials


def _active(param: Param, point: Mapping[str, Any]) -> bool:
    return all(point.get(field) in values for field, values in (param.when or {}).items())


def _order(space: Mapping[str, Param]) -> list[str]:
    """Fields with conditions after the fields they depend on."""
    done: list[str] = []
    pending = list(space)
    while pending:
        ready = [
            f for f in pending if all(o in done or o not in space for o in space[f].when or {})
        ]
        if not ready:
            raise ValueError(f"space: conditions form a cycle among {pending}")
        done += ready
        pending = [f for f in pending if f not in ready]
    return done


def grid_points(space: Mapping[str, Param]) -> list[dict[str, Any]]:
    """Every point of a grid, in order: the product of each field's values, a conditional
    field only where its condition holds (and absent elsewhere), without repeats."""
    sizes = [len(p.choices) if isinstance(p, Choice) else len(p.grid(f)) for f, p in space.items()]
    if math.prod(sizes) > MAX_GRID:  # conditional fields count in full: an upper bound
        raise ValueError(
            f"space: a grid of up to {math.prod(sizes):,} points; at most {MAX_GRID:,}"
        )
    points: list[dict[str, Any]] = [{}]
    for field in _order(space):
        param = space[field]
        values = param.choices if isinstance(param, Choice) else param.grid(field)
        grown = []
        for point in points:
            if _active(param, point):
                grown += [{**point, field: v} for v in values]
            else:
                grown.append(point)
        points = grown
    seen, unique = set(), []
    for point in points:
        key = json.dumps(point, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(point)
    return unique


def check_sweep(sweep: SweepConfig) -> list[str]:
    """Everything wrong with a sweep as a whole, before anything runs: its size against
    MAX_RUNS, and each point's configuration (every grid point; for random and TPE, each
    choice and each range's ends, one field at a time). Empty when it can run."""
    from .config import check, dense_config

    problems = []
    try:
        base = sweep.base_config()
    except ValueError as exc:
        return [f"base: {exc}"]
    try:
        runs = sweep.runs()
    except ValueError as exc:
        return [str(exc)]
    if runs > MAX_RUNS:
        problems.append(f"the sweep would train {runs} runs ({sweep.budget()} trials x "
                        f"{sweep.seeds} seeds + {sweep.seeds} dense); at most {MAX_RUNS}")  # fmt: skip
    problems += [f"dense: {p.message}" for p in check(dense_config(base), base, dense=True)]
    points = (
        grid_points(sweep.space)[: sweep.budget()]
        if sweep.method == "grid"
        else _corners(sweep.space)
    )
    for number, point in enumerate(points):
        try:
            config, trial_base = sweep.trial_configs(point, base, number)
        except ValueError as exc:  # pydantic's ValidationError included
            problems.append(f"{_describe(point)}: {_first_line(exc)}")
            continue
        problems += [
            f"{_describe(point)}: {p.field}: {p.message}" for p in check(config, trial_base)
        ]
    return list(dict.fromkeys(problems))  # fmt: skip


def _corners(space: Mapping[str, Param]) -> list[dict[str, Any]]:
    points = []
    for field, param in space.items():
        values: list[Value]
        if isinstance(param, Choice):
            values = param.choices
        elif param.integer:
            values = [int(param.low), int(param.high)]
        else:
            values = [param.low, param.high]
        points += [{field: v} for v in values]
    return points


def _describe(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "the preset"


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:3])


# ------------------------------------------------------------------------ judging


def rank(trials: list[dict[str, Any]]) -> list[int]:
    """Numbers of the trials that can be best, best first: completed, every seed's router
    healthy (tertiary), a finite objective; ordered by the objective's mean."""
    eligible = [
        t for t in trials
        if t["state"] == "complete" and t["objective"]["mean"] is not None
        and math.isfinite(t["objective"]["mean"])
    ]  # fmt: skip
    return [t["number"] for t in sorted(eligible, key=lambda t: t["objective"]["mean"])]


# What each state that keeps a trial from being best is called in `why_no_best`.
_KEPT_OUT = {
    "tertiary_failed": "failed tertiary", "pruned": "pruned", "failed": "failed",
    "cancelled": "cancelled", "complete": "without an objective", "running": "running",
}  # fmt: skip


def why_no_best(trials: list[dict[str, Any]], least_usage: float | None = None) -> str | None:
    """Why no trial can be best (None when one can): how many trials are in each state
    that rules a trial out, and for collapsed routers the rule and the least used expert
    seen (`least_usage`, percent). Without a best there is no ranking and no importance,
    so the reader needs this line to know whether to wait, widen the space or fix it."""
    if rank(trials):
        return None
    if not trials:
        return "no best trial: none has been proposed yet"
    counts = {state: sum(t["state"] == state for t in trials) for state in _KEPT_OUT}
    parts = [f"{n} {_KEPT_OUT[state]}" for state, n in counts.items() if n]
    if len(parts) == 1 and len(trials) > 1:  # "all 3 failed tertiary", "both running"
        (state,) = (s for s, n in counts.items() if n)
        parts = [f"{'both' if len(trials) == 2 else f'all {len(trials)}'} {_KEPT_OUT[state]}"]
    if counts["tertiary_failed"]:
        least = f"; the least used got {least_usage:.1f}%" if least_usage is not None else ""
        rule = f"a router collapsed: every expert must get ≥ {MIN_USAGE_TARGET:g}% of assignments"
        parts = [p + f" ({rule}{least})" if "tertiary" in p else p for p in parts]
    head = "no best trial yet" if counts["running"] else "no best trial, none passed"
    return f"{head}: {', '.join(parts)}"


def training_seconds(result: Mapping[str, Any], seq_len: int) -> list[float]:
    """Seconds of training up to the end of each epoch: each epoch's tokens over its
    tokens/s (evaluation excluded), summed."""
    m = result["metrics"]
    tokens = [steps * result["config"]["batch_size"] * seq_len for steps in m["steps"]]
    return list(
        itertools.accumulate(t / tps for t, tps in zip(tokens, m["tokens_per_sec"], strict=True))
    )


def val_ce_within(result: Mapping[str, Any], seconds: float, seq_len: int) -> float | None:
    """The best validation CE a run had reached after `seconds` of training: of the
    evaluated epochs that ended by then, or its first evaluated epoch's if none had (a run
    slower than that is judged on what it first reached)."""
    m = result["metrics"]
    ends = training_seconds(result, seq_len)
    evaluated = list(zip(m.get("val_epochs") or range(1, len(m["val_ce_losses"]) + 1),
                         m["val_ce_losses"], strict=False))  # fmt: skip
    reached: list[float] = [
        ce for epoch, ce in evaluated if ce is not None and ends[epoch - 1] <= seconds * (1 + 1e-9)
    ]
    if reached:
        return min(reached)
    first: list[float] = [ce for _, ce in evaluated if ce is not None]
    return first[0] if first else None


def objective_of(
    sweep: SweepConfig, runs: list[dict[str, Any]], dense: list[dict[str, Any]]
) -> Objective:
    """The trial's objective over its seeds: mean, SE, the paired test's interval, p and
    significance (for the differences from dense, paired by seed).

    - `delta_val_ce`: best val CE minus the dense run's (same seed);
    - `delta_val_ce_at_equal_time`: the best val CE the trial had reached within the dense
      run's training time, minus the dense run's best; a trial slower per token pays for
      it (it has seen fewer tokens by then);
    - `val_ce`: the trial's own best val CE.
    """
    from .measures import best_val_loss
    from .statistics import paired_t_test

    seq_len = sweep.base_config().seq_len
    if sweep.objective == "delta_val_ce_at_equal_time":
        values = [
            val_ce_within(r, training_seconds(d, seq_len)[-1], seq_len)
            for r, d in zip(runs, dense, strict=True)
        ]
    else:
        values = [best_val_loss(r["metrics"]) for r in runs]
    if sweep.objective != "val_ce":
        dense_values = [best_val_loss(d["metrics"]) for d in dense]
        values = [
            None if v is None or d is None else v - d
            for v, d in zip(values, dense_values, strict=True)
        ]
    test = paired_t_test(values)
    if test["mean"] is None:  # one seed: the mean alone
        finite = [v for v in values if v is not None and math.isfinite(v)]
        test["mean"] = sum(finite) / len(finite) if finite else None
    return {"name": sweep.objective, "values": values, **test}  # fmt: skip


def prune_rule(sweep: SweepConfig, together: bool) -> str | None:
    """What a trial's intermediate values are, as the pruner compares them: the first
    seed's val CE when seeds train one after another (the service's runs, the engine's
    default), their mean when they train together (moe_core.together)."""
    if not sweep.prune:
        return None
    margin = f", by more than {sweep.prune_margin:g} nats" if sweep.prune_margin > 0 else ""
    if together:
        return f"median of the earlier trials against the mean val CE of the trial's {sweep.seeds} seeds at each epoch{margin}"
    return f"median of the earlier trials against the first seed's val CE at each epoch{margin}"
