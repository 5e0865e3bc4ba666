"""Checkpoints of seeds trained together (moe_core.together), each an ordinary single run's:
the keys of Trainer.state_dict(), the replica's GPT weights, and a GPT AdamW's state_dict
for that replica alone (its row of every stacked moment, its step, the parameters laid
out, by name, as build_optimizer lays out a GPT's). A seed's checkpoint is resumed by a run
of its own (run_single_experiment), and a run's or a stack's, written at an epoch's end,
by a stack.

Epoch boundaries only: the stack writes each replica's checkpoint at every epoch's end,
after that epoch's hooks (as the Trainer does), so a replica cancelled mid-epoch keeps its
last epoch's checkpoint and a resume replays the epoch. A run's checkpoint written within
an epoch (at a stop) cannot join a stack (ValueError): its run resumes it alone.

Random state: each replica's loader generator (its shuffle) is its own and resumed
exactly. Torch's global RNG (dropout, router jitter) is one for the whole stack: a resume
restores the first training replica's, so a stack resumed from its own checkpoints draws
what it would have drawn; a run resumed from a stack's checkpoint, or a stack from runs',
draws other numbers (which at dropout 0 without jitter changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .atomic import torch_save_atomic
from .checkpoint import Checkpointing, read_checkpoint, restore_rng, rng_state
from .config import BaseConfig, ExperimentConfig
from .epoch import loader_generator
from .model import GPT
from .records import MetricsHistory
from .replica import Replica
from .runner import build_optimizer
from .stacked import StackedGPT

Layout = list[list[str]]  # a GPT AdamW's groups, each its parameters' names in order
State = dict[str, Any]


def optimizer_layout(gpt: GPT, config: ExperimentConfig, base: BaseConfig) -> Layout:
    """The names of build_optimizer(gpt)'s parameters, group by group: the order of a
    single run's optimizer state."""
    names = {id(p): n for n, p in gpt.named_parameters()}
    optimizer = build_optimizer(gpt, config, base)  # no state yet: only its order is read
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def replica_optimizer_state(optimizer: torch.optim.Optimizer, model: StackedGPT, row: int,
                            layout: Layout) -> State:  # fmt: skip
    """A GPT AdamW's state_dict for replica `row` of the stack alone: its row of each moment,
    its step, and the hyper-parameters of the stacked group its parameters are in (the
    stacked group j holds the stacked parameters of the GPT's group j, checked by name)."""
    params = dict(model.named_parameters(remove_duplicate=False))  # a tied one by each name
    state: dict[int, State] = {}
    groups: list[State] = []
    for j, (names, group) in enumerate(zip(layout, optimizer.param_groups, strict=True)):
        stacked = [params[name] for name in names]
        if {id(p) for p in stacked} != {id(p) for p in group["params"]}:
            raise ValueError(f"the stack's optimizer group {j} holds other parameters than a GPT's")
        first = sum(len(g["params"]) for g in groups)
        for index, p in enumerate(stacked, start=first):
            if p in optimizer.state:  # a parameter not stepped yet has none
                state[index] = {key: _row(value, row) for key, value in optimizer.state[p].items()}
        hyper = {key: value for key, value in group.items() if key != "params"}
        groups.append({**hyper, "params": list(range(first, first + len(stacked)))})
    return {"state": state, "param_groups": groups}


def load_optimizer_rows(optimizer: torch.optim.Optimizer, model: StackedGPT,
                        rows: list[State], layout: Layout) -> None:  # fmt: skip
    """The stacked AdamW from each row's GPT AdamW state_dict, before its first step. The
    rows' steps must agree: the stack steps every replica at once."""
    params = dict(model.named_parameters(remove_duplicate=False))
    order = [p for group in optimizer.param_groups for p in group["params"]]
    index = {id(p): i for i, p in enumerate(order)}  # the ids of optimizer.state_dict()
    named = [_by_name(state, layout) for state in rows]
    stacked: dict[int, State] = {}
    for name in (name for names in layout for name in names):
        found = [states[name] for states in named]
        present = [s for s in found if s is not None]
        if not present:
            continue  # not stepped yet
        if len(present) < len(found):
            raise ValueError(f"the resumed optimizers differ: {name} has no state in some")
        first, entry = present[0], {}
        for key, value in first.items():
            if torch.is_tensor(value) and value.dim() > 0:  # a moment: one row per replica
                entry[key] = torch.stack([s[key] for s in present])
            elif all(_same(s[key], value) for s in present):
                entry[key] = value
            else:
                raise ValueError(f"the resumed optimizers differ in {name}'s {key}: "
                                 f"{[s[key] for s in present]}")  # fmt: skip
        stacked[index[id(params[name])]] = entry
    optimizer.load_state_dict({"state": stacked,  # torch moves each to its parameter's device
                               "param_groups": optimizer.state_dict()["param_groups"]})  # fmt: skip


