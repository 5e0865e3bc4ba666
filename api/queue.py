"""Sending training tasks to the workers (by task name: the API never imports torch)."""

from __future__ import annotations

from celery import Celery

from api.settings import Settings
from worker.celery_app import TRAIN_TASK, TRAINING_QUEUE, celery_for


class TrainingQueue:
    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    @classmethod
    def for_settings(cls, settings: Settings) -> TrainingQueue:
        return cls(celery_for(settings))

    def enqueue(self, experiment_ids: list[int]) -> None:
        """Queue one training task per experiment. Call only after the rows are committed:
        a worker may start on a task before this request has returned."""
        for experiment_id in experiment_ids:
            self.celery.send_task(TRAIN_TASK, args=[experiment_id], queue=TRAINING_QUEUE)

    def ping(self) -> None:
        """Raise unless the broker accepts a connection."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
