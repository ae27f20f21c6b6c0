"""One process or many: the same training code under ``torchrun --nproc_per_node N``.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; without them this is a single
process. CPU processes use gloo and split the machine's cores; GPU processes use NCCL, one GPU each.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class DistContext:
    """Where this process stands among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and reports progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether there are several processes."""
        return self.world_size > 1

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any (e.g. a stop request seen by rank 0)."""
        return self.all_reduce_sum([float(flag)])[0] > 0 if self.enabled else flag

    def barrier(self) -> None:
        """Wait for every process."""
        if self.enabled:
            dist.barrier()

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``module`` when there are several processes."""
        if not self.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        # No collective inside forward (buffers are constants here), so processes may run
        # different numbers of micro-batches in a step.
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def init_distributed(device: str, num_threads: int | None = None) -> DistContext:
    """Join the process group that torchrun describes (if any) and pick this process's device and threads
    (``num_threads``: the settings' override of each process's share of the cores)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and world > 1:
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo")
    if torch_device.type == "cpu":
        configure_cpu_threads(local_world, num_threads)
    return DistContext(rank, world, local_rank, local_world, torch_device)


def configure_cpu_threads(processes_per_machine: int = 1, override: int | None = None) -> None:
    """Give each process an equal share of the cores for intra-op work; ``override`` (the settings'
    ``num_threads``, ``TUNELOOP_NUM_THREADS``) replaces the share."""
    threads = override or max(1, available_cores() // max(1, processes_per_machine))
    torch.set_num_threads(threads)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (if this process joined one)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def maybe_no_sync(module: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce for all but the last micro-batch of a step."""
    if skip_sync and isinstance(module, nn.parallel.DistributedDataParallel):
        with module.no_sync():
            yield
    else:
        yield
