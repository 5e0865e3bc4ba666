"""One experiment's run on this worker: claim it, train it with the engine, record it.

The task gets only an id and reads everything from the database. A run is idempotent:
its task may be delivered again (a worker died, or Redis's visibility timeout passed), and
then resumes from the last checkpoint, while epoch rows are upserts.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from api import crud
from api.db import session_scope
from api.models import FINISHED, Status
from api.settings import Settings
from moe_core.config import BaseConfig, ExperimentConfig
from moe_core.data import build_datasets
from moe_core.experiments import resolve_device, run_single_experiment
from moe_core.trainer import TrainingCancelled

log = logging.getLogger(__name__)


def experiment_dir(settings: Settings, experiment_id: int) -> Path:
    return settings.artifact_dir / "experiments" / str(experiment_id)


def run_experiment(experiment_id: int, *, settings: Settings) -> None:
    """Run (or resume) one experiment to a finished status; returns quietly when the run
    is not this worker's to run (finished, cancelled, or held by a live worker)."""
    device = resolve_device(settings.device)
    owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    if not _claim(experiment_id, owner=owner, device=str(device), settings=settings):
        return
    with session_scope(settings.database_url) as session:
        experiment = crud.get_experiment(session=session, experiment_id=experiment_id)
        assert experiment is not None  # claimed just now; rows are never deleted under a run
        config = ExperimentConfig.model_validate(experiment.config)
        base = BaseConfig.model_validate(experiment.base)
        dense, attempt = experiment.dense, experiment.attempts
    log.info("experiment %s: attempt %s on %s as %s", experiment_id, attempt, device, owner)

    run_dir = experiment_dir(settings, experiment_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    monitor = RunMonitor(experiment_id, owner=owner, settings=settings)
    monitor.start()
    try:
        data = _datasets(_with_data_settings(base, settings).model_dump_json())
        result = run_single_experiment(
            config,
            data.train,
            data.val,
            base,
            device,
            dense=dense,
            on_epoch_end=_epoch_writer(experiment_id, owner=owner, settings=settings),
            should_stop=monitor.stop_requested.is_set,
            checkpoint_path=run_dir / "checkpoint.pt",
            # The dense baseline's weights are kept, as the spec's main() keeps dense_model.pt.
            model_path=run_dir / "model.pt" if dense else None,
            verbose=False,
        )
    except (TrainingCancelled, crud.LostOwnership):
        # Cancelled: the finished epochs stay. Lost: the new owner finishes the run, and
        # this update (conditional on ownership) then changes nothing.
        _finish(experiment_id, owner=owner, settings=settings, status=Status.cancelled)
    except (OperationalError, InterfaceError):
        # The database stayed away past db_outage_seconds: not the run's fault. The task's
        # autoretry (worker.tasks) resumes it from its last checkpoint once it is back.
        raise
    except Exception as exc:
        log.exception("experiment %s failed", experiment_id)
        error = f"{type(exc).__name__}: {exc}"
        _finish(experiment_id, owner=owner, settings=settings, status=Status.failed, error=error)
    else:
        _finish(
            experiment_id, owner=owner, settings=settings, status=Status.succeeded, result=result
        )
    finally:
        monitor.stop()


def _claim(experiment_id: int, *, owner: str, device: str, settings: Settings) -> bool:
    """Take the run, waiting while another live worker holds it.

    A second delivery of a task whose first worker is still training (Redis redelivers
    after visibility_timeout) must neither train beside it nor drop the message: it waits
    until that run finishes (then there is nothing to do) or its heartbeats stop (then it
    takes over from the last checkpoint).
    """
    while True:
        with session_scope(settings.database_url) as session:
            if crud.claim_experiment(
                session=session,
                experiment_id=experiment_id,
                owner=owner,
                device=device,
                stale_before=crud.stale_cutoff(settings.heartbeat_timeout),
            ):
                return True
            experiment = crud.get_experiment(session=session, experiment_id=experiment_id)
            if experiment is None or experiment.status in FINISHED:
                log.info("experiment %s: nothing to do", experiment_id)
                return False
        time.sleep(min(settings.heartbeat_timeout / 4, 5.0))


FIRST_RETRY_DELAY = 0.5  # seconds; doubles up to 30 s between tries


def _outlasting_outages(settings: Settings, what: str, write: Callable[[], Any]) -> Any:
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
            delay = min(2 * delay, 30.0)


def _epoch_writer(
    experiment_id: int, *, owner: str, settings: Settings
) -> Callable[[dict[str, Any]], None]:
    def write_once(record: dict[str, Any]) -> None:
        with session_scope(settings.database_url) as session:
            crud.record_epoch(
                session=session, experiment_id=experiment_id, owner=owner, record=record
            )

    def write(record: dict[str, Any]) -> None:
        what = f"experiment {experiment_id} epoch {record['epoch']}"
        _outlasting_outages(settings, what, lambda: write_once(record))

    return write


def _finish(experiment_id: int, *, owner: str, settings: Settings, **outcome: Any) -> None:
    def finish_once() -> bool:
        with session_scope(settings.database_url) as session:
            return crud.finish_experiment(
                session=session, experiment_id=experiment_id, owner=owner, **outcome
            )

    if not _outlasting_outages(settings, f"experiment {experiment_id} finish", finish_once):
        log.info("experiment %s: no longer ours to finish (%s)", experiment_id, outcome["status"])


class RunMonitor(threading.Thread):
    """Beside the training loop: reads the cancel flag every `cancel_poll_seconds` and
    writes a heartbeat every `heartbeat_timeout / 6`, so the loop's should_stop() is a
    flag read and data loading or evaluation cannot starve the heartbeat."""

    def __init__(self, experiment_id: int, *, owner: str, settings: Settings) -> None:
        super().__init__(name=f"run-monitor-{experiment_id}", daemon=True)
        self.experiment_id, self.owner, self.settings = experiment_id, owner, settings
        self.stop_requested = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        poll = max(self.settings.cancel_poll_seconds, 0.01)
        beat_every = self.settings.heartbeat_timeout / 6
        last_beat = time.monotonic()
        while not self._done.wait(poll):
            try:
                with session_scope(self.settings.database_url) as session:
                    if time.monotonic() - last_beat >= beat_every:
                        crud.heartbeat(
                            session=session, experiment_id=self.experiment_id, owner=self.owner
                        )
                        last_beat = time.monotonic()
                    if crud.should_stop(
                        session=session, experiment_id=self.experiment_id, owner=self.owner
                    ):
                        self.stop_requested.set()
            except Exception:  # a database hiccup must not kill the run; try again next poll
                log.warning("experiment %s: monitor poll failed", self.experiment_id, exc_info=True)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)


def _with_data_settings(base: BaseConfig, settings: Settings) -> BaseConfig:
    """Where this worker finds text and keeps its tokenizer cache, unless the run says."""
    return base.model_copy(
        update={
            "data_dir": base.data_dir or (str(settings.data_dir) if settings.data_dir else None),
            "cache_dir": base.cache_dir or str(settings.cache_dir),
        }
    )


@lru_cache(maxsize=1)
def _datasets(base_json: str) -> Any:
    # A study's members share one base: a pool process tokenises it once, not per member.
    return build_datasets(BaseConfig.model_validate(json.loads(base_json)))
