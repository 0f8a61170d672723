"""Default optimizer (AdamW with transformers' weight-decay grouping) and learning-rate schedules."""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["create_optimizer", "create_scheduler", "decay_parameter_names"]


#: transformers v5's rule: parameters of ``nn.LayerNorm`` modules and parameters whose (lower-cased) full
#: name matches one of these patterns get no weight decay
NO_DECAY_NAME_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """Parameters that get weight decay, by transformers' rule (so both trainers decay the same
    parameters and their optimizer states line up): everything except ``nn.LayerNorm`` parameters and
    names that look like a bias or a normalisation layer (``NO_DECAY_NAME_PATTERNS``)."""
    patterns = [re.compile(p) for p in NO_DECAY_NAME_PATTERNS]
    in_layer_norm = {
        f"{module_name}.{n}" if module_name else n
        for module_name, module in model.named_modules() if isinstance(module, torch.nn.LayerNorm)
        for n, _ in module.named_parameters(recurse=False)
    }
    return {
        name for name, _ in model.named_parameters()
        if name not in in_layer_norm and not any(p.search(name.lower()) for p in patterns)
    }


def create_optimizer(model: torch.nn.Module, args: Any) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters in transformers' two groups (weight decay for weights, none
    for biases and normalisation layers), both kept even when one is empty, so ``optimizer.pt`` has
    transformers' layout and a checkpoint resumes in either trainer.

    (With ``weight_decay == 0`` one group would do and saves one optimizer pass per step, about 5% of a
    step on a tiny CPU model; the layout compatibility was judged worth more.)
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = decay_parameter_names(model)
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
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
