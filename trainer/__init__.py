"""The lean, transformers-compatible PyTorch training loop (this package imports torch).

``from tracklink.trainer import Trainer, TrainingArguments``.
"""

from __future__ import annotations

from .arguments import TrainingArguments
from .data import default_data_collator
from .trainer import EvalPrediction, PredictionOutput, Trainer, TrainOutput, set_seed

__all__ = [
    "EvalPrediction",
    "PredictionOutput",
    "TrainOutput",
    "Trainer",
    "TrainingArguments",
    "default_data_collator",
    "set_seed",
]
