"""Many processes through Lightning Fabric: the engine, and the few collective steps headstart needs.

Fabric owns launching (`fabric.launch()` starts the other local ranks by re-running the same command, or
joins the processes that torchrun / `fabric run` started), the process group (gloo on CPU, nccl on CUDA),
DDP wrapping and gradient sync. This module only decides how work is split between ranks, and puts the pieces
back together in the original order, so that every rank sees the same logits and metrics as one process would.

Work is split by striding: rank r of W takes items r, r + W, r + 2W, ... Unlike DistributedSampler it never
pads, so no item is computed twice and none is missed; the gather puts item i back at position i.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["any_rank", "gather_objects", "gather_rows", "make_fabric", "reduce_sum", "shard_indices"]

log = logging.getLogger(__name__)


def make_fabric(*, accelerator: str, precision: str, devices: int, num_nodes: int, strategy: str):
    """Fabric for this run. Imported here, lazily: a run's start-up must not pay for it before it trains."""
    from lightning_fabric import Fabric

    if devices * num_nodes == 1:
        strategy = "auto"  # one process: no process group, no DDP wrapper, nothing to sync
    elif strategy == "auto":
        strategy = "ddp"  # the subprocess launcher: re-runs this command per local rank (Lightning's default)
    return Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                  precision=precision)


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """The positions of `n` items that rank `rank` of `world` handles: each position exactly once overall."""
    return list(range(rank, n, world))


def gather_rows(fabric, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's strided share (shard_indices) of an [n, ...] table, reassembled in the original order."""
    world = fabric.world_size
    if world == 1:
        return rows
    import torch.distributed as dist

    # A rank with no rows (a split smaller than the world) cannot know the row shape: take another rank's.
    shapes = gather_objects(fabric, tuple(rows.shape[1:]) if len(rows) else None)
    shape = next((s for s in shapes if s is not None), tuple(rows.shape[1:]))
    width = -(-n // world)  # all_gather needs one shape on every rank: pad each share to the longest
    padded = torch.zeros((width, *shape), dtype=rows.dtype, device=fabric.device)
    if len(rows):
        padded[: len(rows)] = rows.to(fabric.device)
    # torch's collective on Fabric's process group (Fabric's own all_gather is the deprecated autograd one)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    gathered = torch.stack(parts).cpu()  # [world, width, ...]
    return gathered.transpose(0, 1).reshape(width * world, *shape)[:n]


def gather_objects(fabric, value) -> list:
    """One picklable value from each rank, in rank order (small things only: ids, counts)."""
    if fabric.world_size == 1:
        return [value]
    import torch.distributed as dist

    out: list = [None] * fabric.world_size
    dist.all_gather_object(out, value)
    return out


def reduce_sum(fabric, *values: float) -> list[float]:
    """Sums over ranks of a few numbers (loss sums, correct counts, images seen)."""
    if fabric.world_size == 1:
        return list(values)
    total = fabric.all_reduce(torch.tensor(values, dtype=torch.float64, device=fabric.device), reduce_op="sum")
    return total.cpu().tolist()


def any_rank(fabric, flag: bool) -> bool:
    """True on every rank when it is true on any: ranks must agree to stop, or the others wait forever."""
    if fabric.world_size == 1:
        return flag
    return reduce_sum(fabric, float(flag))[0] > 0
