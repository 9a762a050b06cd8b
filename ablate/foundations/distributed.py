"""torchrun support: the process group, this process's rank, data shards and reductions across ranks.

`torchrun --nproc_per_node=N -m ablate run ...` sets WORLD_SIZE, RANK, LOCAL_RANK (and LOCAL_WORLD_SIZE) for
every process it starts. Without them there is one process, no process group, and every helper here is the
identity, so the Trainer runs the same code with and without DistributedDataParallel.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UsageError

ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class Context:
    rank: int = 0         # global rank: 0 writes the record, the checkpoints and the progress
    world: int = 1        # processes in the job
    local_rank: int = 0   # rank on this node: the GPU it uses
    local_world: int = 1  # processes on this node: they share its CPU cores

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def context() -> Context:
    """Where this process stands in a torchrun job, from the environment torchrun sets."""
    try:
        values = {name: int(os.environ[name]) for name in ENV if name in os.environ}
    except ValueError:
        raise UsageError(f"torchrun variables must be whole numbers: "
                         f"{', '.join(f'{n}={os.environ.get(n)!r}' for n in ENV)}") from None
    world = values.get("WORLD_SIZE", 1)
    ctx = Context(rank=values.get("RANK", 0), world=world, local_rank=values.get("LOCAL_RANK", 0),
                  local_world=values.get("LOCAL_WORLD_SIZE", world))
    if not (0 <= ctx.rank < ctx.world and 0 <= ctx.local_rank < ctx.local_world <= ctx.world):
        raise UsageError(f"inconsistent torchrun variables: {ctx}; launch with torchrun, which sets them")
    return ctx


def device_for(device: torch.device, ctx: Context) -> torch.device:
    """The device this rank uses: cuda:LOCAL_RANK on GPUs (made current, as NCCL needs), else `device`."""
    if device.type != "cuda":
        return device
    if ctx.local_rank >= torch.cuda.device_count():
        raise UsageError(f"LOCAL_RANK {ctx.local_rank} but this node has {torch.cuda.device_count()} CUDA devices; "
                         f"--nproc_per_node must not exceed the GPUs per node")
    device = torch.device("cuda", ctx.local_rank)
    torch.cuda.set_device(device)
    return device


def setup(device: torch.device) -> Context:
    """Joins the torchrun job's process group (NCCL on GPUs, gloo on CPUs); nothing for a single process."""
    ctx = context()
    if ctx.active and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return ctx


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(batch_size: int, world: int) -> int:
    """--batch-size is the global batch; each rank takes an equal share of it."""
    if batch_size % world:
        raise UsageError(f"--batch-size {batch_size} is the global batch and must divide evenly over the "
                         f"{world} processes; use a multiple of {world}, e.g. {batch_size // world * world or world}")
    return batch_size // world


def shard(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's share of `order` (an evaluation's): every world-th item from position `rank`, so every item is
    kept exactly once over the ranks, which may differ by one. Training batches are sharded by TrainOrder."""
    return order[rank::world]


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over all ranks (a new tensor; `t` itself when there is one process)."""
    if not dist.is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t.div_(dist.get_world_size())


def total(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over all ranks (a new tensor; `t` itself when there is one process)."""
    if not dist.is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def maximum(value: float, device: torch.device) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def broadcast(obj):
    """Rank 0's `obj` on every rank (any picklable object; CPU tensors only, or they land on rank 0's GPU)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] for one process."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
