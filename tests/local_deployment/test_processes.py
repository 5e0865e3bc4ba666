"""local_deployment.processes: when a process of the service counts as started, and what
of its log is its own."""

from __future__ import annotations

import sys

import pytest

from local_deployment.processes import ApiProcess, ServiceProcess, StartedProcesses
from store.settings import Settings

STAND_IN = "tests.local_deployment.stand_in_api"


@pytest.mark.parametrize("started", [1, 2])
def test_an_api_of_two_workers_is_ready_only_when_both_have_started(started, tmp_path, monkeypatch):
    monkeypatch.setenv("STAND_IN_STARTED", str(started))
    api = ApiProcess(Settings(home=tmp_path), tmp_path / "api.log", workers=2, entry=STAND_IN)
    try:
        if started == 2:
            assert api.wait_ready(timeout=30) is api
        else:  # /healthz answers, but one worker is not up: a figure would miss it
            with pytest.raises(RuntimeError, match="the API did not start"):
                api.wait_ready(timeout=3)
            assert api.process.poll() is None  # still running: it was the wait that said no
    finally:
        api.stop()


def test_a_process_reads_only_what_it_wrote_to_a_log_it_shares(tmp_path):
    """A worker restarted under the same name appends to the same log: the first one's
    " ready." must not make the second look started."""
    log = tmp_path / "w0.log"
    log.write_text("[... ] w0@host ready.\n")
    process = ServiceProcess([sys.executable, "-c", "print('importing')"], {}, log)
    process.process.wait(timeout=30)
    process.log.close()
    assert process.output() == "importing\n"
    assert log.read_text().startswith("[... ] w0@host ready.")


def test_started_processes_are_stopped_on_leaving(tmp_path, monkeypatch):
    monkeypatch.setenv("STAND_IN_STARTED", "1")
    with StartedProcesses(tmp_path, tails=False) as started:
        api = started.api(Settings(home=tmp_path), entry=STAND_IN)
    assert api.process.poll() is not None
