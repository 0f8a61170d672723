"""How long a training run is: batches per epoch, optimizer steps per epoch, total steps and epochs, from the
arguments and the training data (transformers' rules), with an error before step 1 when data cannot train."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import has_length

__all__ = ["Loop", "TrainingPlan"]


@dataclass(frozen=True)
class TrainingPlan:
    """``batches_per_epoch`` is ``None`` for length-less data; ``ga`` is ``gradient_accumulation_steps``;
    ``total_batch`` the samples of one optimizer step over all processes."""

    batches_per_epoch: int | None
    updates_per_epoch: int
    max_steps: int
    num_train_epochs: int
    ga: int
    total_batch: int

    @classmethod
    def of(cls, args: Any, dataloader: Any, train_dataset: Any, world_size: int) -> TrainingPlan:
        ga = args.gradient_accumulation_steps
        total_batch = args.per_device_train_batch_size * ga * max(1, world_size)
        if has_length(dataloader) and len(dataloader) == 0:
            raise ValueError(
                f"the train dataloader has no batch: train_dataset has {len(train_dataset)} sample(s), "
                f"per_device_train_batch_size={args.per_device_train_batch_size} and dataloader_drop_last="
                f"{args.dataloader_drop_last}; use a smaller batch size or dataloader_drop_last=False"
            )
        if has_length(dataloader):
            batches_per_epoch = len(dataloader)
            updates_per_epoch = max(math.ceil(batches_per_epoch / ga), 1)
            if args.max_steps > 0:
                max_steps = args.max_steps
                num_train_epochs = math.ceil(max_steps / updates_per_epoch)
            else:
                max_steps = math.ceil(args.num_train_epochs * updates_per_epoch)
                num_train_epochs = math.ceil(args.num_train_epochs)
            return cls(batches_per_epoch, updates_per_epoch, max_steps, num_train_epochs, ga, total_batch)
        if args.max_steps > 0:
            return cls(None, args.max_steps, args.max_steps, 2**62, ga, total_batch)
        raise ValueError(
            "train_dataset has no length, so TrainingArguments.max_steps must be set (> 0); "
            f"it is {args.max_steps}"
        )


@dataclass
class Loop:
    """What one ``train()`` call carries from step to step."""

    dataloader: Any
    plan: TrainingPlan
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    tr_loss: torch.Tensor
    start_step: int
    start_time: float
    first_epoch: int
    steps_in_epoch_done: int
    checkpoint_dir: Path | None
    ignore_keys: list[str] | None
    filter_nan: bool
    plateau: bool
    sync_control: bool
    count_flos: bool
    grad_norm: Any = None
    learning_rate: float | None = None
    batch_index: int = 0
    steps_in_epoch: int = 1
