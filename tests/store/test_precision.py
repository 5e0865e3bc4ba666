"""One precision per study: the first member to start fixes it for every other."""

from __future__ import annotations

from moe_core.config import base_config, dense_config, get_experiment_configs
from store import catalogue, leases
from store.db import session_scope
from store.models import Experiment, Study
from tests.factories import claim, new_experiment


def new_study(database: str) -> list[int]:
    base = base_config("micro")
    with session_scope(database) as session:
        study = catalogue.create_study(session=session, name="s", base=base, base_preset="micro",
                                  presets=["baseline"], seeds=1)  # fmt: skip
        members = [
            catalogue.create_experiment(session=session, name="dense", config=dense_config(base),
                                   dense=True, base=base, study=study),
            catalogue.create_experiment(session=session, name="baseline", base=base, study=study,
                                   config=get_experiment_configs(base)["baseline"]),
        ]  # fmt: skip
        session.commit()
        return [m.id for m in members]


def pin(database: str, experiment_id: int, owner: str, resolved: str) -> str | None:
    with session_scope(database) as session:
        return leases.pin_precision(session=session, experiment_id=experiment_id, owner=owner,
                                  resolved=resolved)  # fmt: skip


def test_the_first_member_to_start_fixes_the_studys_precision(own_database):
    dense, moe = new_study(own_database)
    claim(own_database, dense, "gpu:1:a")
    assert pin(own_database, dense, "gpu:1:a", "bf16") == "bf16"  # started on a GPU
    claim(own_database, moe, "cpu:2:b")
    # a CPU worker would resolve fp32, but the study already trains in bf16
    assert pin(own_database, moe, "cpu:2:b", "fp32") == "bf16"
    with session_scope(own_database) as session:
        assert [session.get(Experiment, i).precision for i in (dense, moe)] == ["bf16", "bf16"]
        assert session.get(Experiment, dense).study.precision == "bf16"
        assert len(session.query(Study).all()) == 1


def test_a_run_of_its_own_keeps_its_resolved_precision_and_a_stale_owner_pins_nothing(
    own_database,
):
    run = new_experiment(own_database)
    claim(own_database, run, "h:1:a")
    assert pin(own_database, run, "h:9:stale", "bf16") is None  # not the owner: no write
    assert pin(own_database, run, "h:1:a", "fp32") == "fp32"
