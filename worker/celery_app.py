"""The Celery application: `celery -A worker.celery_app worker -Q gpu ...` runs a worker.

This module imports no torch, so the API can import it to enqueue tasks (by name).
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from api.db import dispose_engines_after_fork
from api.settings import Settings, get_settings

TRAINING_QUEUE = "gpu"
TRAIN_TASK = "worker.tasks.train_experiment"


def create_celery(settings: Settings) -> Celery:
    app = Celery("moe_lab", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        # The database is the source of truth for a run's state; no result backend.
        task_ignore_result=True,
        task_routes={TRAIN_TASK: {"queue": TRAINING_QUEUE}},
        task_default_queue=TRAINING_QUEUE,
        # A run takes minutes to hours: each worker process holds exactly one.
        worker_prefetch_multiplier=1,
        # Ack when a run ends, and hand a task whose worker died back to the queue: safe
        # because a run resumes from its last checkpoint and epoch rows are upserts.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if settings.broker_url.startswith(("redis", "rediss", "sentinel")):
        app.conf.broker_transport_options = {
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
    """One Celery app per broker and process (the API's producer pool lives in it)."""
    key = (settings.broker_url, settings.broker_key_prefix)
    if key not in _apps:
        _apps[key] = create_celery(settings)
    return _apps[key]


# The app `celery -A worker.celery_app worker` runs, configured from the environment.
app = celery_for(get_settings())


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    # A pool child must not share the parent's database connections (e.g. the parent's
    # auto-migrate at start): drop them, the child opens its own.
    dispose_engines_after_fork()
