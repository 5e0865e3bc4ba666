"""The schema comes from Alembic only: it upgrades empty databases and matches the models."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from store.migrate import alembic_config, upgrade_database
from store.models import Base
from store.settings import Settings
from tests.conftest import ROOT, settings_env

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/conftest.py)

TABLES = {
    "alembic_version", "studies", "experiments", "epoch_metrics", "expert_stats", "workers",
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
