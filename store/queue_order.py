"""Which queued run a worker takes next: fair across users (issue 27).

The broker is only a wake-up: a delivery for run X asks "take a run", and the store answers
with the fairest run that may start now, which may be X or another. The order:
1. the user with the fewest GPUs in use now first (a colleague's single run goes before
   another user's 200 trials, once a slot frees);
2. then the run's priority (an admin's word, higher first);
3. then the user whose latest run started longest ago (round-robin between equals: when one
   user's run ends, the next slot does not go straight back to them);
4. then submission order.
A run whose owner is at their GPU limit (max_gpus, MOE_MAX_GPUS_PER_USER) waits; a run
handed back to wait (its `queued_at` in the future) is not due yet. The claim itself is
the lease protocol's (store.leases.claim_run): fenced, so no run is claimed twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from store.models import Experiment, Status, User
from store.workers import run_gpus, training_process

CANDIDATES = 200  # read at most this many, fairest first, to find one whose owner has room


@dataclass(frozen=True)
class Choice:
    run: int | None  # the run to claim; None: none may start now (quotas), try again later
    republish: int | None = None  # the delivered run, left queued: it needs a wake-up again


def choose(*, session: Session, hint: int, now: datetime, default_gpus: int | None) -> Choice:
    """The run a delivery of `hint` should claim. A `hint` that is not queued (running:
    maybe a dead worker's to take over; finished) is claimed as itself, for the lease
    protocol to decide."""
    status = session.scalar(select(Experiment.status).where(Experiment.id == hint))
    if status != Status.queued:
        return Choice(hint)
    # the GPUs each user's running runs hold: a stack of seeds (one process) holds one
    per_process = (
        select(Experiment.owner, func.max(run_gpus()).label("gpus"))
        .where(Experiment.status == Status.running)
        .group_by(Experiment.owner, training_process())
        .subquery()
    )
    in_use = (
        select(per_process.c.owner, func.sum(per_process.c.gpus).label("gpus"))
        .group_by(per_process.c.owner)
        .subquery()
    )
    last_start = (
        select(Experiment.owner, func.max(Experiment.started_at).label("at"))
        .group_by(Experiment.owner)
        .subquery()
    )
    used = func.coalesce(in_use.c.gpus, 0)
    rows = session.execute(
        select(Experiment.id, Experiment.owner, run_gpus().label("needs"), used.label("used"),
               User.max_gpus)
        .outerjoin(in_use, in_use.c.owner == Experiment.owner)
        .outerjoin(last_start, last_start.c.owner == Experiment.owner)
        .outerjoin(User, User.name == Experiment.owner)
        .where(Experiment.status == Status.queued,
               or_(Experiment.queued_at.is_(None), Experiment.queued_at <= now))
        .order_by(used, Experiment.priority.desc(), last_start.c.at.asc().nulls_first(),
                  Experiment.queued_at, Experiment.id)
        .limit(CANDIDATES)
    ).all()  # fmt: skip
    session.rollback()  # end the read: the claim reads afresh
    for run_id, _, needs, used_now, max_gpus in rows:
        limit = max_gpus if max_gpus is not None else default_gpus
        if limit is not None and used_now + needs > limit:
            continue  # its owner is at their GPU limit: it waits
        return Choice(run_id, republish=hint if run_id != hint else None)
    return Choice(None)


def seed_siblings(*, session: Session, experiment_id: int, now: datetime, limit: int) -> list[int]:
    """Queued runs that may train as one stack with `experiment_id` (moe_core.together): of
    its study (or its sweep's trial, or its sweep's dense baselines), its owner and its
    kind, as far along as it is, with its configuration and its base but for the seed.
    At most `limit`, in submission order; the claims decide which are taken."""
    run = session.get(Experiment, experiment_id)
    if run is None or limit < 1 or (run.study_id is None and run.sweep_id is None):
        return []
    group = (
        Experiment.study_id == run.study_id
        if run.study_id is not None
        else (Experiment.sweep_id == run.sweep_id)
        & (Experiment.trial_number.is_(None) if run.trial_number is None
           else Experiment.trial_number == run.trial_number)
    )  # fmt: skip
    rows = session.execute(
        select(Experiment.id, Experiment.config, Experiment.base)
        .where(group, Experiment.id != run.id, Experiment.status == Status.queued,
               Experiment.owner == run.owner, Experiment.dense == run.dense,
               Experiment.cancel_requested.is_(False),
               Experiment.current_epoch == run.current_epoch,
               or_(Experiment.queued_at.is_(None), Experiment.queued_at <= now))
        .order_by(Experiment.id)
    ).all()  # fmt: skip
    mine = _but_seed(run.base)
    found = [i for i, config, base in rows
             if config == run.config and _but_seed(base) == mine and base.get("seed") != run.base.get("seed")]  # fmt: skip
    session.rollback()  # end the read: each claim reads afresh
    return found[:limit]


def _but_seed(base: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != "seed"}
