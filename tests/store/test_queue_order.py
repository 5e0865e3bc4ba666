"""Which queued run a delivery takes (store.queue_order): fair across users."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from store import queue_order, users
from store.db import session_scope
from store.models import Experiment, Role, User, utcnow
from tests.factories import claim, new_experiment

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
