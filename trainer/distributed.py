"""Devices and ``torch.distributed``: process-group setup under torchrun, DDP wrapping, reductions."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger("tracklink")

__all__ = [
    "all_gather_objects",
    "any_process",
    "barrier",
    "gradient_sync",
    "is_distributed",
    "launched_by_torchrun",
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

    Returns whether training is distributed. The backend is ``args.ddp_backend`` or NCCL on CUDA (NCCL
    for CUDA tensors and gloo for CPU tensors with ``fsdp`` ``offload``) and gloo otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    # FSDP needs a process group even for a single process launched by torchrun
    wanted = world_size > 1 or (bool(getattr(args, "fsdp", None)) and launched_by_torchrun())
    if not wanted or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = args.ddp_backend or ("nccl" if device.type == "cuda" else "gloo")
        if backend == "nccl" and "offload" in (getattr(args, "fsdp", None) or []):
            # offloaded FSDP gradients live on the CPU: their norm and inf checks are reduced over gloo
            backend = "cuda:nccl,cpu:gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        logger.info("tracklink: process group initialised (%s, world size %d)", backend, world_size)
        # the group tracklink created is torn down before the interpreter is: left to the interpreter's
        # own shutdown, a backend's threads can abort the process after training has finished
        atexit.register(_destroy_process_group)
    return dist.get_world_size() > 1


def _destroy_process_group() -> None:
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as exc:  # at exit: never turn a finished run into a failure
            logger.debug("tracklink: destroying the process group at exit failed: %r", exc)


def launched_by_torchrun() -> bool:
    """Whether the rendezvous variables of torchrun (or an equivalent launcher) are set."""
    return all(os.environ.get(name) for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def wrap_model(model: torch.nn.Module, args: Any, device: torch.device) -> torch.nn.Module:
    """Shard the model with FSDP2 when ``args.fsdp`` is set (in place, once), else wrap it in
    ``DistributedDataParallel`` when training is distributed."""
    from .fsdp import FsdpPlan, is_sharded, shard_model

    plan = FsdpPlan.from_args(args)
    if plan is not None:
        return model if is_sharded(model) else shard_model(model, plan, device)
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=bool(args.ddp_find_unused_parameters),
    )


def gradient_sync(model: torch.nn.Module, sync: bool) -> Any:
    """A context for one micro-batch's backward: without ``sync``, gradients accumulate locally (DDP's
    ``no_sync``; FSDP2's ``set_requires_gradient_sync``) and are reduced with the last micro-batch."""
    set_sync = getattr(model, "set_requires_gradient_sync", None)
    if callable(set_sync):
        set_sync(sync)
        return contextlib.nullcontext()
    if not sync and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


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


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on at least one process (a collective; ``flag`` outside distributed runs)."""
    if not is_distributed():
        return flag
    value = torch.tensor(1 if flag else 0, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` in rank order (``[obj]`` outside distributed runs)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
