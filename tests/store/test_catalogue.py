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


def test_conditions_and_sorts_on_config_base_and_summary_fields_on_both_backends(own_database):
    """`where` and `sort` of GET /experiments (store.run_fields): in SQL on a config or base
    field and a stored column, in Python on a summary value derived from the metrics; a run
    without the value meets no condition and sorts last."""
    from moe_core.config import base_config, dense_config, get_experiment_configs
    from store import run_fields
    from store.catalogue import ExperimentFilter
    from tests.factories import result, succeed

    def add(session, name, preset, *, seed, dense=False):
        base = base_config("micro", seed=seed)
        config = dense_config(base) if dense else get_experiment_configs(base)[preset]
        return catalogue.create_experiment(session=session, name=name, config=config, base=base,
                                           preset=None if dense else preset, dense=dense).id  # fmt: skip

    with session_scope(own_database) as session:
        top1 = add(session, "Switch", "baseline", seed=1)
        top2 = add(session, "top2 wide", "top2", seed=2)
        dense = add(session, "dense", None, seed=3, dense=True)
        queued = add(session, "top2 later", "top2", seed=4)
        session.commit()
    succeed(own_database, top1, result(3.0, eval_usage=(2.0,) + (14.0,) * 7))
    succeed(own_database, top2, result(2.5))
    succeed(own_database, dense, result(3.5, dense=True))

    def listed(*conditions: str, sort: str | None = None) -> list[int]:
        with session_scope(own_database) as session:
            items, total = catalogue.list_experiments(
                session=session, limit=10, offset=0,
                where=ExperimentFilter(conditions=tuple(map(run_fields.condition, conditions))),
                sort=run_fields.sort_by(sort) if sort else None,
            )  # fmt: skip
            assert total == len(items)
            return [e.id for e in items]

    assert listed("top_k=2") == [queued, top2]  # bare: config.top_k
    assert listed("config.top_k >= 2", "base.seed<4") == [top2]
    assert listed("val_ce < 3.2") == [top2, top1]  # the queued run has none
    assert listed("name~SWITCH") == [top1]
    assert listed("dense=true") == [dense]
    assert listed("dropless=false", "config.name~top") == [queued, top2]  # JSON bool and text
    assert listed("base.precision=auto", "dense != true") == [queued, top2, top1]
    assert listed("min_usage < 5") == [top1]  # derived: the final evaluation's experts
    assert listed("tokens_per_sec>=1000", "top_k=1") == [dense, top1]
    assert listed(sort="val_ce") == [top2, top1, dense, queued]
    assert listed(sort="-base.seed") == [queued, dense, top2, top1]
    assert listed(sort="-min_usage") == [top2, top1, queued, dense]  # the missing newest first
    with session_scope(own_database) as session:
        page, total = catalogue.list_experiments(
            session=session, where=ExperimentFilter(), sort=run_fields.sort_by("-min_usage"),
            limit=1, offset=1,
        )  # fmt: skip
    assert ([e.id for e in page], total) == ([top1], 4)
