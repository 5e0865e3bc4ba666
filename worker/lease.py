"""A run's lease, held by the worker process that trains it: claim, heartbeat, record each
epoch, then finish or hand back. Every write is fenced on the lease's owner id, so once the
run has been taken over (this worker was taken for dead) nothing this one writes lands.

How a run survives its worker (the whole story, in one place):
- a pool process dies (OOM, segfault): its worker's main process sees the run's owner gone
  and puts the run back in the queue within a second or two (worker.agent), and Celery
  requeues the task (reject_on_worker_lost); whichever delivery comes first takes it over;
- a whole worker dies (SIGKILL, lost node): its heartbeats stop, and after
  `heartbeat_timeout` the sweep of any live worker re-queues the run;
- a worker is told to stop (SIGTERM: scale-in, redeploy): the run stops at the next step,
  writes a checkpoint that resumes exactly, and is handed back at once (worker.shutdown);
- the broker loses its messages: a run left queued beside an idle worker is published
  again (worker.agent).
Any worker that takes the run resumes it from its checkpoint; epoch rows are upserts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy.exc import InterfaceError, OperationalError

from moe_core.records import EpochRecord, ProgressReport, StepPoint
from store import catalogue, leases, sweeps, tracking
from store.db import session_scope
from store.leases import Claim, LeaseState
from store.models import Status, utcnow
from store.queue import TrainingQueue
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


class Progress(NamedTuple):
    """One report of where the run is, with this attempt's pace (see Pace)."""

    phase: str
    epoch: int
    step: int
    steps_per_epoch: int | None
    tokens_per_sec: float | None
    eta_seconds: float | None
    at: datetime

    def as_row(self) -> dict[str, Any]:
        row = self._asdict()
        row["updated_at"] = row.pop("at").isoformat()
        return row


