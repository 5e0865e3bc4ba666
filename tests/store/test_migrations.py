"""The schema comes from Alembic only: it upgrades empty databases and matches the models."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from local_deployment.processes import settings_env
from store.migrate import alembic_config, upgrade_database
from store.models import Base
from store.settings import Settings
from tests.environment import ROOT

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)

TABLES = {
    "alembic_version", "studies", "experiments", "epoch_metrics", "expert_stats", "workers",
    "step_metrics",
    "sink_failures",
    "sweeps", "sweep_trials",
    "users", "api_tokens", "audit_events",
    "system_points",
}  # fmt: skip


EPOCH_ROW = (
    "INSERT INTO epoch_metrics (experiment_id, epoch, train_loss, train_ce_loss, train_aux_loss, "
    "tokens_per_sec, steps, forward_time, backward_time, optimizer_time, recorded_at) "
    "VALUES ({id}, 1, 5.0, 5.0, 0.0, 1.0, 1, 0.1, 0.1, 0.1, CURRENT_TIMESTAMP)"
)


def assert_schema_matches_models(url: str) -> None:
    engine = create_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == TABLES
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


@pytest.fixture(params=["postgres", "sqlite"])
def empty_database(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return request.getfixturevalue("empty_postgres")()


def test_upgrade_an_empty_database_then_down_and_up_again(empty_database):
    upgrade_database(empty_database)
    assert_schema_matches_models(empty_database)

    command.downgrade(alembic_config(empty_database), "base")
    engine = create_engine(empty_database)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade_database(empty_database)
    assert_schema_matches_models(empty_database)


def test_alembic_cli_reads_the_settings(empty_postgres, tmp_path):
    """`alembic upgrade head` (the compose file's migrate service) finds MOE_DATABASE_URL."""
    url = empty_postgres()
    env = settings_env(Settings(home=tmp_path, database_url=url))
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_schema_matches_models(url)


def test_runs_stored_before_leases_get_a_run_key_of_their_own(empty_database):
    """0002 on a store with runs in it: each gets a distinct key (artifacts are keyed by it)."""
    from sqlalchemy import text

    command.upgrade(alembic_config(empty_database), "0001")
    engine = create_engine(empty_database)
    try:
        with engine.begin() as connection:
            for name in ("old-1", "old-2"):
                connection.execute(
                    text(
                        "INSERT INTO experiments (name, dense, config, base, status, "
                        "cancel_requested, current_epoch, num_epochs, stopped_early, attempts, "
                        "created_at) VALUES (:name, false, '{}', '{}', 'running', false, 1, 4, "
                        "false, 1, CURRENT_TIMESTAMP)"
                    ),
                    {"name": name},
                )
            connection.execute(text(EPOCH_ROW.format(id="(SELECT min(id) FROM experiments)")))
        upgrade_database(empty_database)
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT run_key, restarts, handbacks FROM experiments")
            ).all()
            # SQLite's batch mode copies `experiments`: its epochs must not cascade away.
            epochs = connection.execute(text("SELECT count(*) FROM epoch_metrics")).scalar_one()
    finally:
        engine.dispose()
    assert epochs == 1
    assert len({key for key, _, _ in rows}) == 2 and all(len(key) == 32 for key, _, _ in rows)
    assert {(restarts, handbacks) for _, restarts, handbacks in rows} == {(0, 0)}
    assert_schema_matches_models(empty_database)


