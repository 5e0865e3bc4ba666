"""A run's log: what the worker logged for it, every attempt, on any worker, appended to
`run.log` in its artifacts (GET /experiments/{id}/logs serves it)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from store import artifacts

log = logging.getLogger(__name__)

# The run's own story goes to its log whatever the console's level (Celery's --loglevel),
# and so do Python's warnings (logged as py.warnings).
logging.getLogger("worker").setLevel(logging.INFO)
logging.captureWarnings(True)


@contextlib.contextmanager
def run_log(path: Path, experiment_id: int) -> Iterator[None]:
    """What this thread and the run's lease monitor log during the block (warnings
    included) is appended to the run's log, which GET /experiments/{id}/logs serves: every
    attempt, on any worker."""
    try:
        handler = _RunLogHandler(path)
    except artifacts.NotAPlainFile as exc:
        # Planted by someone who can write the store: written through by no one, and left
        # in place for the operator to find; the run trains without its log file.
        log.warning("experiment %s: no run log: %s (%s); its lines go to this worker's log "
                    "only", experiment_id, exc, _planted(path))  # fmt: skip
        yield
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    thread, monitor = threading.get_ident(), f"lease-{experiment_id}"
    # Not another run's lines, in a threaded pool: this thread's and this run's monitor's;
    # of seeds trained together in one thread (worker.together), not a line that names
    # another run (`extra={"experiment_id": ...}`).
    handler.addFilter(lambda record: (record.thread == thread or record.threadName == monitor)
                      and getattr(record, "experiment_id", experiment_id) == experiment_id)  # fmt: skip
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


class _RunLogHandler(logging.FileHandler):
    """A FileHandler that opens the run's log as store.artifacts.open_run_log does: never
    through a symlink, never a hard link's other name."""

    def _open(self) -> Any:
        return artifacts.open_run_log(Path(self.baseFilename))


def _planted(path: Path) -> str:
    """What lies at `path`, in words, for the warning."""
    if path.is_symlink():
        return f"a symlink to {os.readlink(path)}"
    if path.is_dir():
        return "a directory"
    with contextlib.suppress(OSError):
        if path.stat(follow_symlinks=False).st_nlink > 1:
            return "a hard link to a file elsewhere"
    return "not a regular file"
