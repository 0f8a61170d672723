"""Mixed precision: the autocast context, and fp16's loss scaling with a count of the skipped steps.

With ``fp16=True`` the loss is scaled by a ``torch.amp.GradScaler`` before the backward pass. When the
scaled gradients hold an inf or NaN, ``GradScaler.step`` skips the optimizer step and ``update`` lowers
the scale. :class:`SkippedSteps` tells the trainer whether a step was skipped without reading anything
from the device: it registers a step post-hook on the optimizer and notes whether ``optimizer.step()`` ran.
The only host-device synchronisation of an fp16 step is the one inside ``GradScaler.step`` (it reads
the inf/NaN flag of each device holding parameters to decide whether to step).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["SkippedSteps", "autocast_context"]


def autocast_context(device: torch.device, bf16: bool, fp16: bool) -> Any:
    """``torch.autocast`` in bfloat16 or float16 on ``device``, or a no-op context without either."""
    if bf16 or fp16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if bf16 else torch.float16)
    return contextlib.nullcontext()


class SkippedSteps:
    """Steps an optimizer through a ``GradScaler`` and counts the steps the scaler skipped.

    ``since_log`` counts skipped steps since the last :meth:`take_since_log`; ``total`` counts them since
    :meth:`reset` (the start of a ``train()`` call).
    """

    def __init__(self) -> None:
        self.since_log = 0
        self.total = 0
        self._ran = False
        self._optimizer: Any = None
        self._handle: Any = None

    def reset(self) -> None:
        self.since_log = 0
        self.total = 0

    def attach(self, optimizer: Any) -> None:
        """Watch ``optimizer``'s steps (once per optimizer; a new optimizer replaces the old one)."""
        if optimizer is self._optimizer:
            return
        self.detach()
        self._optimizer = optimizer
        register = getattr(optimizer, "register_step_post_hook", None)
        if callable(register):
            self._handle = register(self._on_step)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        self._optimizer = None

    def _on_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._ran = True

    def step(self, scaler: Any, optimizer: Any) -> bool:
        """``scaler.step(optimizer)`` and ``scaler.update()``; returns whether the optimizer stepped."""
        self.attach(optimizer)
        if self._handle is None:
            # an optimizer without step hooks: compare the scale (two more host reads per step)
            before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            ran = before <= scaler.get_scale()  # a skipped step always lowers the scale
        else:
            self._ran = False
            scaler.step(optimizer)
            scaler.update()
            ran = self._ran
        if not ran:
            self.since_log += 1
            self.total += 1
        return ran

    def take_since_log(self) -> int:
        count, self.since_log = self.since_log, 0
        return count
