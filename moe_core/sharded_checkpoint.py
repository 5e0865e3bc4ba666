"""A checkpoint of a run on several ranks, written with torch.distributed.checkpoint (DCP):
each rank writes what it holds, and a run resumes at another world size (checkpointed on 2
ranks, it resumes on 1 or on 4).

What makes it independent of the layout: every expert is its own entry
(`model/blocks.2.ffn.experts.w1/expert5`), so a rank reads exactly the experts it holds
whatever the split, and the dense parameters, held alike by every rank, are written once.
The optimizer's state is kept the same way, per parameter and per expert. The Trainer's
own state (histories, the epoch in progress, step points; the same on every rank) is one
entry; each rank's random state is its own (`rng/<rank>`), and a rank of a new layout that
finds none goes on from its seeded stream.

A save goes to `<path>.tmp` and replaces `<path>` once every rank has written (a crash
mid-save leaves the previous checkpoint whole).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn as nn

from .checkpoint import restore_rng, rng_state
from .errors import CheckpointMismatch

if TYPE_CHECKING:
    from .parallel import Parallel
    from .trainer import Trainer


def _expert_base(name: str) -> bool:
    return ".experts." in f".{name}"


def _first_expert(parallel: Parallel | None, local: int) -> int:
    """The global index of this rank's first expert."""
    if parallel is None or parallel.expert_parallel == 1:
        return 0
    return parallel.expert_rank * local


def _split(prefix: str, name: str, tensor: torch.Tensor, parallel: Any) -> dict[str, Any]:
    """One entry per tensor; an expert tensor ([E_local, ...]) one per expert it holds."""
    if not _expert_base(name) or tensor.dim() == 0:
        return {f"{prefix}/{name}": tensor}
    first = _first_expert(parallel, tensor.shape[0])
    return {f"{prefix}/{name}/expert{first + i}": tensor[i] for i in range(tensor.shape[0])}


