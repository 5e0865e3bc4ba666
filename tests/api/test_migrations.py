"""The schema comes from Alembic only: it upgrades empty databases and matches the models."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from api.migrate import alembic_config, upgrade_database
from api.models import Base
from api.settings import Settings
from tests.conftest import ROOT, settings_env

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/conftest.py)

TABLES = {"alembic_version", "studies", "experiments", "epoch_metrics", "expert_stats"}


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
