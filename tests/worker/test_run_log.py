"""A run's log holds its own lines: its training thread's and its lease monitor's, not
another run's in the same process (a threaded pool), and a failure's traceback."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from worker.run_log import run_log

log = logging.getLogger("worker.training")


def test_two_runs_in_one_process_keep_their_own_lines(tmp_path):
    ready = threading.Barrier(2)

    def attempt(experiment_id: int) -> None:
        with run_log(tmp_path / f"{experiment_id}.log", experiment_id):
            ready.wait()  # both logs open at once
            log.info("training %s", experiment_id)
            monitor = threading.Thread(
                target=lambda: log.info("heartbeat of %s", experiment_id),
                name=f"lease-{experiment_id}",
            )
            monitor.start()
            monitor.join()
            try:
                raise ValueError(f"boom {experiment_id}")
            except ValueError:
                log.exception("experiment %s failed", experiment_id)
            ready.wait()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for mine, other in ((1, 2), (2, 1)):
        text = (tmp_path / f"{mine}.log").read_text()
        assert f"training {mine}" in text and f"heartbeat of {mine}" in text
        assert "Traceback" in text and f"boom {mine}" in text
        assert f"training {other}" not in text and f"heartbeat of {other}" not in text
    assert all(not str(getattr(h, "baseFilename", "")).startswith(str(tmp_path))
               for h in logging.getLogger().handlers)  # fmt: skip


@pytest.mark.parametrize("planted", ["symlink", "hard link", "directory"])
def test_a_run_log_planted_in_the_store_is_never_written_through(tmp_path, caplog, planted):
    # Someone with write access to the store points run.log elsewhere: the worker must not
    # append to what it names; the run still trains, and the worker says why it has no log.
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not the run's\n")
    path = tmp_path / "run" / "run.log"
    path.parent.mkdir()
    if planted == "symlink":
        path.symlink_to(elsewhere)
    elif planted == "hard link":
        os.link(elsewhere, path)
    else:
        path.mkdir()
    trained = False
    with caplog.at_level(logging.WARNING), run_log(path, 7):
        log.info("training 7")
        trained = True
    assert trained
    assert elsewhere.read_text() == "not the run's\n"
    assert path.is_symlink() == (planted == "symlink")  # left for the operator to see
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("experiment 7" in m and str(path) in m and "not a plain file" in m
               for m in warned), warned  # fmt: skip
    assert all(not str(getattr(h, "baseFilename", "")).startswith(str(tmp_path))
               for h in logging.getLogger().handlers)  # fmt: skip


def test_a_later_attempt_appends_to_the_run_log(tmp_path):
    path = tmp_path / "run.log"
    for attempt in (1, 2):
        with run_log(path, 7):
            log.info("attempt %s", attempt)
    text = path.read_text()
    assert "attempt 1" in text and "attempt 2" in text
