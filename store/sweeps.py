"""Sweeps in the store: a sweep's rows, its trials proposed as earlier ones end, pruning,
and the settling of each trial from its runs' results.

The database keeps every trial (values, state, objective); Optuna is rebuilt from them in
memory for each decision (moe_core.search.Proposer), so any worker or API process can take
the next step and none holds state that a crash would lose. Decisions about one sweep are
taken under a lock on its row, so that two workers finishing runs at once propose each
trial once. Functions return the ids of runs they created; the caller commits nothing more
and publishes them (an unpublished run is published by the agents' lost-message sweep).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete as sa_delete
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from moe_core.config import BaseConfig, dense_config
from moe_core.proposals import Proposer, Told, TrialEnd
from moe_core.search import SweepConfig, objective_of, rank
from store import catalogue, results
from store.db import rowcount
from store.models import (
    BOOTSTRAP_ADMIN,
    FINISHED,
    TRIAL_DONE,
    EpochMetrics,
    Experiment,
    Status,
    Sweep,
    SweepStatus,
    SweepTrial,
    TrialState,
    User,
    utcnow,
)


def config_of(sweep: Sweep) -> SweepConfig:
    return SweepConfig.model_validate(sweep.config)


def seeds_of(sweep: Sweep) -> list[int]:
    first = sweep.base["seed"]
    return list(range(first, first + config_of(sweep).seeds))


def create_sweep(
    *,
    session: Session,
    config: SweepConfig,
    base: BaseConfig,
    parallel: int,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    owner: str = BOOTSTRAP_ADMIN,
) -> tuple[Sweep, list[Experiment]]:
    """The sweep, a dense run per seed and its first `parallel` trials (flushed, not
    committed); returns the sweep and the runs to publish."""
    sweep = Sweep(name=config.name, config=config.model_dump(mode="json"), fields=list(config.space),
                  base=base.model_dump(mode="json"), parallel=parallel,
                  status=SweepStatus.running, idempotency_key=idempotency_key,
                  request_hash=request_hash, owner=owner)  # fmt: skip
    session.add(sweep)
    session.flush()
    runs = []
    for seed in seeds_of(sweep):
        seeded = base.model_copy(update={"seed": seed})
        dense = catalogue.create_experiment(
            session=session, name=f"{config.name} dense (seed {seed})",
            config=dense_config(seeded), base=seeded, base_preset=config.base_preset, dense=True,
            owner=owner,
        )  # fmt: skip
        dense.sweep_id = sweep.id
        runs.append(dense)
    session.flush()
    runs += _propose(session, sweep)
    return sweep, runs


def _runs(session: Session, sweep_id: int) -> list[Experiment]:
    return list(session.scalars(
        select(Experiment).where(Experiment.sweep_id == sweep_id).order_by(Experiment.id)
    ))  # fmt: skip


def _dense_by_seed(runs: Sequence[Experiment]) -> dict[int, Experiment]:
    return {run.base["seed"]: run for run in runs if run.trial_number is None}


def on_the_mean(sweep: Sweep) -> bool:
    """Whether the pruner judges a trial on the mean of its seeds' val CE (their base asks
    them trained together, as one stack: worker.together) rather than its first seed's."""
    return sweep.base.get("seeds_together") is True and config_of(sweep).seeds > 1


def _told(session: Session, sweep: Sweep, runs: Sequence[Experiment]) -> list[Told]:
    """The sweep's trials as Optuna is told them: each with its val CE per epoch (what the
    median pruner compares), its first seed's or its seeds' mean (`on_the_mean`). A
    collapsed router is told as failed, so that TPE does not steer towards it; a cancelled
    trial too."""
    first, mean = sweep.base["seed"], on_the_mean(sweep)
    judged = [r for r in runs if r.trial_number is not None and (mean or r.base["seed"] == first)]
    curves: dict[int, dict[int, float]] = {}
    if judged:
        rows = session.execute(
            select(EpochMetrics.experiment_id, EpochMetrics.epoch, EpochMetrics.val_ce_loss)
            .where(EpochMetrics.experiment_id.in_([r.id for r in judged]))
        )  # fmt: skip
        for experiment_id, epoch, val_ce in rows:
            if val_ce is not None:
                curves.setdefault(experiment_id, {})[epoch] = val_ce
    by_trial: dict[int, list[Experiment]] = {}
    for r in judged:
        by_trial.setdefault(r.trial_number, []).append(r)  # type: ignore[arg-type]  # judged: set
    state: dict[TrialState, TrialEnd] = {TrialState.running: "running",
                                         TrialState.complete: "complete",
                                         TrialState.pruned: "pruned"}  # fmt: skip
    return [
        Told(t.number, t.params, state.get(TrialState(t.state), "failed"),
             (t.objective or {}).get("mean"), _curve(by_trial.get(t.number, []), curves))
        for t in sweep.trials
    ]  # fmt: skip


