"""Celery tasks. A task takes only an experiment id; the database holds everything else."""

from __future__ import annotations

from celery.exceptions import Reject
from celery.signals import worker_init
from sqlalchemy.exc import InterfaceError, OperationalError

from store.migrate import auto_migrate
from store.queue import TRAIN_TASK, TrainingQueue
from store.settings import get_settings
from worker import shutdown
from worker.celery_app import app
from worker.training import run_experiment


@app.task(
    name=TRAIN_TASK,
    bind=True,
    # Late acks and requeue-on-lost are safe only because claiming a run is fenced and a
    # run resumes from its checkpoint: see worker.lease.
    acks_late=True,
    reject_on_worker_lost=True,
    # The database being away must not lose the run: retry (resuming from the checkpoint)
    # until it is back, at most 5 minutes apart. While it is away nothing could record a
    # failure anyway, so giving up would only leave the run "running" for good.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=None,
)
def train_experiment(self, experiment_id: int) -> None:
    with shutdown.task_in_progress():
        if shutdown.requested():
            # This worker is stopping (a task can still arrive while its shutdown drains):
            # back to the broker, untouched, for another worker.
            raise Reject("this worker is stopping", requeue=True)
        run_experiment(
            experiment_id,
            settings=get_settings(),
            queue=TrainingQueue(app),
            worker_name=self.request.hostname,
        )


@worker_init.connect
def _migrate_embedded_store(**_: object) -> None:
    # The embedded SQLite store has no separate migrate step (see store.migrate).
    auto_migrate(get_settings())
