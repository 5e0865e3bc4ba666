"""Graceful scale-in: a worker told to stop (SIGTERM, as from `docker compose stop`, a
Kubernetes pod deletion or a KEDA scale-down) hands its run back instead of losing it.

SIGTERM reaches the worker's main process (PID 1 of its container). Celery starts a warm
shutdown there: it takes no new task and waits for the running one. We forward the signal
to the pool process that trains; there the run stops at the next step boundary, writes a
checkpoint that resumes exactly, goes back to the queue, and the task returns, so the whole
worker exits within seconds (well inside Kubernetes' default 30 s grace).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

_requested = threading.Event()  # in a pool process: hand the run back and stop
_task_running = threading.Event()  # in a pool process: a task is in progress


def requested() -> bool:
    return _requested.is_set()


class task_in_progress:
    """Marks the span of a task in a pool process: a SIGTERM then stops the run, not the
    process."""

    def __enter__(self) -> None:
        _task_running.set()

    def __exit__(self, *exc_info: object) -> None:
        _task_running.clear()


def _on_sigterm_in_pool_process(signum: int, frame: object) -> None:
    if _task_running.is_set():
        _requested.set()  # the training loop sees it at the next step; repeats change nothing
        return
    # Idle: nothing to hand back; die as SIGTERM would (billiard terminates idle children).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def install_in_pool_process() -> None:
    """In each pool process at start (worker_process_init)."""
    _requested.clear()
    signal.signal(signal.SIGTERM, _on_sigterm_in_pool_process)


def forward_to_pool_processes() -> list[int]:
    """In the main process on a warm shutdown: pass the SIGTERM on to pool processes that
    train (an idle one just exits when the pool closes). Returns the pids signalled."""
    from billiard.process import active_children
    from celery.worker import state

    if not state.active_requests:
        return []
    pids = []
    for child in active_children():
        try:
            os.kill(child.pid, signal.SIGTERM)
            pids.append(child.pid)
        except ProcessLookupError:
            pass
    log.info("warm shutdown: asked pool processes %s to hand their runs back", pids)
    return pids
