"""What the trainer returns and hands to ``compute_metrics``: transformers' result types, the speed metrics,
and the seeding every run starts with."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

__all__ = ["EvalPrediction", "MissingMetricError", "PredictionOutput", "TrainOutput", "set_seed", "speed_metrics"]


class MissingMetricError(KeyError, ValueError):
    """``metric_for_best_model`` is not among the evaluation metrics (a ``KeyError``, as in
    transformers, whose message prints without ``KeyError``'s quoting; also a ``ValueError``, as every
    refused argument is when the ``Trainer`` is built)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict[str, float]


class PredictionOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: dict[str, float]


class EvalPrediction:
    """What ``compute_metrics`` receives: NumPy ``predictions`` and ``label_ids`` (unpackable as a pair)."""

    def __init__(self, predictions: Any, label_ids: Any) -> None:
        self.predictions = predictions
        self.label_ids = label_ids

    def __iter__(self) -> Iterator[Any]:
        return iter((self.predictions, self.label_ids))

    def __getitem__(self, index: int) -> Any:
        return (self.predictions, self.label_ids)[index]

    def __len__(self) -> int:
        return 2


def set_seed(seed: int) -> None:
    """Seed Python, NumPy (when installed) and torch (all devices)."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    torch.manual_seed(seed)


def speed_metrics(prefix: str, start: float, num_samples: int | None = None, num_steps: int | None = None) -> dict[str, float]:
    runtime = time.time() - start
    metrics = {f"{prefix}_runtime": round(runtime, 4)}
    if runtime > 0:
        if num_samples is not None:
            metrics[f"{prefix}_samples_per_second"] = round(num_samples / runtime, 3)
        if num_steps is not None:
            metrics[f"{prefix}_steps_per_second"] = round(num_steps / runtime, 3)
    return metrics