def _blob(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _unblob(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _entries(trainer: Any, parallel: Any) -> dict[str, Any]:
    model: nn.Module = trainer.model
    out: dict[str, Any] = {}
    for name, tensor in model.state_dict().items():
        out.update(_split("model", name, tensor, parallel))
    names = {p: n for n, p in model.named_parameters()}
    for param, state in trainer.optimizer.state.items():
        for key, value in state.items():
            out.update(_split(f"optim/{key}", names[param], value, parallel))
    if trainer.best_state is not None:
        for name, tensor in trainer.best_state.items():
            out.update(_split("best", name, tensor, parallel))
    return out


def exists(path: Path) -> bool:
    return (path / ".metadata").is_file() or (Path(f"{path}.old") / ".metadata").is_file()


def save(path: Path, trainer: Any, parallel: Any) -> None:
    """Every rank writes its part of the trainer's state (a collective: all ranks call it)."""
    path = Path(path)
    tmp = Path(f"{path}.tmp")
    main = parallel is None or parallel.main
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier(parallel)
    state = _entries(trainer, parallel)
    state["optim_groups"] = _blob([
        {k: v for k, v in group.items() if k != "params"}
        for group in trainer.optimizer.param_groups
    ])  # fmt: skip
    state["trainer"] = _blob({
        "tag": trainer.checkpointing.tag,
        "progress": trainer.progress.state() if trainer.progress is not None else None,
        "history": trainer.history.state(),
        "step_points": trainer.step_points.state(),
        "best": trainer.best_state is not None,
        "layout": {"world_size": parallel.world_size if parallel else 1,
                   "expert_parallel": parallel.expert_parallel if parallel else 1},
    })  # fmt: skip
    rank = parallel.rank if parallel else 0
    state[f"rng/{rank}"] = _blob(rng_state(trainer.train_loader))
    import torch.distributed.checkpoint as dcp  # here: half a second of imports, for ranks only

    dcp.save(state, checkpoint_id=tmp, no_dist=parallel is None)
    _barrier(parallel)
    if main:
        old = Path(f"{path}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    _barrier(parallel)


def load(path: Path, trainer: Trainer, parallel: Any) -> int:
    """Restore the trainer from a checkpoint written at any layout; returns the epochs
    completed. Raises CheckpointMismatch (restoring nothing) on another run's tag."""
    path = Path(path)
    if not (path / ".metadata").is_file():
        path = Path(f"{path}.old")  # a crash between the renames of a save
    from torch.distributed.checkpoint import FileSystemReader

    written = set(FileSystemReader(path).read_metadata().state_dict_metadata)
    rank = parallel.rank if parallel else 0
    meta = {"trainer": b"", "optim_groups": b""}
    if f"rng/{rank}" in written:
        meta[f"rng/{rank}"] = b""
    _read(path, meta, parallel)
    saved = _unblob(meta["trainer"])
    tag = trainer.checkpointing.tag
    if tag is not None and saved["tag"] != tag:
        raise CheckpointMismatch(f"{path} belongs to {saved['tag']!r}, not {tag!r}")

    model: nn.Module = trainer.model
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    target = {}
    for name, tensor in state.items():
        target.update(_split("model", name, tensor, parallel))
    optim: dict[nn.Parameter, dict[str, torch.Tensor]] = {}
    for name, param in model.named_parameters():
        slots = {"step": torch.zeros((), dtype=torch.float32),
                 "exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}  # fmt: skip
        if all(f"optim/{key}/{name}" in written or f"optim/{key}/{name}/expert0" in written
               for key in slots):  # fmt: skip
            optim[param] = slots
            for key, value in slots.items():
                target.update(_split(f"optim/{key}", name, value, parallel))
    best = {k: v.clone() for k, v in state.items()} if saved["best"] else None
    if best is not None:
        for name, tensor in best.items():
            target.update(_split("best", name, tensor, parallel))
    _read(path, target, parallel)  # in place: each entry is a view of its tensor

    model.load_state_dict(state)
    for param, slots in optim.items():
        trainer.optimizer.state[param] = {k: v.to(param.device) for k, v in slots.items()}
    for group, saved_group in zip(trainer.optimizer.param_groups, _unblob(meta["optim_groups"]),
                                  strict=True):  # fmt: skip
        group.update(saved_group)
    trainer.best_state = best
    trainer.restore(saved)
    if f"rng/{rank}" in meta:
        restore_rng(_unblob(meta[f"rng/{rank}"]), trainer.train_loader)
    return trainer.epoch


def slice_whole(state: dict[str, Any], trainer: Any, parallel: Any) -> dict[str, Any]:
    """A one-process checkpoint (every expert in each tensor) cut to this rank's experts:
    a run checkpointed on one process resumes on several."""
    if parallel is None or parallel.expert_parallel == 1:
        return state

    def cut(name: str, tensor: torch.Tensor) -> torch.Tensor:
        if not _expert_base(name) or tensor.dim() == 0:
            return tensor
        local = tensor.shape[0] // parallel.expert_parallel
        first = _first_expert(parallel, local)
        return tensor[first : first + local].clone()

    sliced = dict(state)
    sliced["model"] = {k: cut(k, v) for k, v in state["model"].items()}
    if state.get("best_state") is not None:
        sliced["best_state"] = {k: cut(k, v) for k, v in state["best_state"].items()}
    names = {p: n for n, p in trainer.model.named_parameters()}
    order = [names[p] for g in trainer.optimizer.param_groups for p in g["params"]]
    optimizer = dict(state["optimizer"])
    optimizer["state"] = {
        index: {k: cut(order[index], v) for k, v in slots.items()}
        for index, slots in state["optimizer"]["state"].items()
    }
    sliced["optimizer"] = optimizer
    return sliced


def _read(path: Path, target: dict[str, Any], parallel: Any) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.load(target, checkpoint_id=path, no_dist=parallel is None,
             planner=dcp.DefaultLoadPlanner(allow_partial_load=True))  # fmt: skip


def _barrier(parallel: Any) -> None:
    if parallel is not None:
        dist.barrier(group=parallel.control)
