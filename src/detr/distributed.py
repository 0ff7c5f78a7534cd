"""Distributed training under ``torchrun`` (DDP): process-group setup, a resumable, shardable sampler,
and the cross-process averages that loss normalisers need."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1): gloo on CPU, nccl on GPU,
    each process on the GPU of its ``LOCAL_RANK`` (set before the group forms, as NCCL needs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def destroy_process_group_cleanly(wait_for_peers: bool = True) -> None:
    """Leave the process group, by default once every process is done with it: a process that tears
    its group down while a peer's last collective is still in flight can abort the peer (seen once
    with gloo under heavy CPU load: "terminate called without an active exception")."""
    if wait_for_peers:
        try:
            dist.barrier()
        except RuntimeError:  # a peer already failed: nothing left to wait for
            pass
    dist.destroy_process_group()


def gather_to_main(info: DistInfo, obj: Any) -> list[Any] | None:
    """Every process's ``obj`` (picklable), in rank order, on the main process; None on the others."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size if info.is_main else []
    dist.gather_object(obj, gathered if info.is_main else None, dst=0)
    return gathered if info.is_main else None


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_count_across_processes(count: torch.Tensor) -> float:
    """``count`` (a float scalar tensor) averaged over processes (all-reduced under DDP), at least 1:
    the normaliser of a loss summed over boxes, the same on every process."""
    world = 1
    if dist.is_available() and dist.is_initialized():
        count = count.clone()
        dist.all_reduce(count)
        world = dist.get_world_size()
    return max(count.item() / world, 1.0)


class ResumableSampler(Sampler[int]):
    """A seeded per-epoch shuffle, split across processes, that can start part-way through an epoch.

    Every process draws the same permutation (seed + epoch), pads it to a multiple of the
    world size and takes every ``world_size``-th index from its rank; ``start`` skips the
    first indices of this process's share, so that a resumed run sees exactly the samples
    the interrupted run had not yet seen.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + 7919 * self.epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        total = -(-self.size // self.world_size) * self.world_size
        order += order[: total - len(order)]  # pad so every process gets as many samples
        return order[self.rank :: self.world_size][self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return len(self.indices())
