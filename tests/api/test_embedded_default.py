"""With no settings at all: SQLite under the data home and a broker that needs no server."""

from __future__ import annotations

import os

from sqlalchemy import create_engine, inspect, text

from store.settings import Settings
from tests.client import make_client


def test_no_settings_means_sqlite_and_the_sql_broker_under_the_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    settings = Settings()
    home = tmp_path / "xdg" / "moe-lab"
    assert settings.home == home
    assert settings.database_url == f"sqlite:///{home / 'moe.db'}"
    assert settings.broker_url == f"sqla+sqlite:///{home / 'broker.db'}"
    assert settings.artifact_dir == home / "artifacts"
    assert settings.auto_migrate is True

    monkeypatch.setenv("MOE_HOME", str(tmp_path / "elsewhere"))
    assert Settings().database_url == f"sqlite:///{tmp_path / 'elsewhere' / 'moe.db'}"
    monkeypatch.setenv("MOE_DATABASE_URL", "postgresql+psycopg://db/moe")
    assert Settings().auto_migrate is False


def test_the_app_migrates_sqlite_at_start_and_queues_into_the_sql_broker(tmp_path):
    settings = Settings(home=tmp_path / "home")
    with make_client(settings) as client:
        response = client.post("/experiments", json={"name": "laptop", "base_preset": "micro"})
        assert response.status_code == 201, response.text
        assert client.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok"}
        assert client.get("/experiments").json()["total"] == 1

    store = create_engine(settings.database_url)
    assert "experiments" in inspect(store).get_table_names()
    store.dispose()
    broker = create_engine(settings.broker_url.removeprefix("sqla+"))
    with broker.connect() as connection:
        waiting = connection.execute(text("SELECT count(*) FROM kombu_message")).scalar()
    broker.dispose()
    assert waiting == 1
    assert os.path.exists(tmp_path / "home" / "moe.db")
