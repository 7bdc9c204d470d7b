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


def leave() -> None:
    """Leave the process group without waiting for the other ranks (a rank whose share of
    the work is done while rank 0 still has rank-0-only work)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_batches(n: int, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """Indices of the rows of ``n`` that ``rank`` handles: the batches ``j`` (rows
    ``[j * batch_size, (j + 1) * batch_size)``) with ``j % world == rank``, in order.  Every
    batch is the one a single process would form, so per-row results are the same bits."""
    starts = range(rank * batch_size, n, world * batch_size)
    if not starts:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(s, min(s + batch_size, n)) for s in starts])


def gather_rows(index: torch.Tensor, values: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Each rank's ``values[k]`` hold rows ``index`` of ``n``; every rank gets the ``n`` rows
    of each ``k`` put back in place (CPU tensors).  Alone: ``values`` as given."""
    parts = gather_objects((index.cpu(), {k: v.cpu() for k, v in values.items()}))
    if len(parts) == 1:
        return values
    out = {k: torch.zeros(n, dtype=v.dtype) for k, v in values.items()}
    seen = torch.zeros(n, dtype=torch.long)
    for idx, vals in parts:
        seen.index_add_(0, idx, torch.ones_like(idx))
        for k, v in vals.items():
            out[k][idx] = v
    if not bool((seen == 1).all()):
        raise RuntimeError("the ranks' shares of the rows do not cover every row exactly once")
    return out
