"""Where a run's files live: `<artifact_dir>/runs/<run_key>/`, on storage the workers and
the API share (a volume in compose, a ReadWriteMany claim on Kubernetes). Keyed by the run
key, unique to the run, unlike its id, which a reset database hands out again."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from store.settings import Settings

CHECKPOINT = "checkpoint.pt"  # enough to resume: model, optimizer, RNG, histories
MODEL = "model.pt"  # the final weights (the best epoch's under early stopping)
RESULT = "result.json"  # what the engine's run_single_experiment returned
LOG = "run.log"  # what the worker logged for the run, every attempt
RUN_FILES = (MODEL, CHECKPOINT, RESULT, LOG)
RunFile = Literal["model.pt", "checkpoint.pt", "result.json", "run.log"]  # RUN_FILES


def run_dir(settings: Settings, run_key: str) -> Path:
    return settings.artifact_dir / "runs" / run_key


def listing(directory: Path, names: tuple[str, ...] = RUN_FILES) -> list[dict[str, Any]]:
    """The files of `names` that exist in `directory`, with their size and time."""
    items = []
    for name in names:
        try:
            stat = (directory / name).stat()
        except FileNotFoundError:
            continue
        items.append({"name": name, "size": stat.st_size,
                      "modified_at": datetime.fromtimestamp(stat.st_mtime, UTC)})  # fmt: skip
    return items


def remove_run(settings: Settings, run_key: str) -> None:
    shutil.rmtree(run_dir(settings, run_key), ignore_errors=True)
