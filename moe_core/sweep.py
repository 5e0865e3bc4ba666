"""`python -m moe_core sweep SWEEP.yaml --out DIR`: search a design space (moe_core.search),
each trial judged against dense the way a study judges a preset.

One dense run per seed is shared by the whole sweep. Each trial trains its configuration
with every seed, and its objective is the mean over seeds of its best validation CE minus
the dense run's of the same seed (`delta_val_ce`; or the mean val CE itself, `val_ce`),
with the paired t-test's SE, interval and significance, and the spec's verdict
(criteria.judge_seeds). A trial whose router collapsed (tertiary failed on a seed) is
reported as such, told to Optuna as failed (so TPE does not steer towards it) and is never
the sweep's best. With pruning, the first seed's val CE after each epoch goes to Optuna's
median pruner; a pruned trial stops there (its other seeds do not run), keeps its epochs,
and is `pruned`, never best. With `seeds_together` (moe_core.together: a trial's seeds, and
the dense runs, train as one stacked model), the pruner is told the mean of the trial's
seeds at each epoch instead, so a trial's fate no longer rests on one seed's noise; the
report's `prune_rule` says which rule judged.

Writes `sweep_results.json` (the sweep, the dense runs, every trial with its runs, the
ranking, the best trial and each field's importance) after every trial, so an interrupted
sweep keeps what it finished.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .atomic import write_json_atomic
from .config import BaseConfig, ExperimentConfig, check_or_raise, dense_config
from .criteria import judge_seeds
from .errors import TrainingCancelled
from .hooks import TrainerHooks
from .proposals import Proposer
from .provenance import source_commit
from .records import EpochRecord
from .runner import resolve_device, resolve_precision, run_single_experiment
from .search import SweepConfig, check_sweep, objective_of, prune_rule, rank  # noqa: F401 (rank: re-exported)
from .together_policy import resolve_together
from .verdict_records import MIN_USAGE_TARGET

RESULTS = "sweep_results.json"


class SweepRefused(ValueError):
    """The sweep cannot run as given; the message lists every problem."""


def run_sweep(
    sweep: SweepConfig,
    out_dir: str | os.PathLike[str],
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    device: str | torch.device | None = None,
    verbose: bool = True,
    seeds_together: bool | None = None,
) -> dict[str, Any]:
    """Run the sweep; return (and write) its results. Raises SweepRefused before anything
    trains when the sweep cannot run. `seeds_together`: train each trial's seeds as one
    stacked model (None: where moe_core.together.resolve_together says it pays)."""
    from .data import build_datasets

    problems = check_sweep(sweep)
    if problems:
        raise SweepRefused("; ".join(problems))
    base = sweep.base_config()
    if data_dir is not None or cache_dir is not None:
        base = base.model_copy(
            update={k: v for k, v in {"data_dir": data_dir, "cache_dir": cache_dir}.items() if v}
        )
    device = resolve_device(device)
    base = base.model_copy(update={"precision": resolve_precision(base.precision, device)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    data = build_datasets(base)
    seeds = list(range(base.seed, base.seed + sweep.seeds))
    started = time.perf_counter()
    together = _together(seeds_together, sweep, base, device)

    def train(
        config: ExperimentConfig,
        run_base: BaseConfig,
        *,
        dense: bool = False,
        hooks: TrainerHooks | None = None,
    ) -> dict[str, Any]:
        return run_single_experiment(config, data.train, data.val, run_base, device, dense=dense,
                                     hooks=hooks, test_dataset=data.test, verbose=False)  # fmt: skip

    # What ran, so the record can be rerun: the code, torch and the threads it had.
    report: dict[str, Any] = {"sweep": sweep.model_dump(mode="json"), "base": base.model_dump(mode="json"),
                              "device": str(device), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "commit": source_commit(),
                              "data": {"tokenizer": data.tokenizer_key, "train_tokens": data.train.num_tokens,
                                       "val_tokens": data.val.num_tokens},
                              "seeds_together": together, "prune_rule": prune_rule(sweep, together),
                              "dense": [], "trials": []}  # fmt: skip

    def write() -> None:
        order = rank(report["trials"])
        report.update(ranking=order, best=order[0] if order else None,
                      seconds=time.perf_counter() - started)  # fmt: skip
        write_json_atomic(out / RESULTS, report)

    def train_together(config: ExperimentConfig, bases: list[BaseConfig], *, dense: bool = False,
                       hooks: list[TrainerHooks] | None = None) -> list[dict[str, Any] | BaseException]:  # fmt: skip
        from .together import run_together

        return run_together(config, data.train, data.val, bases, device, dense=dense,
                            hooks=hooks, test_dataset=data.test, verbose=False)  # fmt: skip

    seeded = [base.model_copy(update={"seed": seed}) for seed in seeds]
    if together:
        dense_runs = train_together(dense_config(base), seeded, dense=True)
    else:
        dense_runs = [train(dense_config(b), b, dense=True) for b in seeded]
    for seed, result in zip(seeds, dense_runs, strict=True):
        if isinstance(result, BaseException):  # no baseline, no verdict: the sweep cannot go on
            raise result
        report["dense"].append(result)
        say(
            f"dense (seed {seed}): best val CE {result['metrics']['best_val_ce_loss']:.4f}",
            flush=True,
        )
    write()

    proposer = Proposer(sweep)
    for _ in range(sweep.budget()):
        asked = proposer.ask()
        if asked is None:
            break
        number, params = asked
        if together:
            trial = _run_trial_together(sweep, proposer, number, params, base, seeds,
                                        report["dense"], train_together)  # fmt: skip
        else:
            trial = _run_trial(sweep, proposer, number, params, base, seeds, report["dense"], train)
        report["trials"].append(trial)
        proposer.tell(number, "complete" if trial["state"] == "complete" else
                      "pruned" if trial["state"] == "pruned" else "failed",
                      trial["objective"]["mean"])  # fmt: skip
        say(_line(trial), flush=True)
        report["importance"] = proposer.importance()
        write()
    report["importance"] = proposer.importance()
    write()
    if verbose:
        say(format_ranking(report))
    return report


def _new_trial(number: int, params: dict[str, Any]) -> dict[str, Any]:
    return {"number": number, "params": params, "runs": [], "state": "complete",
            "pruned_at_epoch": None, "error": None}  # fmt: skip


def _run_trial(
    sweep: SweepConfig,
    proposer: Proposer,
    number: int,
    params: dict[str, Any],
    base: BaseConfig,
    seeds: list[int],
    dense: list[dict[str, Any]],
    train: Callable[..., dict[str, Any]],
) -> dict[str, Any]:
    trial = _new_trial(number, params)
    for i, seed in enumerate(seeds):
        config, trial_base = sweep.trial_configs(
            params, base.model_copy(update={"seed": seed}), number
        )
        check_or_raise(config, trial_base)
        # Pruning reads the first seed's curve: the others run only once it survived.
        watch = _PruneWatch(proposer, number, report=sweep.prune and i == 0)
        try:
            result = train(config, trial_base,
                           hooks=TrainerHooks(on_epoch_end=watch, should_stop=watch.should_stop))  # fmt: skip
        except TrainingCancelled:
            trial.update(state="pruned", pruned_at_epoch=len(watch.epochs), epochs=watch.epochs)
            break
        except (RuntimeError, ValueError) as exc:  # a diverged run, a config the data refuses
            trial.update(state="failed", error=f"{type(exc).__name__}: {exc}")
            break
        trial["runs"].append(result)
    return _judge_trial(sweep, trial, dense)


def _judge_trial(
    sweep: SweepConfig, trial: dict[str, Any], dense: list[dict[str, Any]]
) -> dict[str, Any]:
    """A trial whose runs ended: its verdict and objective against the dense runs."""
    runs = trial["runs"]
    if trial["state"] == "complete":
        trial["verdict"] = judge_seeds(runs, dense[: len(runs)])
        trial["objective"] = objective_of(sweep, runs, dense[: len(runs)])
        if not trial["verdict"]["tertiary"]["passed"]:
            # The loss may look good while some expert gets almost nothing: not a result.
            trial["state"] = "tertiary_failed"
    else:
        trial["verdict"] = None
        trial["objective"] = {
            "name": sweep.objective,
            "mean": None,
            "se": None,
            "significant": None,
        }
    return trial  # fmt: skip


def _together(asked: bool | None, sweep: SweepConfig, base: BaseConfig,
              device: torch.device) -> bool:  # fmt: skip
    from .config import get_experiment_configs

    config = get_experiment_configs(base)[sweep.preset]
    asked = asked if asked is not None else base.seeds_together
    return resolve_together(asked, [(config, False), (dense_config(base), True)], base, device,
                            replicas=sweep.seeds)  # fmt: skip


def _run_trial_together(
    sweep: SweepConfig,
    proposer: Proposer,
    number: int,
    params: dict[str, Any],
    base: BaseConfig,
    seeds: list[int],
    dense: list[dict[str, Any]],
    train_together: Callable[..., list[dict[str, Any] | BaseException]],
) -> dict[str, Any]:
    """A trial whose seeds train together: the pruner judges the mean of its seeds."""
    trial = _new_trial(number, params)
    pairs = [
        sweep.trial_configs(params, base.model_copy(update={"seed": s}), number) for s in seeds
    ]
    for config, trial_base in pairs:
        check_or_raise(config, trial_base)
    watch = _MeanPruneWatch(proposer, number, replicas=len(seeds), report=sweep.prune)
    hooks = [TrainerHooks(on_epoch_end=watch.replica(i), should_stop=watch.should_stop)
             for i in range(len(seeds))]  # fmt: skip
    results = train_together(pairs[0][0], [b for _, b in pairs], hooks=hooks)
    watch.close()
    failed = [r for r in results if isinstance(r, (RuntimeError, ValueError))]
    if watch.prune:
        trial.update(state="pruned", pruned_at_epoch=watch.pruned_at, epochs=watch.epochs[0],
                     mean_curve=watch.mean_curve)  # fmt: skip
    elif failed:  # a diverged seed fails the trial, as when the seeds run one by one
        trial.update(state="failed", error=f"{type(failed[0]).__name__}: {failed[0]}")
    else:
        for r in results:
            if isinstance(r, BaseException):
                raise r
            trial["runs"].append(r)
        trial["mean_curve"] = watch.mean_curve
    return _judge_trial(sweep, trial, dense)


class _MeanPruneWatch:
    """The epoch callbacks of a trial's seeds training together: keeps each replica's
    epochs and, once every replica still training has recorded an epoch, hands the mean of
    their val CE to the pruner (`report`); `should_stop` then stops them all.

    A replica that early-stopped records no more epochs: an epoch is judged once as many
    replicas recorded it as recorded the one before, or at the latest when any replica
    records the next one."""

    def __init__(self, proposer: Proposer, number: int, *, replicas: int, report: bool) -> None:
        self.proposer, self.number, self.report = proposer, number, report
        self.epochs: list[list[EpochRecord]] = [[] for _ in range(replicas)]
        self.values: dict[int, list[float]] = {}  # epoch -> the replicas' val CE
        self.mean_curve: dict[int, float] = {}  # epoch -> the mean told to the pruner
        self.prune: bool = False
        self.pruned_at: int | None = None

    def replica(self, index: int) -> Callable[[EpochRecord], None]:
        def on_epoch(record: EpochRecord) -> None:
            self.epochs[index].append(record)
            epoch, val = record["epoch"], record["val"]
            for pending in [e for e in self.values if e < epoch and e not in self.mean_curve]:
                self._judge(pending)
            if val is None or val["ce_loss"] is None:
                return
            self.values.setdefault(epoch, []).append(val["ce_loss"])
            before = (
                len(self.epochs)
                if epoch == min(self.values)
                else len(self.values.get(epoch - 1, []))
            )
            if len(self.values[epoch]) >= before:
                self._judge(epoch)

        return on_epoch

    def _judge(self, epoch: int) -> None:
        if epoch in self.mean_curve or self.prune:
            return
        values = self.values[epoch]
        self.mean_curve[epoch] = sum(values) / len(values)
        if self.report and self.proposer.report(self.number, self.mean_curve[epoch], epoch):
            self.prune, self.pruned_at = True, epoch

    def close(self) -> None:
        """Training ended: the epochs not yet judged get their mean (for the report)."""
        for epoch in sorted(self.values):
            if epoch not in self.mean_curve:
                self.mean_curve[epoch] = sum(self.values[epoch]) / len(self.values[epoch])

    def should_stop(self) -> bool:
        return self.prune


class _PruneWatch:
    """A run's epoch callback: keeps its epochs and, when it `report`s, hands each epoch's
    val CE to the pruner; `should_stop` turns true once the pruner says so (the Trainer
    consults it before the next step)."""

    def __init__(self, proposer: Proposer, number: int, *, report: bool) -> None:
        self.proposer, self.number, self.report = proposer, number, report
        self.epochs: list[EpochRecord] = []
        self.prune = False

    def __call__(self, record: EpochRecord) -> None:
        self.epochs.append(record)
        val = record["val"]
        if self.report and val is not None and val["ce_loss"] is not None:
            self.prune = self.proposer.report(self.number, val["ce_loss"], record["epoch"])

    def should_stop(self) -> bool:
        return self.prune


def _line(trial: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial["params"].items())
    o = trial["objective"]
    if trial["state"] == "pruned":
        return f"trial {trial['number']}: {params}: pruned after epoch {trial['pruned_at_epoch']}"
    if trial["state"] == "failed":
        return f"trial {trial['number']}: {params}: failed ({trial['error']})"
    se = f" ± {o['se']:.4f}" if o.get("se") is not None else ""
    note = (
        f"  (router collapsed: an expert under {MIN_USAGE_TARGET:g}%)"
        if trial["state"] == "tertiary_failed"
        else ""
    )
    return f"trial {trial['number']}: {params}: {o['name']} {o['mean']:+.4f}{se}{note}"  # fmt: skip


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else json.dumps(value)


def format_ranking(report: dict[str, Any]) -> str:
    """The trials, best first, then the pruned, failed and collapsed ones; each field's
    importance."""
    by_number = {t["number"]: t for t in report["trials"]}
    ranked = [by_number[n] for n in report.get("ranking", [])]
    rest = [t for t in report["trials"] if t["number"] not in report.get("ranking", [])]
    lines = [f"{'#':>3}  {'objective':>18}  {'95% CI':>19}  sig  params"]
    for t in ranked + rest:
        o = t["objective"]
        if o.get("mean") is None:
            value, ci, sig = t["state"], "", ""
        else:
            value = f"{o['mean']:+.4f}" + (f" ± {o['se']:.4f}" if o.get("se") is not None else "")
            ci = f"[{o['ci_low']:+.4f}, {o['ci_high']:+.4f}]" if o.get("ci_low") is not None else ""
            sig = {True: "yes", False: "no"}.get(o.get("significant"), "-")
            if t["state"] != "complete":
                value += f" {t['state']}"
        params = ", ".join(f"{k}={_short(v)}" for k, v in t["params"].items())
        lines.append(f"{t['number']:>3}  {value:>18}  {ci:>19}  {sig:>3}  {params}")
    if report.get("importance"):
        lines.append(
            "importance (fANOVA): "
            + ", ".join(f"{k} {v:.2f}" for k, v in report["importance"].items())
        )
    return "\n".join(lines)  # fmt: skip
