"""The epoch in progress: its running sums (losses, routing), its timings and where its
shuffle came from; a checkpoint written mid-epoch carries it."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .routing_stats import TrainingRouting


class Loader(Protocol):
    """What the Trainer trains from: batches, and how many there are per epoch (a
    DataLoader, data.Batches, parallel.ShardedBatches)."""

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


@dataclass
class EpochProgress:
    """The epoch in progress: its running sums, counts and timings, and where its shuffle
    came from. `train_epoch` accumulates into it; a checkpoint written mid-epoch carries
    it, so a resumed run finishes the epoch exactly as an uninterrupted one would."""

    totals: torch.Tensor  # loss, ce, aux summed over steps (no per-step device sync)
    routing: TrainingRouting
    # The state, at the epoch's start, of the generator the train loader draws from (see
    # loader_generator): the epoch's base seed and shuffle are drawn from it when
    # its iterator is made and first read, so a resume remakes the same order and skips ahead.
    loader_state: torch.Tensor
    steps: int = 0
    tokens: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: {"forward": 0.0, "backward": 0.0, "optimizer": 0.0, "wall": 0.0}
    )
    # Set once every step is done: a stop during evaluation resumes with evaluation.
    train_stats: dict[str, float] | None = None

    def remaining_batches(self, loader: Iterable[Any]) -> Iterator[Any]:
        """The epoch's batches from where a restored epoch stands: the iterator remade from
        the epoch's start state, so the same shuffle, and the batches already trained
        skipped (cheap: a gather each). This holds at step 0 too: the loader's generator has
        moved on since the epoch began."""
        stop_point = torch.get_rng_state()  # restored by the checkpoint: dropout goes on from it
        loader_generator(loader).set_state(self.loader_state)
        batches = iter(loader)
        for _ in itertools.islice(batches, self.steps):
            pass
        torch.set_rng_state(stop_point)  # a no-op unless the loader drew from the global RNG
        return batches

    def state(self) -> dict[str, Any]:
        return {"totals": self.totals.cpu(), **self.routing.state(),
                "loader_state": self.loader_state, "steps": self.steps, "tokens": self.tokens,
                "seconds": dict(self.seconds), "train_stats": self.train_stats}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EpochProgress:
        return cls(totals=state["totals"].to(device),
                   routing=TrainingRouting.from_state(state, device),
                   loader_state=state["loader_state"], steps=state["steps"],
                   tokens=state["tokens"], seconds=dict(state["seconds"]),
                   train_stats=state["train_stats"])  # fmt: skip


def loader_generator(loader: Iterable[Any]) -> torch.Generator:
    """The generator a new iterator of `loader` draws from: a DataLoader (and data.Batches)
    draws its base seed and (shuffling) its order from its own generator, else from torch's
    global one."""
    generator = getattr(loader, "generator", None)
    return generator if generator is not None else torch.default_generator
