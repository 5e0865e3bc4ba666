"""A run's lease, held by the worker process that trains it: claim, heartbeat, record each
epoch, then finish or hand back. Every write is fenced on the lease's owner id, so once the
run has been taken over (this worker was taken for dead) nothing this one writes lands.

How a run survives its worker (the whole story, in one place):
- a pool process dies (OOM, segfault): its worker's main process sees the run's owner gone
  and puts the run back in the queue within a second or two (worker.sweeper), and Celery
  requeues the task (reject_on_worker_lost); whichever delivery comes first takes it over;
- a whole worker dies (SIGKILL, lost node): its heartbeats stop, and after
  `heartbeat_timeout` the sweep of any live worker re-queues the run;
- a worker is told to stop (SIGTERM: scale-in, redeploy): the run stops at the next step,
  writes a checkpoint that resumes exactly, and is handed back at once (worker.shutdown);
- the broker loses its messages: a run left queued beside an idle worker is published
  again (worker.sweeper).
Any worker that takes the run resumes it from its checkpoint; epoch rows are upserts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from store import runs
from store.db import session_scope
from store.models import Status
from store.queue import TrainingQueue
from store.runs import Claim, LeaseState
from store.settings import Settings
from worker import shutdown

log = logging.getLogger(__name__)

HOST = socket.gethostname()
FIRST_RETRY_DELAY = 0.5  # seconds; doubles up to MAX_RETRY_DELAY between tries
MAX_RETRY_DELAY = 5.0  # a try is one connection attempt: cheap, and recovery stays prompt


def new_owner_id() -> str:
    """Unique to one attempt: the host and process (so a dead one can be recognised)."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str, *, this_process_is_free: bool = False) -> bool:
    """True when `owner` names a process of this host that no longer runs (or, when this
    process is about to start a run, this process itself: its earlier attempt ended)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != HOST or not pid_text.isdigit():
        return False  # another host's processes are judged by their heartbeats
    pid = int(pid_text)
    if pid == os.getpid():
        return this_process_is_free
    return not _process_alive(pid)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child stays a zombie until its parent reaps it
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def outlasting_outages(settings: Settings, what: str, write: Callable[[], Any]) -> Any:
    """Run a database write, retrying through connection failures for up to
    `settings.db_outage_seconds`: a restarted or failed-over database costs a pause, not
    the run. Only connection-level errors are retried; anything else is a real failure."""
    deadline = time.monotonic() + settings.db_outage_seconds
    delay = FIRST_RETRY_DELAY
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database unreachable (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(2 * delay, MAX_RETRY_DELAY)


class RunLease:
    """This process's hold on one run. Use `claim()`, then `with lease:` around training
    (a monitor thread heartbeats and watches for a cancel or a takeover)."""

    def __init__(
        self,
        experiment_id: int,
        *,
        settings: Settings,
        queue: TrainingQueue,
        worker_name: str | None,
        device: str,
    ) -> None:
        self.experiment_id = experiment_id
        self.settings = settings
        self.queue = queue
        self.worker_name = worker_name
        self.device = device
        self.owner = new_owner_id()
        self.attempt = 0
        self._state = LeaseState.held  # as the monitor last saw it
        self._stop = threading.Event()
        self._done = threading.Event()
        self._monitor: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<RunLease experiment {self.experiment_id} by {self.owner}>"

    def _session(self):
        return session_scope(self.settings.database_url)

    # ------------------------------------------------------------------ claim

    def claim(self) -> Claim:
        """Take the run (or take it over from a dead owner); see store.runs.claim_run."""
        with self._session() as session:
            claim = runs.claim_run(
                session=session,
                experiment_id=self.experiment_id,
                owner=self.owner,
                worker_name=self.worker_name,
                device=self.device,
                stale_before=runs.stale_cutoff(self.settings.heartbeat_timeout),
                max_restarts=self.settings.max_restarts,
                owner_is_dead=lambda owner: owner_is_dead(owner, this_process_is_free=True),
            )
        self.attempt = claim.attempt
        return claim

    # ------------------------------------------------------------------ while training

    def __enter__(self) -> RunLease:
        self._monitor = threading.Thread(
            target=self._watch, name=f"lease-{self.experiment_id}", daemon=True
        )
        self._monitor.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self._monitor is not None:
            self._monitor.join(timeout=10)

    def should_stop(self) -> bool:
        """Checked by the training loop every step: a flag read, no I/O."""
        return self._stop.is_set() or shutdown.requested()

    def _watch(self) -> None:
        """Beside the training loop: reads the lease every `cancel_poll_seconds` and writes
        a heartbeat every `heartbeat_timeout / 6`, so that data loading or evaluation
        cannot starve the heartbeat, and should_stop() stays a flag read."""
        poll = max(self.settings.cancel_poll_seconds, 0.01)
        beat_every = self.settings.heartbeat_timeout / 6
        last_beat = time.monotonic()
        failing = False
        while not self._done.wait(poll if not failing else max(poll, 1.0)):
            try:
                with self._session() as session:
                    if time.monotonic() - last_beat >= beat_every:
                        runs.heartbeat(
                            session=session, experiment_id=self.experiment_id, owner=self.owner
                        )
                        last_beat = time.monotonic()
                    self._state = runs.lease_state(
                        session=session, experiment_id=self.experiment_id, owner=self.owner
                    )
                if self._state is not LeaseState.held:
                    self._stop.set()
                if failing:
                    log.info("%r: the database is back", self)
                failing = False
            except Exception as exc:  # a database outage must not kill the run: try again
                if not failing:
                    log.warning("%r: lease poll failed (%s); training goes on", self, exc)
                failing = True

    def record_epoch(self, record: dict[str, Any]) -> None:
        """The Trainer's on_epoch_end: the epoch's rows, waiting out a database outage.
        Raises LostOwnership (writing nothing) when the run is no longer ours."""

        def write() -> None:
            with self._session() as session:
                runs.record_epoch(
                    session=session, experiment_id=self.experiment_id, owner=self.owner,
                    record=record,
                )  # fmt: skip

        outlasting_outages(self.settings, f"{self!r} epoch {record['epoch']}", write)

    # ------------------------------------------------------------------ the end

    def finish(self, status: Status, *, error: str | None = None, result: Any = None) -> bool:
        def write() -> bool:
            with self._session() as session:
                return runs.finish_experiment(
                    session=session, experiment_id=self.experiment_id, owner=self.owner,
                    status=status, error=error, result=result,
                )  # fmt: skip

        done = outlasting_outages(self.settings, f"{self!r} finish", write)
        if not done:
            log.info("%r: no longer ours to finish (%s)", self, status)
        return done

    def hand_back(self, where: str = "before training") -> bool:
        """Return the run to the queue (this worker is stopping), and publish it at once."""

        def write() -> bool:
            with self._session() as session:
                return runs.hand_back(
                    session=session, experiment_id=self.experiment_id, owner=self.owner
                )

        if not outlasting_outages(self.settings, f"{self!r} hand back", write):
            return False
        try:
            self.queue.enqueue([self.experiment_id])
        except Exception:  # the broker is away: the sweep publishes it again later
            log.warning("%r: handed back, but not published", self, exc_info=True)
        log.info("%r: %s; handed back to the queue", self, where)
        return True

    def settle_stop(self, where: str) -> None:
        """The training loop stopped at should_stop() (`where` says where): cancel,
        takeover or shutdown?"""

        def read() -> LeaseState:
            with self._session() as session:
                return runs.lease_state(
                    session=session, experiment_id=self.experiment_id, owner=self.owner
                )

        state = outlasting_outages(self.settings, f"{self!r} stop", read)
        if state is LeaseState.lost:
            log.info("%r: taken over by another worker; stopping", self)
        elif state is LeaseState.cancel_requested:
            self.finish(Status.cancelled)
        else:
            self.hand_back(where)
