"""Devices and ``torch.distributed``: process-group setup under torchrun, DDP wrapping, reductions."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger("tracklink")

__all__ = [
    "all_gather_objects",
    "barrier",
    "is_distributed",
    "mean_across_processes",
    "pick_device",
    "setup_distributed",
    "sum_across_processes",
    "unwrap_model",
    "wrap_model",
]


def pick_device(args: Any) -> torch.device:
    """CUDA (this process's local rank) when available, else MPS, else CPU; ``use_cpu`` forces CPU."""
    if getattr(args, "use_cpu", False):
        return torch.device("cpu")
    if torch.cuda.is_available():
        if "LOCAL_RANK" not in os.environ:
            return torch.device("cuda", torch.cuda.current_device())
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup_distributed(args: Any, device: torch.device) -> bool:
    """Initialise the default process group when launched by torchrun with more than one process.

    Returns whether training is distributed. The backend is ``args.ddp_backend`` or NCCL on CUDA and
    gloo otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = args.ddp_backend or ("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        logger.info("tracklink: process group initialised (%s, world size %d)", backend, world_size)
    return dist.get_world_size() > 1


def wrap_model(model: torch.nn.Module, args: Any, device: torch.device) -> torch.nn.Module:
    """Wrap the model in ``DistributedDataParallel`` when training is distributed."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=bool(args.ddp_find_unused_parameters),
    )


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def sum_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over processes (the tensor itself outside distributed runs)."""
    if not is_distributed():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def mean_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return tensor
    return sum_across_processes(tensor) / dist.get_world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` in rank order (``[obj]`` outside distributed runs)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
