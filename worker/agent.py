"""The worker's agent, a thread in each worker's main process: it registers the worker,
writes its heartbeat (idle or busy), and sweeps the store so that no run is stranded:

- runs whose owner is dead go back to the queue: a pool process of this worker that died
  (checked every tick), or any worker silent for `heartbeat_timeout` (every
  `sweep_interval`); a run past `max_restarts` fails instead;
- queued runs whose message the broker lost (a live worker sat idle beside them for
  `heartbeat_timeout`) are published again.

Every live worker sweeps; each change of a run is a fenced UPDATE, so exactly one sweep
acts on a given run, and a duplicate message is harmless (claims are fenced too).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta

from store import catalogue, leases, sweeps, workers
from store.db import session_scope
from store.models import utcnow
from store.queue import TrainingQueue
from store.settings import Settings
from worker import slots
from worker.gpu_telemetry import GpuTelemetry
from worker.lease import HOST, owner_is_dead

log = logging.getLogger(__name__)

TICK = 1.0  # seconds between looks at this worker's own runs
FORGET_WORKERS_AFTER = timedelta(days=1)  # a dead worker's row is kept this long


class WorkerAgent(threading.Thread):
    def __init__(self, *, settings: Settings, name: str, queue: TrainingQueue) -> None:
        super().__init__(name="moe-worker-agent", daemon=True)
        self.settings, self.worker_name, self.queue = settings, name, queue
        self.stopping = False  # a warm shutdown began: say so, and take no run over
        self._done = threading.Event()
        # Since when this agent has reached the database without a break. Heartbeats
        # written by others during a break of ours may be missing for the same reason
        # (the database was down for everyone): only after a whole heartbeat_timeout of
        # good contact is a silent run taken for dead, so a long database outage does not
        # end in every live run being re-queued.
        self._in_contact_since: float | None = None
        self.gpu = GpuTelemetry(settings.device)  # read with each heartbeat

    def run(self) -> None:
        beat_every = self.settings.heartbeat_timeout / 6
        last_beat = last_sweep = -float("inf")
        registered = False
        while not self._done.is_set():
            try:
                now = time.monotonic()
                if not registered:
                    self._register()
                    registered = True
                if now - last_beat >= beat_every:
                    registered = self._beat()
                    last_beat = now
                if self._in_contact_since is None:
                    log.info("worker agent: in contact with the database")
                    self._in_contact_since = now
                self.release_dead_local_runs()
                in_contact_long_enough = (
                    now - self._in_contact_since >= self.settings.heartbeat_timeout
                )
                if (
                    now - last_sweep >= self.settings.sweep_interval
                    and in_contact_long_enough
                    and not self.stopping
                ):
                    self.sweep()
                    last_sweep = now
            except Exception as exc:  # the database or broker is away: try again next tick
                if self._in_contact_since is not None:
                    log.warning("worker agent: lost the database or broker: %s", exc)
                self._in_contact_since = None
            self._done.wait(TICK)

    def stop(self) -> None:
        """At the end of a warm shutdown: stop the thread and leave the registry."""
        self._done.set()
        self.join(timeout=5)
        try:
            with session_scope(self.settings.database_url) as session:
                workers.deregister(session=session, name=self.worker_name)
        except Exception:
            log.warning("worker agent: could not deregister", exc_info=True)

    # ------------------------------------------------------------------ steps

    def _register(self) -> None:
        with session_scope(self.settings.database_url) as session:
            workers.register(
                session=session, name=self.worker_name, host=HOST, pid=os.getpid(),
                device=self.settings.device, slots=self.settings.runs_per_gpu,
                gpus=slots.slot_count(self.settings, on_gpu=self.settings.device in
                                      (None, "auto") or self.settings.device.startswith("cuda")),
            )  # fmt: skip

    def _beat(self) -> bool:
        reading = self.gpu.read()  # never raises: None on a CPU or when NVML fails
        with session_scope(self.settings.database_url) as session:
            return workers.beat(
                session=session, name=self.worker_name, stopping=self.stopping, gpu=reading
            )

    def release_dead_local_runs(self) -> list[int]:
        """Runs of this worker whose pool process died: back to the queue at once."""
        with session_scope(self.settings.database_url) as session:
            ids = leases.requeue_abandoned(
                session=session,
                stale_before=leases.stale_cutoff(self.settings.heartbeat_timeout),
                max_restarts=self.settings.max_restarts,
                worker_name=self.worker_name,
                owner_is_dead=owner_is_dead,
            )
        self._publish(ids, "its pool process died")
        return ids

    def sweep(self) -> tuple[list[int], list[int]]:
        """Re-queue runs of dead workers; re-publish runs whose message was lost."""
        with session_scope(self.settings.database_url) as session:
            requeued = leases.requeue_abandoned(
                session=session,
                stale_before=leases.stale_cutoff(self.settings.heartbeat_timeout),
                max_restarts=self.settings.max_restarts,
            )
            lost = leases.republish_due(
                session=session, now=utcnow(), grace=self.settings.heartbeat_timeout
            )
            workers.prune(session=session, silent_before=utcnow() - FORGET_WORKERS_AFTER)
        self._publish(requeued, "its worker stopped sending heartbeats")
        self._publish(lost, "its message was lost (queued beside an idle worker)")
        self.advance_sweeps()
        return requeued, lost

    def advance_sweeps(self) -> list[int]:
        """Each running sweep settled and advanced: what a worker that died between ending
        a run and advancing its sweep left undone (idempotent otherwise)."""
        created = []
        with session_scope(self.settings.database_url) as session:
            for sweep_id in sweeps.running_sweeps(session=session):
                try:
                    created += sweeps.advance(
                        session=session, sweep_id=sweep_id,
                        max_queued=self.settings.max_queued_runs_per_user,
                    )  # fmt: skip
                except Exception:
                    # One sweep's fault is that sweep's: it must not read as a lost database
                    # (which resets contact and delays every takeover) nor stop the others.
                    session.rollback()
                    log.exception(
                        "sweeps: could not advance sweep %s; trying again later", sweep_id
                    )
        if created:
            log.info("sweeps: publishing new trials' runs %s", created)
            self.queue.enqueue(created)
            with session_scope(self.settings.database_url) as session:
                catalogue.mark_published(session=session, experiment_ids=created)
        return created

    def _publish(self, ids: list[int], why: str) -> None:
        if ids:
            log.warning("re-queueing experiments %s: %s", ids, why)
            self.queue.enqueue(ids)
