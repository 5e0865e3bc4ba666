"""The worker's Celery application: `celery -A worker.celery_app worker -Q gpu ...`.

Beside the tasks, each worker runs an agent in its main process (worker.agent: registry
heartbeat, takeover of dead workers' runs) and hands its run back when told to stop
(worker.shutdown).
"""

from __future__ import annotations

from typing import Any

from celery.signals import (
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from store.db import dispose_engines_after_fork
from store.queue import TrainingQueue, create_celery
from store.settings import get_settings
from worker import shutdown

# The app `celery -A worker.celery_app worker` runs, configured from the environment.
app = create_celery(get_settings(), include=["worker.tasks"])
# One pool process per run it trains at once (MOE_RUNS_PER_GPU; a --concurrency on the
# command line overrides it). Each holds one run: prefetch multiplier 1 (store.queue).
app.conf.worker_concurrency = get_settings().runs_per_gpu

_agent: Any = None  # the main process's WorkerAgent, once the worker is ready


@worker_process_init.connect
def _init_pool_process(**_: object) -> None:
    # A pool child must not share the parent's database connections (e.g. the parent's
    # auto-migrate, or the agent's): drop them, the child opens its own.
    dispose_engines_after_fork()


@worker_ready.connect
def _start_agent(sender: Any = None, **_: object) -> None:
    global _agent
    from worker.agent import WorkerAgent

    settings = get_settings()
    # The pool's real size: a --concurrency on the command line wins over the setting.
    slots = getattr(getattr(sender, "controller", None), "concurrency", None)
    if slots:
        settings = settings.model_copy(update={"runs_per_gpu": slots})
    _agent = WorkerAgent(settings=settings, name=sender.hostname, queue=TrainingQueue(app))
    _agent.start()


@worker_shutting_down.connect
def _on_shutting_down(how: str = "", **_: object) -> None:
    # Runs inside the main process's signal handler: only set flags and send signals.
    if _agent is not None:
        _agent.stopping = True
    if how == "Warm":
        shutdown.forward_to_pool_processes()


@worker_shutdown.connect
def _stop_agent(**_: object) -> None:
    if _agent is not None:
        _agent.stop()
