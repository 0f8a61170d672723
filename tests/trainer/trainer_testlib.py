"""Shared pieces of the trainer tests: an event recorder, scripted-evaluation models, small datasets."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracklink import TrainerCallback
from tracklink.events import EVENTS

#: The events a training run fires (``on_push_begin`` is never fired by tracklink's trainer).
TRAINING_EVENTS = tuple(e for e in EVENTS if e != "on_push_begin")


def log_kind(logs: dict[str, Any]) -> str:
    """``train`` (interval log), ``summary`` (final log), ``eval`` (evaluation metrics) or ``other``."""
    if "train_runtime" in logs:
        return "summary"
    if "loss" in logs:
        return "train"
    if any(k.startswith("eval_") for k in logs):
        return "eval"
    return "other"


def record_of(event: str, state: Any, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """One entry of a recorded sequence: ``(event, global_step[, detail])``; the detail is the log kind
    for ``on_log`` and the checkpoint directory name for ``on_save``."""
    if event == "on_log":
        return (event, state.global_step, log_kind(kwargs.get("logs") or {}))
    if event == "on_save":
        directory = kwargs.get("checkpoint_dir")
        return (event, state.global_step, os.path.basename(str(directory)) if directory else None)
    return (event, state.global_step)


class Recorder(TrainerCallback):
    """Records every training event (see :func:`record_of`), plus the raw ``on_log`` dicts."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.logs: list[dict[str, Any]] = []

    def names(self) -> list[str]:
        return [e[0] for e in self.events]


def _make_recorder_method(event: str) -> Any:
    def method(self: Recorder, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.events.append(record_of(event, state, kwargs))
        if event == "on_log":
            self.logs.append(dict(kwargs["logs"]))

    method.__name__ = event
    return method


for _event in TRAINING_EVENTS:
    setattr(Recorder, _event, _make_recorder_method(_event))


class ScriptedEvalModel(nn.Module):
    """A regression model (``y = a*x + b``) whose *evaluation* loss follows a script.

    Training is ordinary MSE. In eval mode the returned loss is ``eval_losses[k]`` for the k-th
    evaluation forward pass (use one eval batch per evaluation), so early stopping and best-model
    selection are deterministic. The scripted loss is ``0 * (a + b) + value`` so it stays a tensor of
    the model.
    """

    def __init__(self, eval_losses: Iterable[float]) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.0))
        self.b = nn.Parameter(torch.tensor(0.0))
        self.eval_losses = list(eval_losses)
        self.eval_calls = 0

    def forward(self, input_x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        y = input_x * self.a + self.b
        if labels is None:
            return {"logits": y}
        if self.training:
            return {"loss": nn.functional.mse_loss(y, labels), "logits": y}
        value = self.eval_losses[min(self.eval_calls, len(self.eval_losses) - 1)]
        self.eval_calls += 1
        return {"loss": (self.a + self.b) * 0 + value, "logits": y}


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def checkpoint_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


def checkpoint_names(output_dir: str | Path) -> list[str]:
    root = Path(output_dir)
    found = [p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")]
    return sorted(found, key=lambda n: int(n.split("-")[1]))


TIMING_SUFFIXES = ("_runtime", "_per_second")


def comparable_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``log_history`` without the final summary and without timing keys."""
    body = [entry for entry in history if "train_runtime" not in entry]
    return [{k: v for k, v in entry.items() if not k.endswith(TIMING_SUFFIXES)} for entry in body]