def _curve(runs: list[Experiment], curves: dict[int, dict[int, float]]) -> dict[int, float]:
    """A trial's val CE per epoch: its one judged run's, or the mean of its seeds' at each
    epoch that every seed still training has reached (one that ended, early-stopped or
    cancelled, holds none back), in order."""
    if len(runs) == 1:
        return curves.get(runs[0].id, {})
    out: dict[int, float] = {}
    for epoch in sorted({e for r in runs for e in curves.get(r.id, {})}):
        values = [curves[r.id][epoch] for r in runs if epoch in curves.get(r.id, {})]
        if any(epoch not in curves.get(r.id, {}) and r.status not in FINISHED for r in runs):
            break  # a seed still on its way there
        out[epoch] = sum(values) / len(values)
    return out


def _propose(session: Session, sweep: Sweep, max_queued: int | None = None) -> list[Experiment]:
    """New trials while fewer than `parallel` run and the budget allows, and while its owner
    has room in the queue (`max_queued`, the deployment's default for a user without their
    own: the next trials wait rather than refuse); their runs."""
    config = config_of(sweep)
    owner = session.get(User, _user_id(session, sweep.owner))
    limit = owner.max_queued_runs if owner and owner.max_queued_runs is not None else max_queued
    if sweep.status != SweepStatus.running:
        return []
    runs = _runs(session, sweep.id)
    dense = _dense_by_seed(runs)
    if set(seeds_of(sweep)) - set(dense):
        return []  # a dense run is gone: no trial could be judged, so none is proposed
    base = BaseConfig.model_validate(sweep.base)
    created = []
    while (
        sum(t.state == TrialState.running for t in sweep.trials) < sweep.parallel
        and len(sweep.trials) < config.budget()
    ):
        if limit is not None and _queued(session, sweep.owner) + config.seeds > limit:
            break  # proposed again at the next advance, once the owner's queue has room
        asked = Proposer(config, _told(session, sweep, runs)).ask()
        if asked is None:
            break
        number, params = asked
        trial = SweepTrial(
            sweep_id=sweep.id, number=number, params=params, state=TrialState.running
        )
        sweep.trials.append(trial)
        for seed in seeds_of(sweep):
            experiment, trial_base = config.trial_configs(
                params, base.model_copy(update={"seed": seed}), number
            )
            run = catalogue.create_experiment(
                session=session, name=f"{config.name} trial {number}" + (f" (seed {seed})" if config.seeds > 1 else ""),
                config=experiment, base=trial_base, preset=config.preset,
                base_preset=config.base_preset, baseline_id=dense[seed].id, owner=sweep.owner,
            )  # fmt: skip
            run.sweep_id, run.trial_number = sweep.id, number
            created.append(run)
        session.flush()
        runs = _runs(session, sweep.id)
    return created  # fmt: skip


def _user_id(session: Session, name: str) -> int | None:
    return session.scalar(select(User.id).where(User.name == name))


def _queued(session: Session, owner: str) -> int:
    return session.scalar(
        select(func.count()).where(Experiment.owner == owner, Experiment.status == Status.queued)
    ) or 0  # fmt: skip


