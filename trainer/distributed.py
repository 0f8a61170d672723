"""Devices and ``torch.distributed``: process-group setup under torchrun, DDP wrapping, reductions."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import types
import warnings
import weakref
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from tracklink.shutdown import on_exit

from .fsdp import FsdpPlan, is_sharded, shard_model

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
        _import_group_defaults()
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        logger.info("tracklink: process group initialised (%s, world size %d)", backend, world_size)
        # the group tracklink created is torn down before the interpreter is: left to the interpreter's
        # own shutdown, a backend's threads can abort the process after the work has finished
        on_exit("process-group", _destroy_process_groups)
        _created_groups.append(weakref.ref(dist.group.WORLD))
    return dist.get_world_size() > 1


# The default groups tracklink created, and the DDP wrappers it made (weak references: tracklink never keeps
# either alive itself).
_created_groups: list[weakref.ref[Any]] = []
_ddp_wrappers: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def _import_group_defaults() -> None:
    """Import, before the group exists, the torch modules whose functions take ``group=group.WORLD`` as a
    default argument (bound when the module is imported).

    Imported later (``torch.distributed.fsdp``, which tracklink's FSDP checks import on the first
    evaluation, imports ``torch.distributed.nn``), ten such defaults hold the live group, so
    ``destroy_process_group()`` no longer frees it: gloo's worker threads then outlive ``atexit`` and one
    still releasing the tensors of the last collective, which needs the GIL, aborts the process once the
    interpreter is finalising ("terminate called without an active exception"). Imported first, the
    defaults are ``None``, which means the default group.
    """
    try:
        import torch.distributed.nn  # noqa: F401
    except Exception as exc:  # pragma: no cover - a build without it; the at-exit clean-up still applies
        logger.debug("tracklink: importing torch.distributed.nn failed: %r", exc)


def _destroy_process_groups() -> None:
    """At exit: destroy the group tracklink created (unless the script did) and drop the last references to
    it, so that the backend's destructor joins the backend's threads while the interpreter is still intact
    (the GIL is released meanwhile, so a worker finishing a collective's clean-up can take it)."""
    for ref in _created_groups:
        _destroy_process_group(ref)


def _destroy_process_group(ref: weakref.ref[Any]) -> None:
    group = ref()
    if group is None:
        return
    if dist.is_initialized() and dist.group.WORLD is group:
        try:
            dist.destroy_process_group()
        except Exception as exc:  # at exit: never turn a finished run into a failure
            logger.debug("tracklink: destroying the process group at exit failed: %r", exc)
    try:
        _release_ddp_wrappers(group)
        _release_default_arguments(group)
    except Exception as exc:  # pragma: no cover - best effort at exit
        logger.debug("tracklink: releasing the references to the process group failed: %r", exc)
    del group  # normally the last reference: the group and its threads end here
    if ref() is not None:
        # still held elsewhere (FSDP's sharded modules hold it too): its threads run on into the interpreter's
        # shutdown. Releasing the GIL a moment lets a worker that is waiting for it to release the tensors of
        # the last collective finish now, rather than abort once the interpreter is finalising.
        logger.debug("tracklink: the process group is still referenced after its destruction; its threads "
                     "end with the process")
        time.sleep(0.05)


def _release_ddp_wrappers(group: Any) -> None:
    """Make the DDP wrappers tracklink made (still held by their ``Trainer``) let go of ``group``: the
    attributes DDP itself leaves out when pickled (its group, and its C++ reducer and logger, which hold the
    group too). A wrapper is not used after the interpreter starts exiting."""
    for wrapper in list(_ddp_wrappers):
        if getattr(wrapper, "process_group", None) is group:
            for name in ("logger", "reducer", "process_group"):
                wrapper.__dict__.pop(name, None)


def _release_default_arguments(group: Any) -> None:
    """Reset to ``None`` (the default group) the default arguments of ``torch.distributed`` functions and
    methods that still hold ``group``: modules imported after ``init_process_group`` bound the live group
    (``group=group.WORLD``, e.g. ``torch.distributed.optim``'s ``ZeroRedundancyOptimizer``)."""
    with warnings.catch_warnings():  # deprecated module attributes warn when inspected
        warnings.simplefilter("ignore")
        for name, module in list(sys.modules.items()):
            if module is None or not (name == "torch.distributed" or name.startswith("torch.distributed.")):
                continue
            for value in list(vars(module).values()):
                _release_in(value, name, group)


def _release_in(value: Any, module_name: str, group: Any) -> None:
    if isinstance(value, type) and getattr(value, "__module__", None) == module_name:
        members = list(vars(value).values())
    else:
        members = [value]
    for member in members:
        function = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
        if not isinstance(function, types.FunctionType):
            continue
        defaults = function.__defaults__
        if defaults and any(d is group for d in defaults):
            function.__defaults__ = tuple(None if d is group else d for d in defaults)
        kwdefaults = function.__kwdefaults__
        if kwdefaults and any(d is group for d in kwdefaults.values()):
            function.__kwdefaults__ = {k: (None if d is group else d) for k, d in kwdefaults.items()}


def launched_by_torchrun() -> bool:
    """Whether the rendezvous variables of torchrun (or an equivalent launcher) are set."""
    return all(os.environ.get(name) for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def wrap_model(model: torch.nn.Module, args: Any, device: torch.device) -> torch.nn.Module:
    """Shard the model with FSDP2 when ``args.fsdp`` is set (in place, once), else wrap it in
    ``DistributedDataParallel`` when training is distributed."""
    plan = FsdpPlan.from_args(args)
    if plan is not None:
        return model if is_sharded(model) else shard_model(model, plan, device)
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    wrapped = DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=bool(args.ddp_find_unused_parameters),
    )
    _ddp_wrappers.add(wrapped)
    return wrapped


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


def gather_samples(sample: dict[str, float] | None) -> dict[str, float]:
    """System-metrics samples of every node merged (an ``all_gather_object`` of the local main processes'
    samples: a collective, on logging steps only); this process's sample alone without torchrun."""
    if not is_distributed():
        return sample or {}
    merged: dict[str, float] = {}
    for part in all_gather_objects(sample):
        merged.update(part or {})
    return merged
