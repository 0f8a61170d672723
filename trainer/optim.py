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


class _AdamW(torch.optim.AdamW):
    """AdamW that saves and loads transformers' two-group layout (weight decay / none) while stepping
    one group when there is no weight decay (one optimizer pass per step instead of two, about 5% of a
    step on a tiny CPU model). Its parameters are ordered as in the two-group layout, so the per-parameter
    state indices line up and only the ``param_groups`` list is split or merged."""

    def __init__(self, groups: list[dict[str, Any]], **defaults: Any) -> None:
        self._split = len(groups[0]["params"])  # where the second group of the layout starts
        merged = groups[0]["weight_decay"] == groups[1]["weight_decay"] == 0.0
        if merged:
            groups = [{"params": groups[0]["params"] + groups[1]["params"], "weight_decay": 0.0}]
        super().__init__(groups, **defaults)
        self._merged = merged

    def state_dict(self) -> dict[str, Any]:
        saved = super().state_dict()
        if self._merged:
            (group,) = saved["param_groups"]
            ids = group["params"]
            saved["param_groups"] = [{**group, "params": ids[: self._split]}, {**group, "params": ids[self._split:]}]
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict.get("param_groups", [])
        if self._merged and len(groups) == 2:
            first, second = groups
            state_dict = {**state_dict, "param_groups": [{**first, "params": list(first["params"]) + list(second["params"])}]}
        super().load_state_dict(state_dict)


def create_optimizer(model: torch.nn.Module, args: Any) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters in transformers' two groups (weight decay for weights, none
    for biases and normalisation layers). ``optimizer.pt`` always has transformers' two-group layout, so a
    checkpoint resumes in either trainer; with ``weight_decay == 0`` the groups are stepped as one."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = decay_parameter_names(model)
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
    return _AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)


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


class _LambdaLR(LambdaLR):
    """LambdaLR over a merged ``_AdamW``: saves and loads per-group lists in the two-group layout."""

    _PER_GROUP = ("base_lrs", "_last_lr", "lr_lambdas")

    def state_dict(self) -> dict[str, Any]:
        saved = super().state_dict()
        for key in self._PER_GROUP:
            if isinstance(saved.get(key), list) and len(saved[key]) == 1:
                saved[key] = saved[key] * 2
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        for key in self._PER_GROUP:
            if isinstance(state_dict.get(key), list) and len(state_dict[key]) == 2:
                state_dict[key] = state_dict[key][:1]
        super().load_state_dict(state_dict)


def create_scheduler(optimizer: torch.optim.Optimizer, args: Any, num_training_steps: int) -> LambdaLR:
    """``linear``, ``cosine``, ``constant`` or ``constant_with_warmup``, with transformers' formulas."""
    warmup = args.get_warmup_steps(num_training_steps)
    merged = isinstance(optimizer, _AdamW) and optimizer._merged
    return (_LambdaLR if merged else LambdaLR)(optimizer, _schedule(args.lr_scheduler_type, warmup, num_training_steps))
