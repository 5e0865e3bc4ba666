"""Celery tasks. A task takes only an experiment id; the database holds everything else."""

from __future__ import annotations

from celery.signals import worker_init
from sqlalchemy.exc import InterfaceError, OperationalError

from api.migrate import auto_migrate
from api.settings import get_settings
from worker.celery_app import TRAIN_TASK, app
from worker.training import run_experiment


@app.task(
    name=TRAIN_TASK,
    # Late acks and requeue-on-lost are safe only because a run is idempotent (resume from
    # checkpoint, upserted epoch rows): see worker.training.
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
def train_experiment(experiment_id: int) -> None:
    run_experiment(experiment_id, settings=get_settings())


@worker_init.connect
def _migrate_embedded_store(**_: object) -> None:
    # The embedded SQLite store has no separate migrate step (see api.migrate).
    auto_migrate(get_settings())
