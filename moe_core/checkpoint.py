"""What a run resumes from: where the Trainer writes its checkpoint and whose run it is
(Checkpointing), the random state a checkpoint carries beside the Trainer's own, and
reading one back. A checkpoint is enough to resume exactly (nanoGPT's, with the RNG
states, the histories and the epoch in progress): same batches, dropout masks, losses."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointMismatch


@dataclass
class Checkpointing:
    """Where the Trainer writes its checkpoint, at every epoch's end and at a stop (with the
    epoch in progress), and the run it belongs to: a checkpoint carrying another `tag` is
    not resumed from (CheckpointMismatch). No path: nothing is written."""

    path: Path | None = None
    tag: str | None = None
    # Where to resume from when not `path`: a run that changed its number of ranks resumes
    # from the other kind of checkpoint (a DCP directory or one file: `newest`).
    resume_from: Path | None = None

    def __post_init__(self) -> None:
        if self.path is not None:
            self.path = Path(self.path)  # a str or another PathLike too
        if self.resume_from is not None:
            self.resume_from = Path(self.resume_from)

    @property
    def source(self) -> Path | None:
        return self.resume_from or self.path


def newest(*paths: Path) -> Path | None:
    """The most recently written of the checkpoints that exist at `paths` (a file, or a DCP
    directory, dated by its metadata), or None."""

    def written(path: Path) -> float | None:
        marker = path / ".metadata" if path.is_dir() else path
        return marker.stat().st_mtime if marker.is_file() else None

    dated = [(written(p), p) for p in paths]
    dated = [(t, p) for t, p in dated if t is not None]
    return max(dated)[1] if dated else None


def rng_state(loader: Iterable[Any]) -> dict[str, Any]:
    """Every random state a run draws from: torch's (CPU and CUDA), Python's, NumPy's and the
    train loader's own generator (its shuffle), when it has one."""
    generator = getattr(loader, "generator", None)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "loader": generator.get_state() if generator is not None else None,
    }


def restore_rng(state: dict[str, Any], loader: Iterable[Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    generator = getattr(loader, "generator", None)
    if generator is not None and state["loader"] is not None:
        generator.set_state(state["loader"])


def read_checkpoint(path: str | os.PathLike[str], tag: str | None) -> dict[str, Any]:
    """The checkpoint at `path`; raises CheckpointMismatch when `tag` is set and the
    checkpoint carries another (it belongs to another run)."""
    # On the CPU first: RNG states must stay CPU tensors; load_state_dict moves the rest.
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if tag is not None and state.get("tag") != tag:
        raise CheckpointMismatch(f"{path} belongs to {state.get('tag')!r}, not {tag!r}")
    return state
