"""Shared pieces of the trainer tests: an event recorder, scripted-evaluation models, small datasets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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


class CheckpointableClassifier(nn.Module):
    """A small MLP classifier with transformers' ``gradient_checkpointing_enable`` hook.

    Once enabled, its hidden block runs under ``torch.utils.checkpoint`` in training, so the block is
    called again during the backward pass. With ``count_calls``, ``block_calls`` counts the block's calls
    (off by default: under ``torch.compile`` a changing integer attribute recompiles the model every step).
    """

    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 2, count_calls: bool = False) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, classes)
        self.checkpoint_kwargs: dict[str, Any] | None = None
        self.count_calls = count_calls
        self.block_calls = 0

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        self.checkpoint_kwargs = dict(gradient_checkpointing_kwargs or {"use_reentrant": False})

    def _run_block(self, x: torch.Tensor) -> torch.Tensor:
        if self.count_calls:
            self.block_calls += 1
        return self.block(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        if self.checkpoint_kwargs is not None and self.training:
            from torch.utils.checkpoint import checkpoint

            hidden = checkpoint(self._run_block, x, **self.checkpoint_kwargs)
        else:
            hidden = self._run_block(x)
        logits = self.head(hidden)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.float(), labels)
        return out


class OverflowDataset(torch.utils.data.Dataset):
    """Regression items ``{"x", "labels", "overflow"}``; ``overflow`` is 1 for the indices in ``overflowing``."""

    def __init__(self, length: int = 32, overflowing: Iterable[int] = (), seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(length, 4, generator=generator)
        # small targets and a zero-initialised model keep the scaled fp16 gradients below fp16's maximum
        self.y = self.x @ torch.tensor([0.01, -0.02, 0.005, 0.03]) + 0.005
        self.overflowing = set(overflowing)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "labels": self.y[i], "overflow": int(i in self.overflowing)}


class OverflowingRegressor(nn.Module):
    """Linear regression whose training loss is multiplied by inf when the batch holds an ``overflow``
    item, so every gradient becomes inf or NaN (on the device; nothing is read on the host).

    ``overflow_flags`` keeps one device flag per training forward; ``output_dtypes`` the dtype of the
    linear layer's output (float16 under fp16 autocast)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.overflow_flags: list[torch.Tensor] = []
        self.output_dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                overflow: torch.Tensor | None = None) -> dict[str, Any]:
        raw = self.linear(x).squeeze(-1)
        prediction = raw.float()
        out: dict[str, Any] = {"logits": prediction}
        if labels is None:
            return out
        loss = nn.functional.mse_loss(prediction, labels.float())
        if overflow is not None:
            flag = overflow.any()
            loss = loss * torch.where(flag, float("inf"), 1.0)
            if self.training:
                self.overflow_flags.append(flag)
                self.output_dtypes.append(raw.dtype)
        out["loss"] = loss
        return out


class WeightsPerStep(TrainerCallback):
    """The model's weights at the start of training (key 0) and after every optimizer step."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.weights[state.global_step] = weights_of(model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.weights[state.global_step] = weights_of(model)


class StopAfterSaveAt(TrainerCallback):
    """Stops training right after the checkpoint of step ``n`` was written."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.n:
            control.should_training_stop = True


class LossReadingClassifier(nn.Module):
    """A classifier that reads its training loss on the host (``loss.item()``) in every forward: a host-device
    sync in every step, which the sync checks must catch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, labels: Any = None) -> dict[str, Any]:
        logits = self.net(x)
        out: dict[str, Any] = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
            if self.training:
                out["loss"].item()
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_two_nodes(script: Path, tmp_path: Path, env: dict[str, str], timeout: float = 240) -> list[str]:
    """Launch ``script`` as two torchrun nodes of one process each on this machine (arguments: ``tmp_path``
    and the tests directory); fails unless both exit 0. Returns each node's output."""
    tests_dir = Path(__file__).resolve().parent.parent
    port = free_port()
    launches = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
             "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port),
             str(script), str(tmp_path), str(tests_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
        )
        for node in (0, 1)
    ]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in launches]
    finally:
        for p in launches:
            p.kill()
    for node, (p, out) in enumerate(zip(launches, outputs)):
        assert p.returncode == 0, f"node {node} failed:\n{out[-5000:]}"
    return outputs
