"""One run on several ranks: data parallel for the dense parameters, expert parallel for the
MoE layers' experts, on torch.distributed, for a run launched by torchrun (which sets the
ranks and the rendezvous; nothing here bootstraps processes).

The layout (BaseConfig.gpus ranks, BaseConfig.expert_parallel of them per expert group):
a device mesh of (replicas, expert_parallel). Every rank trains its share of each global
batch (`shard`: the same batches, in the same order, as one process would train, each cut
into equal slices). Each MoE layer's experts are split over the ranks of an expert group
(moe_core.expert_parallel); the groups are replicas of each other.

- **Dense parameters: DDP**, replicated and averaged during backward, in buckets that
  overlap the backward pass. Not FSDP2: the models the service trains fit one device many
  times over (the spec's is 19M parameters), so sharding them would add an all-gather per
  layer per step and save memory nobody is short of; the experts, which are what grows
  with an MoE, are the part that is split.
- **Expert parameters**: left out of DDP, whose one group would average different experts'
  gradients; after backward each is summed over its replicas (`clip_grad_norm_`), and the
  norm that clipping needs is the whole model's, the same on every rank.
- **Losses** read as the whole batch's (their mean over the ranks) while each rank's
  gradient stays its own shard's; DDP's average makes it the batch's.
- **Evaluation**: every rank evaluates the whole split (the same tokens, no sums), so
  evaluation is exact and takes as long as on one rank.
- **Agreement**: a stop (cancel, SIGTERM) seen on any rank stops every rank at the same
  step (`agree`), over a gloo group of its own, so that no rank waits in a collective for
  one that has left.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.nn.parallel import DistributedDataParallel

from .expert_parallel import ExpertDispatch, shard_experts
from .model import MoELayer

T = TypeVar("T")


def launched() -> bool:
    """Whether this process is one rank of a torchrun launch (its environment says so)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def local_device(kind: str | None = None) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK where there are GPUs, else the CPU."""
    if kind in (None, "auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@dataclass
class Parallel:
    """This rank's place in the run and the groups it talks to."""

    rank: int
    world_size: int
    expert_parallel: int
    device: torch.device
    mesh: DeviceMesh
    control: dist.ProcessGroup  # gloo: host-side agreement, whatever the device backend
    forward: nn.Module | None = None  # the model wrapped for training (parallelize)

    @classmethod
    def start(cls, *, gpus: int, expert_parallel: int, device: torch.device) -> Parallel:
        """Join the process group torchrun set up (env://) and build the mesh. Raises
        when the launch's world size is not the run's `gpus`."""
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        world = dist.get_world_size()
        if world != gpus:
            raise ValueError(f"the run asks for {gpus} ranks (base.gpus); torchrun started {world}")
        mesh = init_device_mesh(device.type, (world // expert_parallel, expert_parallel),
                                mesh_dim_names=("replica", "expert"))  # fmt: skip
        control = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
        return cls(dist.get_rank(), world, expert_parallel, device, mesh, control)  # type: ignore[arg-type]  # WORLD is set once initialised

    def stop(self) -> None:
        # What still holds the process group (a stopped Trainer's DDP, kept alive by the
        # stop's traceback) goes first: torn down after it, at exit, a rank aborts.
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------ layout

    @property
    def main(self) -> bool:
        """Rank 0: the one that reports (the store, the console, the files)."""
        return self.rank == 0

    @property
    def expert_rank(self) -> int:
        return self.mesh.get_local_rank("expert")

    @property
    def expert_group(self) -> dist.ProcessGroup:
        return self.mesh.get_group("expert")

    @property
    def replica_group(self) -> dist.ProcessGroup:
        """The ranks that hold the same experts (one per expert group)."""
        return self.mesh.get_group("replica")

    def is_expert_param(self, name: str) -> bool:
        return self.expert_parallel > 1 and ".experts." in f".{name}"

    # ------------------------------------------------------------------ model and data

    def parallelize(self, model: nn.Module) -> nn.Module:
        """Split every MoE layer's experts over the expert groups and hand each layer its
        dispatch; returns the model to run forward through (DDP over the dense parameters).
        `model` keeps its own modules: its state_dict has no `module.` prefix."""
        for layer in (m for m in model.modules() if isinstance(m, MoELayer)):
            if self.expert_parallel > 1:
                shard_experts(layer.experts, self.expert_rank, self.expert_parallel)
            layer.parallel = ExpertDispatch(
                num_experts=layer.num_experts, world=dist.group.WORLD,  # type: ignore[arg-type]  # set once initialised
                world_size=self.world_size,
                ep_group=self.expert_group if self.expert_parallel > 1 else None,
                ep_size=self.expert_parallel,
            )  # fmt: skip
        experts = [name for name, _ in model.named_parameters() if self.is_expert_param(name)]
        # A private hook, but DDP's one way to leave parameters to another scheme.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, experts)
        self.forward = DistributedDataParallel(
            model,
            device_ids=[self.device] if self.device.type == "cuda" else None,
            forward_sync_buffers=False,  # the buffers move identically on every rank
        )
        return self.forward

    def shard(self, loader: Iterable[Any]) -> ShardedBatches:
        return ShardedBatches(loader, self.rank, self.world_size)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Values averaged over the ranks (no gradient; traceable, for a compiled step)."""
        return funcol.all_reduce(values.detach(), "sum", dist.group.WORLD) / self.world_size  # type: ignore[arg-type, no-any-return]  # WORLD is set once initialised; funcol's result is untyped

    def agree(self, flag: bool) -> bool:
        """Whether any rank says yes: every rank gets the same answer at the same step."""
        vote = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self.control)
        return bool(vote.item())

    def agreed(self, should_stop: Callable[[], bool] | None) -> Callable[[], bool]:
        return lambda: self.agree(bool(should_stop and should_stop()))

    def main_first(self, make: Callable[[], T]) -> T:
        """`make()` on rank 0, then on the others (a tokenizer or dataset cache written once,
        then read)."""
        if self.main:
            value = make()
        dist.barrier(group=self.control)
        if not self.main:
            value = make()
        return value

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's state (every expert, gathered from its group): what one
        process would have trained. A collective: every rank calls it."""
        whole = {}
        for name, tensor in model.state_dict().items():
            if self.is_expert_param(name):
                parts = [torch.empty_like(tensor) for _ in range(self.expert_parallel)]
                dist.all_gather(parts, tensor.contiguous(), group=self.expert_group)
                tensor = torch.cat(parts)
            whole[name] = tensor
        return whole

    # ------------------------------------------------------------------ gradients

    @torch.no_grad()
    def clip_grad_norm_(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Sum each expert's gradient over its replicas (DDP averaged the rest), then clip
        every gradient by the whole model's norm, the same on every rank; returns it."""
        dense_sq = torch.zeros((), device=self.device)
        expert_sq = torch.zeros((), device=self.device)
        experts = []
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            if self.is_expert_param(name):
                experts.append(p.grad)
            else:
                dense_sq += p.grad.float().square().sum()
        if experts:
            flat = torch.cat([g.reshape(-1) for g in experts])
            dist.all_reduce(flat, group=self.replica_group)
            flat /= self.world_size  # the batch's mean gradient: each rank's loss is its shard's
            at = 0
            for g in experts:
                g.copy_(flat[at : at + g.numel()].view_as(g))
                at += g.numel()
                expert_sq += g.float().square().sum()
            dist.all_reduce(expert_sq, group=self.expert_group)  # the other experts' share
        total = (dense_sq + expert_sq).sqrt()
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # torch's clip_grad_norm_ rule
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(coef.to(p.grad.dtype))
        return total


class ShardedBatches:
    """This rank's slice of every batch of `loader`: the same batches in the same order on
    every rank (one generator, one seed), each cut into `world_size` equal slices."""

    def __init__(self, loader: Any, rank: int, world_size: int) -> None:
        self.loader, self.rank, self.world_size = loader, rank, world_size

    @property
    def generator(self) -> torch.Generator | None:
        return getattr(self.loader, "generator", None)

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size // self.world_size  # type: ignore[no-any-return]  # the wrapped loader is untyped (Any)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            share = x.size(0) // self.world_size
            if share * self.world_size != x.size(0):
                raise ValueError(
                    f"a batch of {x.size(0)} does not split over {self.world_size} ranks"
                )
            cut = slice(self.rank * share, (self.rank + 1) * share)
            yield x[cut], y[cut]