class Pace:
    """The Trainer's per-step reports turned into tokens/s and an ETA: the pace is this
    attempt's, from its first training step (evaluation time included, so the ETA counts
    it), and the ETA is for the last epoch. Written by the training thread, read by the
    lease's monitor: one attribute swap, no lock needed."""

    def __init__(self) -> None:
        self.num_epochs: int | None = None
        self._first: tuple[float, int, int] | None = None  # (time, steps done, tokens done)
        self._tokens_before = 0  # tokens of this attempt's finished epochs
        self._epoch_tokens = (0, 0)  # (epoch, tokens in it) as last reported
        self._latest: Progress | None = None

    def update(self, info: ProgressReport | dict[str, Any]) -> None:
        now = time.monotonic()
        per_epoch = info["steps_per_epoch"]
        epoch, step = info["epoch"], info["step"]
        if self._epoch_tokens[0] not in (0, epoch):  # a new epoch began
            self._tokens_before += self._epoch_tokens[1]
        self._epoch_tokens = (epoch, info["tokens"])
        tokens_per_sec = eta = None
        if per_epoch:
            done = (epoch - 1) * per_epoch + step
            tokens = self._tokens_before + info["tokens"]
            if self._first is None:
                self._first = (now, done, tokens)
            started, done_then, tokens_then = self._first
            elapsed = now - started
            if elapsed > 0 and done > done_then:
                tokens_per_sec = (tokens - tokens_then) / elapsed
                if self.num_epochs is not None:
                    rate = (done - done_then) / elapsed
                    eta = max(0, self.num_epochs * per_epoch - done) / rate
        self._latest = Progress(info["phase"], epoch, step, per_epoch, tokens_per_sec, eta,
                                utcnow())  # fmt: skip

    def current(self) -> Progress | None:
        return self._latest


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
        owner: str | None = None,
    ) -> None:
        self.experiment_id = experiment_id
        self.settings = settings
        self.queue = queue
        self.worker_name = worker_name
        self.device = device
        # `owner`: a lease claimed by another process of this attempt (rank 0 of a run on
        # several GPUs reports under the claim its worker's pool process made: worker.launch)
        self.owner = owner or new_owner_id()
        # Its lines name their run, so that the log of each of several runs trained in one
        # thread (worker.together) keeps its own (worker.run_log)
        self.log = logging.LoggerAdapter(log, {"experiment_id": experiment_id})
        self.attempt = 0
        self._state = LeaseState.held  # as the monitor last saw it
        self._pace = Pace()
        # Step points not yet written, and every how many steps they come (worker.training
        # sets it): the monitor writes them with the progress, the training thread at an
        # epoch's end and at a stop, so that no checkpoint is ahead of its points.
        self.step_metrics_every = 1
        self._points: list[StepPoint] = []
        self._points_lock = threading.Lock()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._monitor: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<RunLease experiment {self.experiment_id} by {self.owner}>"

    def _session(self):
        return session_scope(self.settings.database_url)

    # ------------------------------------------------------------------ claim

    def claim(self) -> Claim:
        """Take the run (or take it over from a dead owner); see store.leases.claim_run."""
        with self._session() as session:
            claim = leases.claim_run(
                session=session,
                experiment_id=self.experiment_id,
                owner=self.owner,
                worker_name=self.worker_name,
                device=self.device,
                stale_before=leases.stale_cutoff(self.settings.heartbeat_timeout),
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

    def report_progress(self, info: ProgressReport) -> None:
        """The Trainer's on_progress, every step: kept in memory (no I/O); the monitor
        writes the latest with a heartbeat every `progress_interval` seconds."""
        self._pace.update(info)

    def record_steps(self, points: list[StepPoint]) -> None:
        """The Trainer's on_steps: kept in memory, written by the monitor with the next
        progress report; at a stop, written now (the stop's checkpoint comes next)."""
        with self._points_lock:
            self._points.extend(points)
        if self.should_stop():
            self.write_steps()

    def write_steps(self, *, patient: bool = True) -> None:
        """Write the points kept so far (fenced: LostOwnership when the run is not ours),
        waiting out a database outage unless not `patient` (the monitor, which tries again
        at its next poll rather than stop heartbeating)."""
        with self._points_lock:
            points, self._points = self._points, []
        if not points:
            return

        def write() -> None:
            with self._session() as session:
                leases.record_steps(session=session, experiment_id=self.experiment_id,
                                    owner=self.owner, every=self.step_metrics_every,
                                    points=points)  # fmt: skip

        try:
            if patient:
                outlasting_outages(self.settings, f"{self!r} steps to {points[-1]['step']}", write)
            else:
                write()
        except (OperationalError, InterfaceError):
            with self._points_lock:  # kept for the next try
                self._points[:0] = points
            raise

    def position(self) -> tuple[int | None, float | None]:
        """Where training stands (worker.system_metrics): optimizer steps done (None while a
        resumed run prepares its data) and the position in epochs (2.5: half-way through 3)."""
        p = self._pace.current()
        if p is None:
            return None, None
        if not p.steps_per_epoch:  # preparing data: at the start of its epoch
            return (0 if p.epoch == 1 else None), float(p.epoch - 1)
        done = min(p.step, p.steps_per_epoch)
        return (p.epoch - 1) * p.steps_per_epoch + done, p.epoch - 1 + done / p.steps_per_epoch

    def preparing_data(self, *, epoch: int, num_epochs: int) -> None:
        self._pace.num_epochs = num_epochs
        self._pace.update({"phase": "preparing_data", "epoch": epoch, "step": 0,
                           "steps_per_epoch": None, "tokens": 0})  # fmt: skip

    def should_stop(self) -> bool:
        """Checked by the training loop every step: a flag read, no I/O."""
        return self._stop.is_set() or shutdown.requested()

    def lost(self) -> bool:
        """Whether the monitor last saw the run held by another attempt (a takeover)."""
        return self._state is LeaseState.lost

    def _watch(self) -> None:
        """Beside the training loop: reads the lease every `cancel_poll_seconds` and writes
        a heartbeat every `heartbeat_timeout / 6`, so that data loading or evaluation
        cannot starve the heartbeat, and should_stop() stays a flag read."""
        poll = max(self.settings.cancel_poll_seconds, 0.01)
        beat_every = self.settings.heartbeat_timeout / 6
        last_beat = last_report = time.monotonic()
        reported = None
        failing = False
        while not self._done.wait(poll if not failing else max(poll, 1.0)):
            try:
                with self._session() as session:
                    now = time.monotonic()
                    progress = self._pace.current()
                    due = (
                        progress is not None
                        and progress is not reported
                        and (
                            reported is None or now - last_report >= self.settings.progress_interval
                        )
                    )
                    if due:
                        try:
                            self.write_steps(patient=False)
                        except leases.LostOwnership:
                            pass  # the lease's state, read below, stops the run
                    if now - last_beat >= beat_every or due:
                        leases.heartbeat(
                            session=session, experiment_id=self.experiment_id, owner=self.owner,
                            progress=progress.as_row() if due and progress is not None else None,
                        )  # fmt: skip
                        last_beat = now
                        if due:
                            reported, last_report = progress, now
                    self._state = leases.lease_state(
                        session=session, experiment_id=self.experiment_id, owner=self.owner
                    )
                if self._state is not LeaseState.held:
                    self._stop.set()
                if failing:
                    self.log.info("%r: the database is back", self)
                failing = False
            except Exception as exc:  # a database outage must not kill the run: try again
                if not failing:
                    self.log.warning("%r: lease poll failed (%s); training goes on", self, exc)
                failing = True

    def record_epoch(self, record: EpochRecord) -> None:
        """The Trainer's on_epoch_end: the epoch's rows, waiting out a database outage.
        Raises LostOwnership (writing nothing) when the run is no longer ours."""
        val: Mapping[str, Any] = record.get("val") or {}
        self.log.info("epoch %s: train loss %.4f, val CE %s, %.0f tokens/s, %.1f s", record["epoch"],
                 record["train"]["loss"], f"{val['ce_loss']:.4f}" if val else "-",
                 record["tokens_per_sec"], record.get("duration") or 0.0)  # fmt: skip
        self.write_steps()  # the epoch's last points before the epoch (and its checkpoint)

        def write() -> None:
            with self._session() as session:
                leases.record_epoch(
                    session=session, experiment_id=self.experiment_id, owner=self.owner,
                    record=record,
                )  # fmt: skip

        outlasting_outages(self.settings, f"{self!r} epoch {record['epoch']}", write)
        if self._sweep_prunes():
            self.log.info("experiment %s: pruned by its sweep after epoch %s", self.experiment_id,
                     record["epoch"])  # fmt: skip
            self._stop.set()  # the trial's runs are flagged cancelled: settle_stop ends this one

    # ------------------------------------------------------------------ sweeps

    def _sweep_prunes(self) -> bool:
        """Whether this run's sweep (if any) prunes its trial after the epoch just recorded.
        A failure here never fails the run: the trial then trains on unpruned."""
        try:
            with self._session() as session:
                return sweeps.consider_pruning(session=session, experiment_id=self.experiment_id)
        except Exception:
            self.log.warning("experiment %s: the sweep's pruning check failed", self.experiment_id,
                        exc_info=True)  # fmt: skip
            return False

    def _advance_sweep(self) -> None:
        """The run ended: its sweep (if any) settles the trial and proposes the next ones,
        published here. A failure is logged: the agents' periodic pass does it later."""
        try:
            with self._session() as session:
                ids = sweeps.after_run(session=session, experiment_id=self.experiment_id,
                                       max_queued=self.settings.max_queued_runs_per_user)  # fmt: skip
                if ids:
                    self.queue.enqueue(ids)
                    catalogue.mark_published(session=session, experiment_ids=ids)
        except Exception:
            self.log.warning("experiment %s: advancing its sweep failed; the agents will",
                        self.experiment_id, exc_info=True)  # fmt: skip

    def remember_mlflow_run(self, run_id: str) -> None:
        """The MLflow run that mirrors this one (worker.sinks), kept for later attempts."""
        with self._session() as session:
            tracking.set_mlflow_run_id(
                session=session, experiment_id=self.experiment_id, owner=self.owner,
                run_id=run_id,
            )  # fmt: skip

    def record_sink_failure(self, sink: str, error: str) -> None:
        """A sink failed (worker.sinks): counted for GET /metrics; the run goes on."""
        with self._session() as session:
            tracking.record_sink_failure(
                session=session, experiment_id=self.experiment_id, sink=sink, error=error
            )

    # ------------------------------------------------------------------ the end

    def finish(self, status: Status, *, error: str | None = None, result: Any = None) -> bool:
        with contextlib.suppress(leases.LostOwnership):
            self.write_steps()  # a failed epoch's points (a finished one's are written)

        def write() -> bool:
            with self._session() as session:
                return leases.finish_experiment(
                    session=session, experiment_id=self.experiment_id, owner=self.owner,
                    status=status, error=error, result=result,
                )  # fmt: skip

        done = outlasting_outages(self.settings, f"{self!r} finish", write)
        if not done:
            self.log.info("%r: no longer ours to finish (%s)", self, status)
        else:
            self._advance_sweep()
        return done

    def hand_back(
        self,
        where: str = "before training",
        *,
        out_of_memory: bool = False,
        countdown: float | None = None,
        restart: bool = False,
    ) -> bool:
        """Return the run to the queue (this worker is stopping, or its GPU ran out of
        memory) and publish it, at once or after `countdown` seconds. `restart`: its
        training processes died (a rank of a run on several GPUs): counted as a restart."""

        def write() -> bool:
            with self._session() as session:
                return leases.hand_back(
                    session=session, experiment_id=self.experiment_id, owner=self.owner,
                    out_of_memory=out_of_memory, due_in=countdown or 0.0, restart=restart,
                )  # fmt: skip

        if not outlasting_outages(self.settings, f"{self!r} hand back", write):
            return False
        try:
            self.queue.enqueue([self.experiment_id], countdown=countdown)
        except Exception:  # the broker is away: the sweep publishes it again later
            self.log.warning("%r: handed back, but not published", self, exc_info=True)
        self.log.info("%r: %s; handed back to the queue", self, where)
        return True

    def settle_stop(self, where: str) -> None:
        """The training loop stopped at should_stop() (`where` says where): cancel,
        takeover or shutdown?"""

        def read() -> LeaseState:
            with self._session() as session:
                return leases.lease_state(
                    session=session, experiment_id=self.experiment_id, owner=self.owner
                )

        state = outlasting_outages(self.settings, f"{self!r} stop", read)
        if state is LeaseState.lost:
            self.log.info("%r: taken over by another worker; stopping", self)
        elif state is LeaseState.cancel_requested:
            self.log.info("experiment %s: cancelled, %s", self.experiment_id, where)
            self.finish(Status.cancelled)
        else:
            self.hand_back(where)
