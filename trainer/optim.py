"""Default optimizer (AdamW with transformers' weight-decay grouping) and learning-rate schedules."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["create_optimizer", "create_scheduler", "decay_parameter_names"]


def decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """Parameters that get weight decay: everything except biases and normalisation layers."""
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)
    rms = getattr(torch.nn, "RMSNorm", None)
    if rms is not None:
        norm_types = (*norm_types, rms)
    excluded: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, norm_types) or "norm" in type(module).__name__.lower():
            excluded.update(f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters(recurse=False))
    return {
        name for name, _ in model.named_parameters()
        if name not in excluded and not name.endswith("bias")
    }


def create_optimizer(model: torch.nn.Module, args: Any) -> torch.optim.Optimizer:
    decay = decay_parameter_names(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
    )


def _schedule(kind: str, warmup: int, total: int) -> Any:
    def warm(step: int) -> float | None:
        if step < warmup:
            return float(step) / float(max(1, warmup))
        return None

    def linear(step: int) -> float:
        w = warm(step)
        return w if w is not None else max(0.0, float(total - step) / float(max(1, total - warmup)))

    def cosine(step: int) -> float:
        w = warm(step)
        if w is not None:
            return w
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    def constant(step: int) -> float:
        return 1.0

    def constant_with_warmup(step: int) -> float:
        w = warm(step)
        return w if w is not None else 1.0

    return {"linear": linear, "cosine": cosine, "constant": constant,
            "constant_with_warmup": constant_with_warmup}[kind]


def create_scheduler(optimizer: torch.optim.Optimizer, args: Any, num_training_steps: int) -> LambdaLR:
    """``linear``, ``cosine``, ``constant`` or ``constant_with_warmup``, with transformers' formulas."""
    warmup = args.get_warmup_steps(num_training_steps)
    return LambdaLR(optimizer, _schedule(args.lr_scheduler_type, warmup, num_training_steps))
