"""The training loss between two logs: NaN/inf batch losses, and the one host read that sums the window.

With ``logging_nan_inf_filter`` the loop replaces a NaN/inf batch loss by the window's mean on the device, as
transformers does, and counts it here (on the device too: no host sync between logging steps). When every
batch of a window was non-finite there is nothing to replace it with, and the loss is logged as NaN, never
disguised as 0. Either case is warned about once per run.
"""

from __future__ import annotations

import logging
import math

import torch

from .distributed import sum_across_processes

logger = logging.getLogger("tracklink")

__all__ = ["LossWindow"]


class LossWindow:
    """``nonfinite``: the batch losses the filter replaced since the last log (a device tensor); ``batches``: the
    batches since the last log (on this process)."""

    def __init__(self) -> None:
        self.nonfinite = torch.zeros(())
        self.batches = 0
        self._warned: set[str] = set()

    def reset(self, device: torch.device) -> None:
        self.nonfinite = torch.zeros((), device=device)
        self.batches = 0

    def take(self, tr_loss: torch.Tensor, step: int, world_size: int) -> float:
        """The summed training loss of the window, over all processes and divided by their number (one host
        read for the loss and the count together); the window starts again."""
        world = max(1, world_size)
        batches = self.batches * world
        totals = sum_across_processes(torch.stack([tr_loss.detach().float(), self.nonfinite]))
        loss_sum, nonfinite = (float(v) for v in totals.tolist())
        self.nonfinite = torch.zeros_like(self.nonfinite)
        self.batches = 0
        if nonfinite and nonfinite >= batches:
            loss_sum = math.nan
            self._warn_once("nan-loss", f"tracklink: the training loss was NaN/inf for every batch logged at step "
                                        f"{step}; it is logged as nan. The weights are probably no longer finite")
        elif nonfinite:
            self._warn_once("nan-filtered", f"tracklink: {int(nonfinite)} of {batches} batch losses logged at step "
                                            f"{step} were NaN/inf and were replaced by the mean of the others "
                                            "(logging_nan_inf_filter=True)")
        elif not math.isfinite(loss_sum):
            self._warn_once("nan-loss", f"tracklink: the training loss logged at step {step} is {loss_sum}")
        return loss_sum / world

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("%s (warned once per run)", message)
