"""A sweep's proposals: Optuna asked for the next trial of a space (moe_core.search) and told
how trials ended, in memory, rebuilt from the trials a store keeps when it has them; its
median pruner; its fANOVA importances. Torch-free, as moe_core.search."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .search import Choice, SweepConfig, _active, _order, grid_points

# How a trial stands in a store: `running` while it trains, else how it ended
TrialEnd = Literal["running", "complete", "pruned", "failed"]


@dataclass
class Told:
    """A trial as a store keeps it, to rebuild a Proposer from: its values, how it ended
    (`running` while it trains) and its objective; `intermediate` is the val CE after each
    epoch of its first seed's run (what the pruner compares)."""

    number: int
    params: dict[str, Any]
    state: TrialEnd
    value: float | None = None
    intermediate: dict[int, float] = dataclasses.field(default_factory=dict)


class Proposer:
    """Asks Optuna for trials and tells it how they ended. Grid proposals are the grid's
    points in order; random and TPE sample the space (conditional fields only where their
    condition holds). Optuna's categorical values must be scalars: a list choice (e.g.
    moe_layers) is proposed by its JSON text and decoded.

    `told` rebuilds the proposer from trials kept elsewhere (a service's database): the
    Optuna study lives in memory and holds nothing the trials do not. The sampler's seed is
    then `sampler_seed` plus the number of trials told, so the same history always
    proposes the same next trial."""

    def __init__(self, sweep: SweepConfig, told: list[Told] | None = None) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.sweep = sweep
        seed = sweep.sampler_seed + (len(told) if told is not None else 0)
        sampler: optuna.samplers.BaseSampler
        if sweep.method == "tpe":
            # constant_liar: trials asked before earlier ones are told (side by side) are
            # spread out rather than proposed alike.
            sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                                 n_startup_trials=max(2, min(10, (sweep.trials or 10) // 3)))  # fmt: skip
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        pruner = (
            # a trial stops when its val CE at an epoch is worse than the median of the
            # earlier trials' at that epoch (by more than prune_margin); not before 2
            # trials finished, nor in epoch 1 (steps are 1-based epochs; Optuna prunes from
            # step n_warmup_steps on)
            _pruner(sweep.prune_margin, n_startup_trials=2, n_warmup_steps=2)
            if sweep.prune
            else optuna.pruners.NopPruner()
        )
        self.study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
        self._grid = grid_points(sweep.space) if sweep.method == "grid" else []
        self._next_grid = 0
        self._trials: dict[int, Any] = {}
        for trial in told or []:
            self._add(trial)

    def _distributions(self, params: Mapping[str, Any]) -> dict[str, Any]:
        import optuna.distributions as d

        out: dict[str, Any] = {}
        for name in params:
            param = self.sweep.space[name]
            if isinstance(param, Choice) or self.sweep.method == "grid":
                values = param.choices if isinstance(param, Choice) else param.grid(name)
                out[name] = d.CategoricalDistribution([json.dumps(v) for v in values])
            elif param.integer:
                out[name] = d.IntDistribution(int(param.low), int(param.high), log=param.log)
            else:
                out[name] = d.FloatDistribution(param.low, param.high, log=param.log)
        return out

    def _encode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        distributions = self._distributions(params)
        return {name: json.dumps(v) if type(distributions[name]).__name__ == "CategoricalDistribution"
                else v for name, v in params.items()}  # fmt: skip

    def _add(self, told: Told) -> None:
        import optuna

        if told.number != len(self.study.trials):
            raise ValueError(
                f"trial {told.number} told out of order (expected {len(self.study.trials)})"
            )
        states = {"running": optuna.trial.TrialState.RUNNING, "complete": optuna.trial.TrialState.COMPLETE,
                  "pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}  # fmt: skip
        self.study.add_trial(optuna.trial.create_trial(
            params=self._encode(told.params), distributions=self._distributions(told.params),
            value=told.value if told.state == "complete" else None, state=states[told.state],
            intermediate_values=told.intermediate,
        ))  # fmt: skip
        if self.sweep.method == "grid":
            self._next_grid = told.number + 1

    def ask(self) -> tuple[int, dict[str, Any]] | None:
        """The next trial's number and values; None when the grid is exhausted."""
        if self.sweep.method == "grid":
            if self._next_grid >= len(self._grid):
                return None
            point: dict[str, Any] = self._grid[self._next_grid]
            self._next_grid += 1
            # Enqueued, then suggested over the field's whole grid: Optuna records the point
            # (for importance) with one distribution per field across trials.
            self.study.enqueue_trial(self._encode(point))
            trial = self.study.ask()
            for name, distribution in self._distributions(point).items():
                trial.suggest_categorical(name, distribution.choices)
            self._trials[trial.number] = trial
            return trial.number, point
        trial = self.study.ask()
        point = {}
        for name in _order(self.sweep.space):
            param = self.sweep.space[name]
            if not _active(param, point):
                continue
            if isinstance(param, Choice):
                encoded = [json.dumps(v) for v in param.choices]
                point[name] = json.loads(trial.suggest_categorical(name, encoded))
            elif param.integer:
                point[name] = trial.suggest_int(
                    name, int(param.low), int(param.high), log=param.log
                )
            else:
                point[name] = trial.suggest_float(name, param.low, param.high, log=param.log)
        self._trials[trial.number] = trial
        return trial.number, point

    def report(self, number: int, value: float, epoch: int) -> bool:
        """An intermediate value (a trial's val CE after `epoch`); True: prune the trial."""
        trial = self._trials[number]
        trial.report(value, epoch)
        return bool(trial.should_prune())

    def prune(self, number: int) -> bool:
        """Whether a told running trial (its intermediate values so far) is to be pruned."""
        trial = self.study.trials[number]
        return bool(self.study.pruner.prune(self.study, trial))

    def tell(self, number: int, state: Literal["complete", "pruned", "failed"],
             value: float | None = None) -> None:  # fmt: skip
        import optuna

        states = {"complete": optuna.trial.TrialState.COMPLETE,
                  "pruned": optuna.trial.TrialState.PRUNED,
                  "failed": optuna.trial.TrialState.FAIL}  # fmt: skip
        self.study.tell(number, value if state == "complete" else None, state=states[state])

    def importance(self) -> dict[str, float]:
        """Each field's share of the objective's variance over the completed trials
        (Optuna's fANOVA, which fits scikit-learn's random forests); empty with fewer than
        two completed trials or no variation."""
        import optuna

        complete = [t for t in self.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(complete) < 2 or len({t.value for t in complete}) < 2:
            return {}
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=self.sweep.sampler_seed)
        try:
            found = optuna.importance.get_param_importances(self.study, evaluator=evaluator)
        except (RuntimeError, ValueError):  # e.g. no field that varies in every trial
            return {}
        return {name: float(share) for name, share in found.items()}


def _pruner(margin: float, *, n_startup_trials: int, n_warmup_steps: int) -> Any:
    """Optuna's median pruner, which prunes a trial worse than the median at all, or, with
    a margin, one worse than the median by more than `margin` (nats): where trials differ
    by less than a seed's noise, the median alone stops half of them on that noise."""
    import optuna

    median = optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials,
                                         n_warmup_steps=n_warmup_steps)  # fmt: skip
    if margin <= 0:
        return median

    class MarginPruner(optuna.pruners.BasePruner):
        def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
            if not median.prune(study, trial):
                return False
            step = trial.last_step
            if step is None:  # unreachable: the median pruner keeps a trial with no step
                return False
            others = [
                t.intermediate_values[step]
                for t in study.get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
                )
                if step in t.intermediate_values
            ]
            if not others:
                return False
            others.sort()
            middle = len(others) // 2
            median_value = (
                others[middle] if len(others) % 2 else (others[middle - 1] + others[middle]) / 2
            )
            return trial.intermediate_values[step] > median_value + margin

    return MarginPruner()
