"""torchrun / torch.distributed in one place: join the process group, who am I, wait for all.

Launched by ``torchrun --nproc_per_node=N`` (WORLD_SIZE > 1) a pipeline calls
:func:`init_distributed` first; NCCL on GPUs, gloo on the CPU. A plain process is rank 0 of 1
and every helper here is a no-op for it.
"""

from __future__ import annotations

import os

import torch


def init_distributed(device: torch.device) -> bool:
    """Join torchrun's process group when WORLD_SIZE > 1; True if this call joined it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def dist_info() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def default_workers() -> int:
    """Decoding processes per rank: this node's usable CPUs shared among its ranks, 1 to 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
