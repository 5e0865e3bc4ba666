"""The catalogue of runs and studies: create, find, list, delete, and the few writes the
API makes to a run (a cancel request, publication, withdrawal). Keyword-only functions over
a Session; a change of a run's state is one conditional UPDATE, so the API and the workers
(store.leases) never overwrite each other's decisions."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

from sqlalchemy import ColumnElement, Row, Select, delete, func, or_, select, type_coerce, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from moe_core import comparable
from moe_core.config import BaseConfig, ExperimentConfig
from store import run_fields
from store.db import rowcount
from store.models import (
    BOOTSTRAP_ADMIN,
    FINISHED,
    Experiment,
    Status,
    Study,
    Sweep,
    utcnow,
)


def create_experiment(
    *,
    session: Session,
    name: str,
    config: ExperimentConfig,
    base: BaseConfig,
    preset: str | None = None,
    base_preset: str | None = None,
    dense: bool = False,
    baseline_id: int | None = None,
    study: Study | None = None,
    tags: Sequence[str] = (),
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    owner: str = BOOTSTRAP_ADMIN,
) -> Experiment:
    """Add a queued experiment of `owner` (flushed, not committed; a caller with no user,
    a test or the engine's tools, stores it as the bootstrap admin's, as every run stored
    before users existed). With an `idempotency_key` taken
    already, the flush raises IntegrityError: see `find_submission`. A baseline whose
    cross-entropy does not compare with this run's raises NotComparable: no path stores a
    verdict that would mean nothing (the API refuses it first, with a 422)."""
    if baseline_id is not None:
        baseline = session.get(Experiment, baseline_id)
        if baseline is not None:
            comparable.check(base.model_dump(), baseline.base, f"dense run {baseline_id}")
    experiment = Experiment(
        name=name,
        tags=list(tags),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        preset=preset,
        base_preset=base_preset,
        dense=dense,
        baseline_id=baseline_id,
        study=study,
        config=config.model_dump(mode="json"),
        base=base.model_dump(mode="json"),
        status=Status.queued,
        num_epochs=base.num_epochs,
        queued_at=utcnow(),
        owner=owner,
    )
    session.add(experiment)
    session.flush()
    return experiment


def create_study(
    *,
    session: Session,
    name: str,
    base: BaseConfig,
    base_preset: str | None,
    presets: list[str],
    seeds: int = 1,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    owner: str = BOOTSTRAP_ADMIN,
) -> Study:
    """Add a study row of `owner` (flushed, not committed); its members are added by the
    caller, with the same owner."""
    study = Study(
        name=name,
        owner=owner,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        base_preset=base_preset,
        base=base.model_dump(mode="json"),
        experiment_presets=presets,
        seeds=seeds,
    )
    session.add(study)
    session.flush()
    return study


def get_experiment(*, session: Session, experiment_id: int) -> Experiment | None:
    return session.get(Experiment, experiment_id, populate_existing=True)


class TooManyTags(ValueError):
    pass


class _Keep(enum.Enum):
    note = "keep"


# `note` left as it is (None would clear it); an enum member, so that a type checker can tell
# it from a note
KEEP_NOTE: Final = _Keep.note


def update_labels(
    *,
    session: Session,
    experiment_id: int,
    add_tags: Sequence[str] = (),
    remove_tags: Sequence[str] = (),
    note: str | None | _Keep = KEEP_NOTE,
    max_tags: int,
) -> Experiment | None:
    """A run's tags and note, the only things that change after submission (committed);
    None when there is no such run. The row is locked while the tags are rewritten, so two
    concurrent changes both land. Added tags keep their order, after the run's own; adding
    a present tag or removing an absent one changes nothing. Raises TooManyTags past
    `max_tags`, changing nothing."""
    experiment = session.get(
        Experiment, experiment_id, with_for_update=True, populate_existing=True
    )
    if experiment is None:
        return None
    tags = [tag for tag in experiment.tags if tag not in set(remove_tags)]
    for tag in add_tags:
        if tag not in tags:
            tags.append(tag)
    if len(tags) > max_tags:
        session.rollback()
        raise TooManyTags(f"the run would have {len(tags)} tags, over {max_tags}")
    experiment.tags = tags  # a new list: the JSON column sees the change
    if note is not KEEP_NOTE:
        experiment.note = note
    session.commit()
    return get_experiment(session=session, experiment_id=experiment_id)


class Order(enum.StrEnum):
    newest = "newest"  # by id, newest first
    val_ce = "val_ce"  # by best validation CE, lowest first; runs without one last


@dataclass(frozen=True)
class ExperimentFilter:
    """What GET /experiments narrows the list to; None is "any"."""

    status: Status | None = None
    name: str | None = None  # a case-insensitive substring of the name
    tag: str | None = None
    study_id: int | None = None
    preset: str | None = None
    dense: bool | None = None
    owner: str | None = None  # a user's name
    # on any field a run table shows (store.run_fields: `top_k=2`, `val_ce<5`), all of them
    conditions: tuple[run_fields.Condition, ...] = ()


def list_experiments(
    *,
    session: Session,
    where: ExperimentFilter = ExperimentFilter(),
    order: Order = Order.newest,
    sort: run_fields.Sort | None = None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Experiment], int]:
    """A page of the runs `where` leaves, in `sort`'s order where given, else `order`'s,
    and how many there are in all."""
    query: Select[Experiment] = select(Experiment)
    if where.status is not None:
        query = query.where(Experiment.status == where.status)
    if where.name is not None:
        query = query.where(run_fields.contains(Experiment.name, where.name))
    if where.tag is not None:
        query = query.where(_has_tag(session, where.tag))
    if where.study_id is not None:
        query = query.where(Experiment.study_id == where.study_id)
    if where.preset is not None:
        query = query.where(Experiment.preset == where.preset)
    if where.dense is not None:
        query = query.where(Experiment.dense.is_(where.dense))
    if where.owner is not None:
        query = query.where(Experiment.owner == where.owner)
    in_sql = [c for c in where.conditions if c.field.column is not None]
    query = query.where(*(run_fields.sql(c) for c in in_sql))
    in_python = [c for c in where.conditions if c.field.column is None]
    if in_python or (sort is not None and sort.field.column is None):
        # a summary value derived from the metrics: every run left, judged and sorted here
        runs = [run for run in session.scalars(query.order_by(Experiment.id.desc()))
                if all(run_fields.holds(c, run) for c in in_python)]  # fmt: skip
        if sort is not None:
            runs = run_fields.sorted_runs(runs, sort)
        return runs[offset : offset + limit], len(runs)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if sort is not None:
        ordering = run_fields.sql_order(sort)
    elif order is Order.val_ce:
        ordering = (Experiment.best_val_ce_loss.is_(None), Experiment.best_val_ce_loss,
                    Experiment.id.desc())  # fmt: skip
    else:
        ordering = (Experiment.id.desc(),)
    items = session.scalars(query.order_by(*ordering).limit(limit).offset(offset)).all()
    return items, total


def group_names(
    *, session: Session, runs: Sequence[Experiment]
) -> tuple[dict[int, str], dict[int, str]]:
    """The names of the studies and of the sweeps that `runs` belong to, by id."""
    study_ids = {run.study_id for run in runs if run.study_id is not None}
    sweep_ids = {run.sweep_id for run in runs if run.sweep_id is not None}
    studies = session.execute(select(Study.id, Study.name).where(Study.id.in_(study_ids)))
    sweeps = session.execute(select(Sweep.id, Sweep.name).where(Sweep.id.in_(sweep_ids)))
    return {i: n for i, n in studies}, {i: n for i, n in sweeps}


def _has_tag(session: Session, tag: str) -> ColumnElement[bool]:
    """`tag` is among the run's tags: JSONB containment on Postgres, the JSON1 table
    function on SQLite. (No index: a GIN index on tags would serve it once lists grow.)"""
    if session.get_bind().dialect.name == "postgresql":
        return type_coerce(Experiment.tags, postgresql.JSONB).contains([tag])
    each = func.json_each(Experiment.tags).table_valued("value")
    return select(each.c.value).where(each.c.value == tag).exists()


# A stored submission, of one of the three kinds
Submission = TypeVar("Submission", Experiment, Study, Sweep)


def find_submission(
    *, session: Session, model: type[Submission], idempotency_key: str
) -> Submission | None:
    """The run, study or sweep an earlier POST with this Idempotency-Key stored."""
    session.rollback()  # after a failed insert, and to see the winner's commit
    return session.scalars(
        select(model).where(model.idempotency_key == idempotency_key)
    ).one_or_none()


def submission_published(*, session: Session, submission: Experiment | Study | Sweep) -> bool:
    """Whether every run a submission stored has reached the broker: until then a replay
    of its POST cannot be answered (its broker may still fail and take the runs back)."""
    if isinstance(submission, Experiment):
        return submission.published
    owner = Experiment.study_id if isinstance(submission, Study) else Experiment.sweep_id
    unpublished = select(Experiment.id).where(owner == submission.id, ~Experiment.published)
    return not session.scalar(select(unpublished.exists()))


def delete_experiment(*, session: Session, experiment_id: int) -> bool:
    """Delete a finished run with its epochs and statistics (committed; the caller removes
    its files). False when it is not finished: a worker might still be writing to it."""
    deleted = rowcount(session.execute(
        delete(Experiment).where(Experiment.id == experiment_id, Experiment.status.in_(FINISHED))
    ))  # fmt: skip
    session.commit()
    return deleted == 1


def delete_study(*, session: Session, study_id: int) -> bool:
    """Delete a study whose members are all finished, with them (committed). False while a
    member is queued or running."""
    unfinished = (
        select(Experiment.id)
        .where(Experiment.study_id == study_id, Experiment.status.not_in(FINISHED))
        .exists()
    )
    deleted = rowcount(session.execute(delete(Study).where(Study.id == study_id, ~unfinished)))
    session.commit()
    return deleted == 1


def experiment_status(*, session: Session, experiment_id: int) -> str | None:
    """The run's status alone (None for an unknown id): one column, no object loaded."""
    return session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))


