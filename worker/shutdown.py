"""Graceful scale-in: a worker told to stop (SIGTERM, as from `docker compose stop`, a
Kubernetes pod deletion or a KEDA scale-down) hands its run back instead of losing it.

SIGTERM reaches the worker's main process (PID 1 of its container). Celery starts a warm
shutdown there: it takes no new task and waits for the running one. We forward the signal
to the pool process that trains; there the run stops at the next step boundary, writes a
checkpoint that resumes exactly, goes back to the queue, and the task returns, so the whole
worker exits within seconds (well inside Kubernetes' default 30 s grace).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

_requested = threading.Event()  # in a pool process: hand the run back and stop


def requested() -> bool:
    return _requested.is_set()


@contextlib.contextmanager
def task_in_progress() -> Iterator[None]:
    """The span of a task in a pool process: a SIGTERM then asks the run to stop and hand
    itself back instead of ending the process. Installed per task, because billiard puts
    its own handler (exit at once) in place after the pool process's initialiser; that one
    stays in force while the process is idle, where there is nothing to hand back.

    The request is for good: a pool process does not outlive its worker's shutdown, and
    while that drains, Celery may still deliver a task, which must go straight back."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm_during_task)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _on_sigterm_during_task(signum: int, frame: object) -> None:
    _requested.set()  # the training loop sees it at the next step; repeats change nothing


def forward_to_pool_processes() -> list[int]:
    """In the main process on a warm shutdown: pass the SIGTERM on to pool processes that
    train (an idle one just exits when the pool closes). Returns the pids signalled."""
    from billiard.process import active_children
    from celery.worker import state

    if not state.active_requests:
        return []
    pids = []
    for child in active_children():
        if child.pid is None:  # never started: nothing to signal
            continue
        try:
            os.kill(child.pid, signal.SIGTERM)
            pids.append(child.pid)
        except ProcessLookupError:
            pass
    log.info("warm shutdown: asked pool processes %s to hand their runs back", pids)
    return pids
