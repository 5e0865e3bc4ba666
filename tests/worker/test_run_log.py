"""A run's log holds its own lines: its training thread's and its lease monitor's, not
another run's in the same process (a threaded pool), and a failure's traceback."""

from __future__ import annotations

import logging
import threading

from worker.training import run_log

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
