"""torch.distributed for the training loops: joining a ``torchrun`` job, sums across
ranks, and gathering Python objects.  Every helper is a no-op in a single process."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> bool:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1): NCCL on CUDA,
    gloo on the CPU.  True when this call initialised it (the caller then destroys it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return True
    return False


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum of a CPU tensor over the ranks, returned on the CPU (``x`` itself when alone)."""
    if rank_and_world()[1] == 1:
        return x
    y = x.to(device)
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.cpu()


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when alone)."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def shutdown() -> None:
    """Wait for every rank, then leave the process group."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
