"""Which queued run a delivery takes (store.queue_order): fair across users."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from store import queue_order, users
from store.db import session_scope
from store.models import Experiment, Role, User, utcnow
from tests.factories import claim, new_experiment, new_study

pytestmark = pytest.mark.services  # real Postgres (see tests/fixtures/services.py)


def runs_of(database: str, owner: str, count: int, **base) -> list[int]:
    ids = [new_experiment(database, f"{owner}-{i}", **base) for i in range(count)]
    with session_scope(database) as session:
        if users.get_user(session=session, name=owner) is None:
            users.create_user(session=session, name=owner, role=Role.member)
        session.execute(update(Experiment).where(Experiment.id.in_(ids)).values(owner=owner))
        session.commit()
    return ids


def choose(database: str, hint: int, default_gpus: int | None = None) -> queue_order.Choice:
    with session_scope(database) as session:
        return queue_order.choose(session=session, hint=hint, now=utcnow(),
                                  default_gpus=default_gpus)  # fmt: skip


def test_the_user_with_fewer_gpus_in_use_goes_first(own_database):
    a = runs_of(own_database, "amy", 4)
    claim(own_database, a[0], "w1")  # amy trains one
    (b,) = runs_of(own_database, "ben", 1)  # submitted last
    # a delivery of amy's next run takes ben's, and amy's needs a wake-up again
    assert choose(own_database, a[1]) == queue_order.Choice(b, republish=a[1])
    # a delivery of ben's own run takes it
    assert choose(own_database, b) == queue_order.Choice(b)


def test_between_equals_the_user_who_started_least_recently_goes_first(own_database):
    a = runs_of(own_database, "amy", 3)
    claim(own_database, a[0], "w1")
    with session_scope(own_database) as session:  # amy's first run ended: nobody trains
        session.execute(update(Experiment).where(Experiment.id == a[0])
                        .values(status="succeeded", finished_at=utcnow()))  # fmt: skip
        session.commit()
    (b,) = runs_of(own_database, "ben", 1)
    # both hold no GPU; amy started a run, ben never did: ben's turn (round-robin)
    assert choose(own_database, a[1]).run == b


def test_priority_then_submission_order_within_equals(own_database):
    a = runs_of(own_database, "amy", 3)
    assert choose(own_database, a[2]).run == a[0]  # submission order
    with session_scope(own_database) as session:
        session.execute(update(Experiment).where(Experiment.id == a[2]).values(priority=5))
        session.commit()
    assert choose(own_database, a[0]) == queue_order.Choice(a[2], republish=a[0])


def test_a_run_over_its_owners_gpu_limit_waits_and_a_run_not_due_is_not_taken(own_database):
    a = runs_of(own_database, "amy", 2, gpus=2, expert_parallel=2)
    claim(own_database, a[0], "w1")  # amy holds 2 GPUs
    assert choose(own_database, a[1], default_gpus=2) == queue_order.Choice(None)
    assert choose(own_database, a[1], default_gpus=4).run == a[1]
    with session_scope(own_database) as session:  # her own limit wins over the default
        session.execute(update(User).where(User.name == "amy").values(max_gpus=8))
        session.commit()
    assert choose(own_database, a[1], default_gpus=2).run == a[1]
    later = runs_of(own_database, "ben", 1)[0]
    with session_scope(own_database) as session:  # handed back to wait a while
        session.execute(update(Experiment).where(Experiment.id == later)
                        .values(queued_at=utcnow() + timedelta(minutes=5)))  # fmt: skip
        session.commit()
    assert choose(own_database, later, default_gpus=8).run == a[1]


def test_a_delivery_of_a_run_not_queued_is_left_to_the_lease_protocol(own_database):
    (a,) = runs_of(own_database, "amy", 1)
    claim(own_database, a, "w1")  # running: maybe a dead worker's, to take over
    assert choose(own_database, a) == queue_order.Choice(a)


def siblings(database: str, run: int, limit: int = 8) -> list[int]:
    with session_scope(database) as session:
        return queue_order.seed_siblings(session=session, experiment_id=run, now=utcnow(),
                                         limit=limit)  # fmt: skip


def test_a_runs_seed_siblings_are_its_studys_queued_runs_that_differ_in_the_seed_alone(
    own_database,
):
    runs = new_study(own_database, seeds=4, presets=("baseline", "top2"))
    other = new_study(own_database, seeds=2)  # another study of the same configurations
    alone = new_experiment(own_database, "alone")
    first = runs[("baseline", 1337)]
    assert siblings(own_database, first) == [runs[("baseline", s)] for s in (1338, 1339, 1340)]
    assert siblings(own_database, first, limit=2) == [runs[("baseline", 1338)],
                                                     runs[("baseline", 1339)]]  # fmt: skip
    # the dense runs are one another's, never an MoE run's; another study's are not
    assert siblings(own_database, runs[("dense", 1339)]) == [
        runs[("dense", s)] for s in (1337, 1338, 1340)]  # fmt: skip
    assert runs[("baseline", 1337)] not in siblings(own_database, other[("baseline", 1338)])
    assert siblings(own_database, alone) == []
    # not one that is running, asked to cancel, not due, or at another epoch
    claim(own_database, runs[("baseline", 1338)], "w1")
    now = utcnow()
    with session_scope(own_database) as session:
        for seed, change in ((1339, {"cancel_requested": True}),
                             (1340, {"queued_at": now + timedelta(minutes=5)})):  # fmt: skip
            session.execute(update(Experiment)
                            .where(Experiment.id == runs[("baseline", seed)]).values(**change))  # fmt: skip
        session.execute(update(Experiment).where(Experiment.id == runs[("top2", 1338)])
                        .values(current_epoch=2))  # fmt: skip
        session.commit()
    assert siblings(own_database, first) == []
    assert siblings(own_database, runs[("top2", 1337)]) == [runs[("top2", s)] for s in (1339, 1340)]


def test_runs_of_another_owner_or_base_are_not_siblings(own_database):
    runs = new_study(own_database, seeds=3)
    with session_scope(own_database) as session:
        users.create_user(session=session, name="cat", role=Role.member)
        row = session.get(Experiment, runs[("baseline", 1338)])
        row.owner = "cat"
        other = session.get(Experiment, runs[("baseline", 1339)])
        other.base = {**other.base, "learning_rate": 0.0123}
        session.commit()
    assert siblings(own_database, runs[("baseline", 1337)]) == []


def test_a_stack_of_seeds_holds_one_gpu_of_its_owners_limit(own_database):
    stack = runs_of(own_database, "amy", 3)
    for run, lease in zip(stack[:2], ("aaaaaaaa", "bbbbbbbb"), strict=True):
        claim(own_database, run, f"h:11:{lease}")  # two seeds, one process, one GPU
    assert choose(own_database, stack[2], default_gpus=2) == queue_order.Choice(stack[2])
    claim(own_database, new_experiment(own_database, "x"), "h:12:cccccccc")  # another process
    with session_scope(own_database) as session:  # (the bootstrap admin's: not amy's)
        session.execute(update(Experiment).where(Experiment.name == "x").values(owner="amy"))
        session.commit()
    assert choose(own_database, stack[2], default_gpus=2) == queue_order.Choice(None)