def _settle(session: Session, sweep: Sweep, runs: Sequence[Experiment]) -> None:
    """Each running trial whose runs have all ended (and the dense runs they are judged
    against): its state, and when complete its objective and verdict."""
    from moe_core.criteria import judge_seeds

    config = config_of(sweep)
    dense = _dense_by_seed(runs)
    for trial in sweep.trials:
        if trial.state != TrialState.running:
            continue
        mine = [r for r in runs if r.trial_number == trial.number]
        if not all(r.status in FINISHED for r in mine):
            continue
        gone = _gone(config, mine, dense)
        if gone:
            # A run removed under the sweep (by hand, in the database): the trial cannot be
            # judged, and the sweep goes on without it rather than stalling.
            trial.state, trial.objective = TrialState.failed, {"error": gone}
        elif any(r.status == Status.failed for r in mine):
            failed = next(r for r in mine if r.status == Status.failed)
            trial.state, trial.objective = TrialState.failed, {"error": failed.error}
        elif any(r.status == Status.cancelled for r in mine):
            trial.state = TrialState.cancelled
        else:
            baselines = [dense[r.base["seed"]] for r in mine]
            if not all(b.status in FINISHED for b in baselines):
                continue  # judged once its dense runs have ended
            if any(b.status != Status.succeeded for b in baselines):
                trial.state = TrialState.failed
                trial.objective = {"error": "a dense baseline of the sweep did not succeed"}
            else:
                own = [results.stored_result(r) for r in mine]
                theirs = [results.stored_result(b) for b in baselines]
                trial.verdict = results.json_safe(judge_seeds(own, theirs))
                trial.objective = results.json_safe(objective_of(config, own, theirs))
                # The loss may look good while some expert gets almost nothing: not a result.
                passed = trial.verdict["tertiary"]["passed"]
                trial.state = TrialState.complete if passed else TrialState.tertiary_failed
        trial.finished_at = utcnow()


def _gone(config: SweepConfig, mine: Sequence[Experiment], dense: dict[int, Experiment]) -> str:
    """Why a trial's runs, or the dense runs they are judged against, are not all there
    ("" when they are)."""
    if len(mine) < config.seeds:
        return f"{config.seeds - len(mine)} of the trial's {config.seeds} runs are gone"
    missing = sorted({r.base["seed"] for r in mine} - set(dense))
    return f"the dense run of seed {', '.join(map(str, missing))} is gone" if missing else ""


def _summarise(session: Session, sweep: Sweep, runs: Sequence[Experiment]) -> None:
    trials = [{"number": t.number, "state": "complete" if t.state == TrialState.complete else t.state,
               "objective": t.objective or {"mean": None}} for t in sweep.trials]  # fmt: skip
    order = rank(trials)
    sweep.best_trial = order[0] if order else None
    sweep.importance = Proposer(config_of(sweep), _told(session, sweep, runs)).importance() or None


def advance(*, session: Session, sweep_id: int, max_queued: int | None = None) -> list[int]:
    """Settle what ended, propose what the budget (and the owner's queue quota,
    `max_queued` by default) allows, finish the sweep once every trial has ended
    (committed); the ids of the new runs to publish. Idempotent: a second call with nothing
    new to settle does nothing."""
    sweep = session.scalars(
        select(Sweep).where(Sweep.id == sweep_id).with_for_update()
    ).one_or_none()
    if sweep is None:
        session.rollback()
        return []
    runs = _runs(session, sweep.id)
    before = {t.number: t.state for t in sweep.trials}
    _settle(session, sweep, runs)
    created = _propose(session, sweep, max_queued)
    if any(before.get(t.number) != t.state for t in sweep.trials) or created:
        _summarise(session, sweep, _runs(session, sweep.id))
    # Nothing proposed while no trial runs: the budget (or the grid) is spent.
    if (
        sweep.status == SweepStatus.running and not created
        and all(t.state in TRIAL_DONE for t in sweep.trials)
        and all(r.status in FINISHED for r in runs)
    ):  # fmt: skip
        sweep.status, sweep.finished_at = SweepStatus.finished, utcnow()
    ids = [r.id for r in created]
    session.commit()
    return ids


def after_run(*, session: Session, experiment_id: int, max_queued: int | None = None) -> list[int]:
    """A run ended: advance its sweep, if it has one."""
    sweep_id = session.scalar(select(Experiment.sweep_id).where(Experiment.id == experiment_id))
    session.rollback()
    if sweep_id is None:
        return []
    return advance(session=session, sweep_id=sweep_id, max_queued=max_queued)