def test_0003_keeps_old_stats_as_training_ones_and_its_downgrade_drops_evaluation_rows(
    empty_database,
):
    """Up: stats rows stored before there were two kinds are training statistics, studies
    have one seed. Down: the old key holds one row per layer, so the evaluation rows go."""
    from sqlalchemy import text

    command.upgrade(alembic_config(empty_database), "0002")
    engine = create_engine(empty_database)
    stats = (
        "INSERT INTO expert_stats (experiment_id, epoch, layer, {extra}entropy, min_usage, "
        "max_usage, usage) VALUES (1, 1, 2, {value}2.0, 10.0, 15.0, '[50.0, 50.0]')"
    )
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO studies (name, base, experiment_presets, created_at) "
                    "VALUES ('old', '{}', '[]', CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO experiments (id, name, dense, config, base, status, "
                    "cancel_requested, current_epoch, num_epochs, stopped_early, attempts, "
                    "restarts, handbacks, run_key, created_at) VALUES (1, 'old', false, '{}', "
                    "'{}', 'succeeded', false, 1, 1, false, 1, 0, 0, 'k', CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(text(stats.format(extra="", value="")))
            connection.execute(text(EPOCH_ROW.format(id=1)))
        upgrade_database(empty_database)
        assert_schema_matches_models(empty_database)
        with engine.begin() as connection:
            assert connection.execute(text("SELECT kind FROM expert_stats")).scalars().all() == [
                "train"
            ]
            assert connection.execute(text("SELECT seeds FROM studies")).scalar_one() == 1
            connection.execute(text(stats.format(extra="kind, ", value="'eval', ")))
        with pytest.raises(Exception, match="(?i)check|constraint"):  # 'train' | 'eval' only
            with engine.begin() as connection:
                connection.execute(text(stats.format(extra="kind, ", value="'other', ")))

        command.downgrade(alembic_config(empty_database), "0002")
        engine.dispose()
        columns = {c["name"] for c in inspect(engine).get_columns("expert_stats")}
        assert "kind" not in columns and "max_step_load" not in columns
        assert "seeds" not in {c["name"] for c in inspect(engine).get_columns("studies")}
        assert "evaluation" not in {c["name"] for c in inspect(engine).get_columns("experiments")}
        with engine.connect() as connection:  # SQLite copies tables: no cascade on the way
            for table, rows in (("expert_stats", 1), ("epoch_metrics", 1), ("experiments", 1)):
                count = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                assert (table, count) == (table, rows)
        upgrade_database(empty_database)
        assert_schema_matches_models(empty_database)
    finally:
        engine.dispose()


def test_an_existing_deployment_upgrades_with_its_runs_intact_and_owned(empty_database):
    """0012 on a store of before users: every run, study and sweep is the bootstrap admin's,
    who exists; the runs' epochs stay (SQLite's batch mode copies the tables)."""
    from sqlalchemy import text

    from store.models import BOOTSTRAP_ADMIN

    command.upgrade(alembic_config(empty_database), "0011")
    engine = create_engine(empty_database)
    try:
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO studies (name, base, experiment_presets, seeds, created_at) "
                "VALUES ('s', '{}', '[]', 1, CURRENT_TIMESTAMP)"
            ))  # fmt: skip
            connection.execute(text(
                "INSERT INTO experiments (name, dense, config, base, status, cancel_requested, "
                "current_epoch, num_epochs, stopped_early, attempts, restarts, handbacks, "
                "run_key, study_id, created_at) VALUES ('old', false, '{}', '{}', 'succeeded', "
                "false, 1, 1, false, 1, 0, 0, 'k1', (SELECT min(id) FROM studies), "
                "CURRENT_TIMESTAMP)"
            ))  # fmt: skip
            connection.execute(text(EPOCH_ROW.format(id="(SELECT min(id) FROM experiments)")))
        upgrade_database(empty_database)
        with engine.connect() as connection:
            owners = {
                table: connection.execute(text(f"SELECT owner FROM {table}")).scalars().all()
                for table in ("experiments", "studies")
            }
            users = connection.execute(text("SELECT name, role FROM users")).all()
            epochs = connection.execute(text("SELECT count(*) FROM epoch_metrics")).scalar_one()
            keys = connection.execute(text("SELECT run_key, study_id FROM experiments")).all()
    finally:
        engine.dispose()
    assert owners == {"experiments": [BOOTSTRAP_ADMIN], "studies": [BOOTSTRAP_ADMIN]}
    assert [tuple(u) for u in users] == [(BOOTSTRAP_ADMIN, "admin")]
    assert epochs == 1 and keys[0][0] == "k1" and keys[0][1] is not None
    assert_schema_matches_models(empty_database)