def live_state(
    *, session: Session, experiment_id: int
) -> Row[str, str | None, int, dict[str, Any] | None] | None:
    """The run's status, error, current epoch and progress (None for an unknown id)."""
    return session.execute(
        select(Experiment.status, Experiment.error, Experiment.current_epoch,
               Experiment.progress).where(Experiment.id == experiment_id)
    ).one_or_none()  # fmt: skip


def get_study(*, session: Session, study_id: int) -> Study | None:
    return session.get(Study, study_id, populate_existing=True)


def list_studies(
    *, session: Session, limit: int, offset: int, owner: str | None = None
) -> tuple[Sequence[Study], int]:
    """Studies newest first (of `owner`'s only, when given), and how many there are."""
    mine = [Study.owner == owner] if owner is not None else []
    total = session.scalar(select(func.count()).select_from(Study).where(*mine)) or 0
    items = session.scalars(
        select(Study).where(*mine).order_by(Study.id.desc()).limit(limit).offset(offset)
    )
    return items.all(), total


def request_cancel(*, session: Session, experiment_id: int, stale_before: datetime) -> None:
    """Cancel a run (committed).

    A queued run, or a running one whose worker stopped sending heartbeats before
    `stale_before`, is cancelled at once (its task then finds it finished and does
    nothing); a live running one is flagged, and its worker stops within a step or two.
    """
    now = utcnow()
    session.execute(
        update(Experiment)
        .where(
            Experiment.id == experiment_id,
            or_(
                Experiment.status == Status.queued,
                (Experiment.status == Status.running) & (Experiment.heartbeat_at < stale_before),
            ),
        )
        .values(status=Status.cancelled, cancel_requested=True, finished_at=now)
    )
    session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status == Status.running)
        .values(cancel_requested=True)
    )
    session.commit()


def mark_published(*, session: Session, experiment_ids: list[int]) -> None:
    """Record that these runs' tasks reached the broker (committed)."""
    session.execute(
        update(Experiment).where(Experiment.id.in_(experiment_ids)).values(published=True)
    )
    session.commit()


def withdraw(
    *,
    session: Session,
    experiment_ids: list[int],
    study_id: int | None,
    sweep_id: int | None = None,
) -> None:
    """Delete runs (and their study or sweep) whose tasks the broker refused (committed):
    the POST that stored them fails, so they must not exist. Runs already claimed stay:
    their message did get through."""
    session.execute(
        delete(Experiment).where(
            Experiment.id.in_(experiment_ids), Experiment.status == Status.queued
        )
    )
    if study_id is not None:
        members = select(Experiment.id).where(Experiment.study_id == study_id).exists()
        session.execute(delete(Study).where(Study.id == study_id, ~members))
    if sweep_id is not None:
        runs = select(Experiment.id).where(Experiment.sweep_id == sweep_id).exists()
        session.execute(delete(Sweep).where(Sweep.id == sweep_id, ~runs))
    session.commit()
