"""The newcomer's path: no settings but a data home, so SQLite and the SQL broker, with a
real worker process. Needs no server at all."""

from __future__ import annotations

from store.settings import Settings
from tests.client import make_client, submit, wait_finished
from tests.factories import fast_base


def test_a_run_succeeds_on_sqlite_with_the_serverless_broker(
    tmp_path, corpus_dir, cache_dir, start_worker
):
    settings = Settings(home=tmp_path / "home", data_dir=corpus_dir, cache_dir=cache_dir)
    assert settings.database_url.startswith("sqlite") and settings.broker_url.startswith(
        "sqla+sqlite"
    )

    with make_client(settings) as api:  # migrates the SQLite store at start
        start_worker(settings, name="laptop")
        run = submit(api, "first", base=fast_base(num_epochs=2))
        final = wait_finished(api, run["id"], timeout=120)
        assert final["status"] == "succeeded", final["error"]
        epochs = api.get(f"/experiments/{run['id']}/metrics").json()["epochs"]
        assert [epoch["epoch"] for epoch in epochs] == [1, 2]
    assert (settings.artifact_dir / "runs" / final["run_key"] / "checkpoint.pt").is_file()
