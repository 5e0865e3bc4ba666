"""A cancel lands while the run's data is being prepared (tokenising a corpus can take a
while on a real one), and the run shows that phase meanwhile. The attempt runs in-process
(worker.training.run_experiment: the lease, its monitor thread and the engine, for real)."""

from __future__ import annotations

import threading
import time

import pytest

from store import artifacts, catalogue, leases
from store.db import session_scope
from store.queue import TrainingQueue
from tests.corpus import write_corpus
from tests.factories import new_experiment, run_row
from tests.waiting import wait_for
from worker.training import run_experiment

pytestmark = pytest.mark.services


def test_cancel_during_data_preparation(deployment, tmp_path):
    # A corpus no cache has seen, large enough to take seconds to tokenise.
    corpus = write_corpus(tmp_path / "corpus", seed=11, lines=(150_000, 100, 100))
    settings = deployment(data_dir=corpus, cache_dir=tmp_path / "cache", progress_interval=0.1)
    experiment_id = new_experiment(settings.database_url, "prepare")
    attempt = threading.Thread(
        target=run_experiment,
        args=(experiment_id,),
        kwargs={"settings": settings, "queue": TrainingQueue.for_settings(settings)},
    )
    attempt.start()
    try:
        progress = wait_for(
            lambda: run_row(settings.database_url, experiment_id).progress,
            timeout=30,
            what="the run's first progress",
        )
        assert progress["phase"] == "preparing_data" and progress["step"] == 0
        with session_scope(settings.database_url) as session:
            catalogue.request_cancel(session=session, experiment_id=experiment_id,
                                stale_before=leases.stale_cutoff(60))  # fmt: skip
        asked = time.monotonic()
        attempt.join(timeout=30)
        took = time.monotonic() - asked
    finally:
        attempt.join(timeout=60)
    run = run_row(settings.database_url, experiment_id)
    assert run.status == "cancelled" and run.current_epoch == 0
    assert took < 3, f"the cancel took {took:.1f} s to land"
    log = (artifacts.run_dir(settings, run.run_key) / artifacts.LOG).read_text()
    assert "during data preparation" in log


def test_a_worker_reads_and_writes_only_where_its_settings_say(tmp_path):
    from moe_core.config import base_config
    from store.settings import Settings
    from worker.training import _with_data_settings

    settings = Settings(home=tmp_path, data_dir=tmp_path / "text", cache_dir=tmp_path / "cache")
    # a row stored before the API refused a client's paths (a sweep's base could carry them)
    planted = base_config("micro", data_dir="/srv/planted", cache_dir="/srv/cache")
    used = _with_data_settings(planted, settings)
    assert (used.data_dir, used.cache_dir) == (str(tmp_path / "text"), str(tmp_path / "cache"))
    # no text of its own: only the operator's datasets are fetched from the hub
    hub = Settings(home=tmp_path, data_dir=None, datasets=["wikitext/wikitext-2-v1"])
    assert _with_data_settings(base_config("micro"), hub).data_dir is None
    with pytest.raises(ValueError, match="'imdb/plain_text' is not offered"):
        _with_data_settings(
            base_config("micro", dataset_name="imdb", dataset_config="plain_text"), hub
        )
