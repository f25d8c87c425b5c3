"""Distributed training through torchrun (RANK/WORLD_SIZE/LOCAL_RANK): DDP with NCCL on GPU, gloo on
CPU; a plain ``python tools/train.py`` runs as a world of one."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init_distributed(device_type: str) -> bool:
    """Join the process group torchrun describes (even a world of one: ``--nproc_per_node=1`` runs
    DDP over NCCL like a larger job); return whether a process group is in use. A plain ``python
    tools/train.py`` joins none."""
    # torchrun and other launchers set these
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if not dist.is_available() or dist.is_initialized() or not launched:
        return dist.is_available() and dist.is_initialized()
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(
        backend="nccl" if device_type == "cuda" else "gloo", timeout=timedelta(minutes=30)
    )
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return get_rank() == 0


def reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average a dict of 0-d tensors over ranks (for logging; one all_reduce call)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    dist.all_reduce(stacked)
    stacked /= get_world_size()
    return dict(zip(keys, stacked))


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank: one tiny all_reduce (and its host read). A collective:
    every rank must call it at the same point of the loop."""
    if not is_distributed():
        return bool(flag)
    device = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    )
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj):
    """``obj`` of this process, or the list of every rank's ``obj`` under DDP (each rank resumes its
    own)."""
    if not is_distributed():
        return obj
    objects = [None] * get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