@dataclass
class StackCheckpoints:
    """Each replica's Checkpointing (by its index in base_configs; None: it has none) and how
    a GPT's optimizer is laid out."""

    checkpointing: list[Checkpointing | None]
    layout: Layout

    def save(self, model: StackedGPT, optimizer: torch.optim.Optimizer | None, row: int,
             r: Replica) -> None:  # fmt: skip
        """Replica `r`, at row `row` of the stack, at its epoch's end: Trainer.state_dict()'s
        keys, written atomically (after checking the disk has room)."""
        c = self.checkpointing[r.index]
        if c is None or c.path is None:
            return
        assert optimizer is not None, "checkpointing without an optimizer"
        torch_save_atomic(c.path, {
            "tag": c.tag,
            "model": model.replica_state(row),
            "optimizer": replica_optimizer_state(optimizer, model, row, self.layout),
            "best_state": r.best_state,
            "progress": None,  # an epoch's end
            "history": r.history.state(),
            "step_points": r.points.state(),
            "rng": rng_state(r.loader),
        })  # fmt: skip

    def resume(self, model: StackedGPT, optimizer: torch.optim.Optimizer,
               replicas: list[Replica], num_epochs: int) -> list[Replica]:  # fmt: skip
        """Before training (`replicas` are the stack's rows, in order): each replica whose
        checkpoint exists from it, read with its tag (CheckpointMismatch on another), and
        the replicas left to train, the stack's rows now. One whose history is done (stopped
        early, or `num_epochs` reached) is done at once, with its best weights, and leaves
        the stack; the others must resume from one epoch's end (without a checkpoint: epoch
        0), else ValueError naming the epochs."""
        states: dict[int, State] = {}
        for r in replicas:
            c = self.checkpointing[r.index]
            source = c.source if c is not None else None
            if c is None or source is None or not source.exists():
                continue
            if source.is_dir():
                raise ValueError(f"{source} is a checkpoint of several ranks: a stack trains "
                                 "on one device and resumes one file")  # fmt: skip
            state = read_checkpoint(source, c.tag)
            if state["progress"] is not None:
                raise ValueError(f"{source} was written within epoch "
                                 f"{state['history']['epoch'] + 1}: a stack resumes from an "
                                 "epoch's end, its run alone resumes it")  # fmt: skip
            states[r.index] = state
        if not states:
            return replicas
        done = {i for i, s in states.items()
                if s["history"]["stopped_early"] or s["history"]["epoch"] >= num_epochs}  # fmt: skip
        training = [r for r in replicas if r.index not in done]
        epochs = [states[r.index]["history"]["epoch"] if r.index in states else 0
                  for r in training]  # fmt: skip
        if len(set(epochs)) > 1:
            where = ", ".join(f"#{r.index} (seed {r.base.seed}) after epoch {e}"
                              for r, e in zip(training, epochs, strict=True))  # fmt: skip
            raise ValueError(f"seeds trained together resume from one epoch's end: {where}")
        for row, r in enumerate(replicas):
            state = states.get(r.index)
            if state is None:
                continue
            model.load_replica(row, state["model"])
            r.best_state = state["best_state"]
            r.history = MetricsHistory.from_state(state["history"])
            r.points.load_state(state["step_points"])
            if state["rng"]["loader"] is not None:
                loader_generator(r.loader).set_state(state["rng"]["loader"])
            if r.index in done:  # as Trainer.train's: no epoch to go, the best weights kept
                r.kept = r.best_state if r.best_state is not None else state["model"]
            if r.reporter is not None:
                r.reporter.say(f"resumed after epoch {r.history.epoch}"
                               + (" (done)" if r.index in done else ""))  # fmt: skip
        if done:  # before the optimizer has state: nothing of theirs to drop
            model.keep([row for row, r in enumerate(replicas) if r.index not in done], optimizer)
        if training and epochs[0] > 0:
            restore_rng(states[training[0].index]["rng"], training[0].loader)  # the stack's one
            rows = [states[r.index]["optimizer"] for r in training]
            load_optimizer_rows(optimizer, model, rows, self.layout)
        return training


def _by_name(state: State, layout: Layout) -> dict[str, State | None]:
    """A GPT AdamW state_dict's per-parameter states by parameter name."""
    groups = state["param_groups"]
    if [len(g["params"]) for g in groups] != [len(names) for names in layout]:
        raise ValueError("a checkpoint's optimizer is laid out otherwise than this model's")
    return {name: state["state"].get(i)
            for g, names in zip(groups, layout, strict=True)
            for i, name in zip(g["params"], names, strict=True)}  # fmt: skip


def _row(value: Any, row: int) -> Any:
    """Replica `row`'s part of a stacked optimizer state's value (a step is everyone's)."""
    if torch.is_tensor(value):
        return value[row].clone() if value.dim() > 0 else value.clone()
    return value


def _same(a: Any, b: Any) -> bool:
    return bool(torch.equal(a, b)) if torch.is_tensor(a) and torch.is_tensor(b) else a == b


def stack_resume_epoch(checkpointing: Checkpointing | None) -> int | None:
    """The epoch's end a stack would resume this seed from (0: it has no checkpoint), or None
    when its checkpoint cannot join a stack: written within an epoch (at a stop), on several
    ranks, for another run (its tag), or unreadable; its run alone resumes (or replaces) it.
    Reads the checkpoint memory-mapped: its weights are not loaded."""
    source = checkpointing.source if checkpointing is not None else None
    if checkpointing is None or source is None or not source.exists():
        return 0
    if source.is_dir():
        return None
    try:
        state = torch.load(source, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001  # not a checkpoint this process can read: not a stack's
        return None
    if checkpointing.tag is not None and state.get("tag") != checkpointing.tag:
        return None
    if state.get("progress") is not None:
        return None
    return int(state["history"]["epoch"])
