"""The lean, transformers-compatible PyTorch training loop.

``from tracklink.trainer import Trainer, TrainingArguments``. The names load their module on first access,
so importing a light part of this package (``tracklink.trainer.commands``, which adds ``tracklink demo`` to
the command line) does not import torch; the trainer itself does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .arguments import TrainingArguments
    from .data import default_data_collator
    from .trainer import EvalPrediction, PredictionOutput, Trainer, TrainOutput, set_seed

#: Public name -> module inside this package.
_EXPORTS: dict[str, str] = {
    "EvalPrediction": "trainer",
    "PredictionOutput": "trainer",
    "TrainOutput": "trainer",
    "Trainer": "trainer",
    "TrainingArguments": "arguments",
    "default_data_collator": "data",
    "set_seed": "trainer",
}

__all__ = [
    "EvalPrediction", "PredictionOutput", "TrainOutput", "Trainer", "TrainingArguments", "default_data_collator",
    "set_seed",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tracklink.trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
