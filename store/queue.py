"""The task queue: the Celery app factory, the training task's name, and `TrainingQueue`,
which publishes runs by task name (so the API needs the app, never the tasks or torch)."""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from store.settings import Settings

TRAINING_QUEUE = "gpu"
TRAIN_TASK = "worker.tasks.train_experiment"


def create_celery(settings: Settings, *, include: Iterable[str] = ()) -> Celery:
    """A Celery app on the settings' broker; `include` names the task modules (a worker's)."""
    app = Celery("moe_lab", broker=settings.broker_url, include=list(include))
    app.conf.update(
        # The database is the source of truth for a run's state; no result backend.
        task_ignore_result=True,
        task_routes={TRAIN_TASK: {"queue": TRAINING_QUEUE}},
        task_default_queue=TRAINING_QUEUE,
        # A run takes minutes to hours: each worker process holds exactly one.
        worker_prefetch_multiplier=1,
        # Ack when a run ends, and hand a task whose worker died back to the queue: safe
        # because claiming a run is fenced in the database (a second delivery of a run that
        # is already taken does nothing) and a run resumes from its checkpoint.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if settings.broker_url.startswith(("redis", "rediss", "sentinel")):
        app.conf.broker_transport_options = {
            # Only a backstop: a dead worker's run is taken over through its lease in the
            # database (worker.agent) within a minute; see Settings.visibility_timeout.
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for abandoned messages (unacked past the visibility timeout) every
            # twentieth of it, instead of kombu's fixed ~100 s.
            "unacked_restore_interval": max(1, settings.visibility_timeout // 20),
            "unacked_restore_throttle": 1,
            **(
                {"global_keyprefix": settings.broker_key_prefix}
                if settings.broker_key_prefix
                else {}
            ),
        }
    elif settings.broker_url.startswith(("sqla+", "sqlalchemy+")):
        # The embedded SQL broker has no fanout exchanges, which remote control
        # (inspect, revoke broadcasts) and worker gossip need.
        app.conf.worker_enable_remote_control = False
    return app


_apps: dict[tuple[str, str], Celery] = {}


def celery_for(settings: Settings) -> Celery:
    """One producer-side Celery app per broker and process (its producer pool lives in it)."""
    key = (settings.broker_url, settings.broker_key_prefix)
    if key not in _apps:
        _apps[key] = create_celery(settings)
    return _apps[key]


class TrainingQueue:
    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    @classmethod
    def for_settings(cls, settings: Settings) -> TrainingQueue:
        return cls(celery_for(settings))

    def enqueue(self, experiment_ids: list[int], *, countdown: float | None = None) -> None:
        """Queue one training task per experiment (after `countdown` seconds, when given).
        Call only after the rows are committed: a worker may start on a task before this
        call has returned."""
        for experiment_id in experiment_ids:
            self.celery.send_task(TRAIN_TASK, args=[experiment_id], queue=TRAINING_QUEUE,
                                  countdown=countdown)  # fmt: skip

    def ping(self) -> None:
        """Raise unless the broker accepts a connection."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
