"""The catalogue of runs (store.catalogue): list filters and ids never reused, on
Postgres and SQLite."""

from __future__ import annotations

import pytest

from store import catalogue
from store.db import session_scope
from store.models import utcnow
from tests.factories import (
    new_experiment,
)

pytestmark = pytest.mark.services  # real Postgres (see tests/fixtures/services.py)


def test_list_filters_on_both_backends(own_database):
    from moe_core.config import base_config, get_experiment_configs
    from store.catalogue import ExperimentFilter, Order

    base = base_config("micro")
    config = get_experiment_configs(base)["top2"]
    with session_scope(own_database) as session:
        made = [
            catalogue.create_experiment(
                session=session, name=name, config=config, base=base, preset="top2", tags=tags
            )  # fmt: skip
            for name, tags in (("a_1", ["x", "y"]), ("a%2", ["y"]), ("b", []))
        ]
        session.commit()
        ids = [e.id for e in made]

        def listed(**where) -> list[int]:
            items, total = catalogue.list_experiments(
                session=session, where=ExperimentFilter(**where), order=Order.newest,
                limit=10, offset=0,
            )  # fmt: skip
            assert total == len(items)
            return [e.id for e in items]

        assert listed(tag="y") == [ids[1], ids[0]]
        assert listed(tag="x") == [ids[0]]
        assert listed(name="a_") == [ids[0]]  # `_` and `%` are literal
        assert listed(name="A%") == [ids[1]]
        assert listed(preset="top2", dense=False) == ids[::-1]


def test_a_deleted_runs_id_is_never_given_to_another(own_database):
    first = new_experiment(own_database, "first")
    second = new_experiment(own_database, "second")
    with session_scope(own_database) as session:
        catalogue.request_cancel(session=session, experiment_id=second, stale_before=utcnow())
        assert catalogue.delete_experiment(session=session, experiment_id=second)
    assert new_experiment(own_database, "third") not in (first, second)