def consider_pruning(*, session: Session, experiment_id: int) -> bool:
    """After an epoch of a trial's first-seed run (of any of its seeds, `on_the_mean`):
    whether the median pruner stops the trial. If so (committed), the trial is `pruned` at that epoch and each of its runs is
    asked to stop (their epochs stay)."""
    run = session.get(Experiment, experiment_id)
    if run is None or run.sweep_id is None or run.trial_number is None:
        return False
    sweep = session.scalars(select(Sweep).where(Sweep.id == run.sweep_id).with_for_update()).one()
    config = config_of(sweep)
    trial = next(t for t in sweep.trials if t.number == run.trial_number)
    if (
        not config.prune
        or (run.base["seed"] != sweep.base["seed"] and not on_the_mean(sweep))
        or trial.state != TrialState.running
    ):
        session.rollback()
        return False
    told = _told(session, sweep, _runs(session, sweep.id))
    if not Proposer(config, told).prune(trial.number):
        session.rollback()
        return False
    trial.state, trial.finished_at = TrialState.pruned, utcnow()
    trial.pruned_at_epoch = max(told[trial.number].intermediate, default=None)
    session.flush()
    _cancel_runs(
        session, [r.id for r in _runs(session, sweep.id) if r.trial_number == trial.number]
    )
    session.commit()
    return True


def _cancel_runs(session: Session, ids: list[int]) -> None:
    # A queued run ends at once; a running one is flagged and its worker stops it.
    now = utcnow()
    session.execute(update(Experiment).where(Experiment.id.in_(ids), Experiment.status == Status.queued)
                    .values(status=Status.cancelled, cancel_requested=True, finished_at=now))  # fmt: skip
    session.execute(update(Experiment).where(Experiment.id.in_(ids), Experiment.status == Status.running)
                    .values(cancel_requested=True))  # fmt: skip


def cancel(*, session: Session, sweep_id: int) -> Sweep | None:
    """Cancel a sweep (committed): no more trials; its queued runs end, its running ones
    stop; running trials become `cancelled`."""
    sweep = session.scalars(
        select(Sweep).where(Sweep.id == sweep_id).with_for_update()
    ).one_or_none()
    if sweep is None:
        return None
    if sweep.status == SweepStatus.running:
        sweep.status, sweep.finished_at = SweepStatus.cancelled, utcnow()
        for trial in sweep.trials:
            if trial.state == TrialState.running:
                trial.state, trial.finished_at = TrialState.cancelled, utcnow()
        _cancel_runs(session, [r.id for r in _runs(session, sweep.id) if r.status not in FINISHED])
    session.commit()
    return sweep


def get_sweep(*, session: Session, sweep_id: int) -> Sweep | None:
    return session.get(Sweep, sweep_id, populate_existing=True)


def list_sweeps(
    *, session: Session, limit: int, offset: int, owner: str | None = None
) -> tuple[list[Sweep], int]:
    """Newest first (of `owner`'s only, when given), and how many there are."""
    mine = [Sweep.owner == owner] if owner is not None else []
    total = session.scalar(select(func.count()).select_from(Sweep).where(*mine)) or 0
    items = session.scalars(
        select(Sweep).where(*mine).order_by(Sweep.id.desc()).limit(limit).offset(offset)
    )
    return list(items), total


def run_ids(*, session: Session, sweep_id: int) -> list[tuple[int, int | None]]:
    """(run id, trial number) of each of the sweep's runs, in id order; a dense run's
    trial number is None."""
    rows = session.execute(
        select(Experiment.id, Experiment.trial_number)
        .where(Experiment.sweep_id == sweep_id).order_by(Experiment.id)
    )  # fmt: skip
    return [(run_id, number) for run_id, number in rows]


def delete(*, session: Session, sweep_id: int) -> list[tuple[int, str]] | None:
    """Delete a sweep that has ended, with its trials and runs (committed); the (id,
    run_key) of each run deleted, whose files the caller removes. None while it runs or
    any of its runs is queued or running (a worker might still write to it)."""
    unfinished = (
        select(Experiment.id)
        .where(Experiment.sweep_id == sweep_id, Experiment.status.not_in(FINISHED))
        .exists()
    )
    runs = [(run.id, run.run_key) for run in _runs(session, sweep_id)]
    deleted = rowcount(session.execute(
        sa_delete(Sweep).where(
            Sweep.id == sweep_id, Sweep.status != SweepStatus.running, ~unfinished
        )
    ))  # fmt: skip
    session.commit()
    return runs if deleted == 1 else None


def running_sweeps(*, session: Session) -> list[int]:
    return list(session.scalars(select(Sweep.id).where(Sweep.status == SweepStatus.running)))
