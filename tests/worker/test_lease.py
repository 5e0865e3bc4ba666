"""A run's lease as the worker holds it: who is dead, and epoch writes that outlast a
database outage."""

from __future__ import annotations

import os
import subprocess

import pytest
from sqlalchemy.exc import InterfaceError, OperationalError

from store import leases
from store.queue import TrainingQueue, create_celery
from store.settings import Settings
from tests.factories import claim, counts, record
from tests.waiting import wait_for
from worker import lease as lease_module
from worker.lease import HOST, RunLease, owner_is_dead


def test_owner_is_dead_knows_this_hosts_processes_only():
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert not owner_is_dead(f"{HOST}:{child.pid}:abc")
    finally:
        child.kill()
        child.wait()
    assert owner_is_dead(f"{HOST}:{child.pid}:abc")  # reaped: gone
    assert not owner_is_dead(f"elsewhere:{child.pid}:abc")  # judged by its heartbeat
    assert not owner_is_dead(f"{HOST}:{os.getpid()}:abc")  # this process, busy
    assert owner_is_dead(f"{HOST}:{os.getpid()}:abc", this_process_is_free=True)
    zombie = subprocess.Popen(["true"])
    try:
        wait_for(lambda: process_state(zombie.pid) == "Z", timeout=5, what="a zombie")
        assert owner_is_dead(f"{HOST}:{zombie.pid}:abc")  # exited, not yet reaped
    finally:
        zombie.wait()


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.services
def test_epoch_writes_wait_out_a_database_outage(database, experiment_id, tmp_path, monkeypatch):
    settings = Settings(home=tmp_path / "home", database_url=database, db_outage_seconds=5)
    queue = TrainingQueue(create_celery(settings))

    def held_lease(**overrides) -> RunLease:
        lease = RunLease(experiment_id, settings=settings.model_copy(update=overrides),
                         queue=queue, worker_name=None, device="cpu")  # fmt: skip
        return lease

    lease = held_lease()
    assert lease.claim().outcome is leases.ClaimOutcome.claimed
    real, calls = leases.record_epoch, []

    def flaky(**kwargs):  # the database is away for two tries, then back
        calls.append(kwargs["record"]["epoch"])
        if len(calls) == 1:
            raise OperationalError("INSERT", {}, ConnectionRefusedError("server closed"))
        if len(calls) == 2:
            raise InterfaceError("INSERT", {}, ConnectionResetError("connection reset"))
        return real(**kwargs)

    monkeypatch.setattr(lease_module, "FIRST_RETRY_DELAY", 0.01)
    monkeypatch.setattr(leases, "record_epoch", flaky)
    lease.record_epoch(record(1, 5.0))
    assert calls == [1, 1, 1] and counts(database, experiment_id) == (1, 4)  # 2 layers x 2 kinds

    # An outage longer than db_outage_seconds surfaces; other errors are never retried.
    def down(**_):
        raise OperationalError("INSERT", {}, ConnectionRefusedError("down"))

    monkeypatch.setattr(leases, "record_epoch", down)
    lease.settings = settings.model_copy(update={"db_outage_seconds": 0.05})
    with pytest.raises(OperationalError):
        lease.record_epoch(record(2, 4.0))
    monkeypatch.setattr(leases, "record_epoch", real)
    stranger = held_lease()  # never claimed: its writes are fenced out
    with pytest.raises(leases.LostOwnership):
        stranger.record_epoch(record(2, 4.0))
    assert claim(database, experiment_id, "other").outcome is leases.ClaimOutcome.held
