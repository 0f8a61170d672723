"""No host-device synchronisation on training steps that neither log nor evaluate.

The tests count the calls that would block on the device (see ``tests/syncs.py``: what counts, and the
host-only code that does not) and attribute each call to the step in progress (from ``on_step_begin`` of
step n to ``on_step_begin`` of step n + 1). Everything outside that host-only code, in particular the
trainer's own code, counts.

With bf16 autocast, ``torch.compile`` and gradient checkpointing quiet steps stay free of syncs too; fp16
adds exactly one per optimizer step, inside ``GradScaler.step`` (it reads the inf/NaN flag to decide whether
to step), and none of the trainer's own.

Bad behaviours caught: ``loss.item()`` (or ``float(loss)``) every step, a NaN/inf check on the host,
``grad_norm.item()`` every step, token counting with ``int(mask.sum())``, a host-side check of the
gradient-accumulation boundary; the NaN filter not replacing a NaN step loss (the logged loss must be
finite), or not running on the device.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_testlib import CheckpointableClassifier, LossReadingClassifier

from helpers import RegressionDataset, RegressionModel, TinyClassifier
from syncs import counting_syncs
from tracklink import TrainerCallback
from tracklink.trainer import Trainer, TrainingArguments


class SyncCounter(TrainerCallback):
    """Counts syncing calls per phase: ``("step", n)`` for step n, ``("setup", 0)`` before the first step."""

    def __init__(self) -> None:
        self.phase: tuple[str, int] = ("setup", 0)
        self.calls: list[tuple[tuple[str, int], str, str]] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.phase = ("step", state.global_step + 1)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.phase = ("end", state.global_step)

    def per_step(self) -> Counter[int]:
        return Counter(phase[1] for phase, _, _ in self.calls if phase[0] == "step")

    def where(self, step: int) -> list[str]:
        return [f"{method} from {caller}" for phase, method, caller in self.calls if phase == ("step", step)]

    def patched(self) -> Any:
        return counting_syncs(lambda method, caller: self.calls.append((self.phase, method, caller)))


class TensorItems(torch.utils.data.Dataset):
    """Classification items that are already tensors (the data pipeline itself never converts)."""

    def __init__(self, length: int = 50, features: int = 8, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (length,), generator=generator)
        self.x = torch.randn(length, features, generator=generator) + self.labels[:, None].float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.labels[i]}


def test_counter_sees_a_sync_in_a_training_step(tmp_path: Path) -> None:
    """The counter itself: a model that calls ``loss.item()`` is caught at every step."""

    counter = SyncCounter()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, max_steps=4,
                             per_device_train_batch_size=4, logging_steps=100, save_strategy="no")
    trainer = Trainer(model=LossReadingClassifier(), args=args, train_dataset=TensorItems(), callbacks=[counter])
    with counter.patched():
        trainer.train()
    assert all(counter.per_step()[n] >= 1 for n in range(1, 5))


@pytest.mark.parametrize("ga", [1, 3])
def test_no_sync_between_logging_steps(ga: int, tmp_path: Path) -> None:
    log_every, eval_every, max_steps = 4, 6, 24
    counter = SyncCounter()
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", disable_tqdm=True, max_steps=max_steps,
        per_device_train_batch_size=4, gradient_accumulation_steps=ga, logging_steps=log_every,
        eval_strategy="steps", eval_steps=eval_every, save_steps=12, logging_nan_inf_filter=True,
        max_grad_norm=1.0, learning_rate=0.01,
    )
    torch.manual_seed(0)
    trainer = Trainer(model=TinyClassifier(), args=args, train_dataset=TensorItems(length=50),
                      eval_dataset=TensorItems(length=8, seed=1), callbacks=[counter])
    with counter.patched():
        trainer.train()
    assert trainer.state.global_step == max_steps
    busy = {n for n in range(1, max_steps + 1) if n % log_every == 0 or n % eval_every == 0}
    per_step = counter.per_step()
    quiet_with_syncs = {n: counter.where(n) for n in range(1, max_steps + 1) if n not in busy and per_step[n]}
    assert quiet_with_syncs == {}
    assert all(per_step[n] > 0 for n in busy)  # logging reads the loss: the counter works in this run
    assert any(e for e in trainer.state.log_history if "grad_norm" in e)


class NaNOnce(RegressionModel):
    """A regression model whose training loss is NaN on its third training forward pass; the NaN does
    not reach the gradients (it is a constant added to the loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, input_x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        out = super().forward(input_x, labels)
        if self.training and labels is not None:
            self.calls += 1
            if self.calls == 3:
                out["loss"] = out["loss"] + torch.tensor(float("nan"))
        return out


@pytest.mark.parametrize("nan_filter", [True, False])
def test_nan_step_loss_is_filtered_on_the_device(nan_filter: bool, tmp_path: Path) -> None:
    counter = SyncCounter()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, max_steps=10,
                             per_device_train_batch_size=8, logging_steps=5, save_strategy="no",
                             logging_nan_inf_filter=nan_filter, learning_rate=0.05)
    trainer = Trainer(model=NaNOnce(), args=args, train_dataset=RegressionDataset(length=80), callbacks=[counter])
    with counter.patched():
        trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2
    if nan_filter:
        assert all(math.isfinite(v) for v in losses)
        assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
    else:
        assert math.isnan(losses[0]) and math.isfinite(losses[1])
    per_step = counter.per_step()
    assert {n: counter.where(n) for n in (1, 2, 3, 4, 6, 7, 8, 9) if per_step[n]} == {}


SPEED_OPTIONS = {
    "bf16": dict(bf16=True),
    "compile": dict(torch_compile_backend="aot_eager"),
    "gradient_checkpointing": dict(gradient_checkpointing=True),
}


def _quiet_step_syncs(option_args: dict[str, Any], tmp_path: Path,
                      warm_up: bool = False) -> tuple[SyncCounter, dict[int, list[str]]]:
    """Train 12 steps logging every 4th; the syncing calls of the steps that do not log. With ``warm_up``
    the counted run is the trainer's second ``train()``, which reuses the model compiled by the first."""
    counter = SyncCounter()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, use_cpu=True,
                             max_steps=12, per_device_train_batch_size=4, dataloader_drop_last=True,
                             logging_steps=4, save_strategy="no", max_grad_norm=1.0, learning_rate=0.01,
                             **option_args)
    torch.manual_seed(0)
    trainer = Trainer(model=CheckpointableClassifier(), args=args, train_dataset=TensorItems(length=48),
                      callbacks=[counter])
    if warm_up:
        trainer.train()
        counter.calls.clear()
    with counter.patched():
        trainer.train()
    assert trainer.state.global_step == 12
    return counter, {n: counter.where(n) for n in range(1, 13) if n % 4}


@pytest.mark.parametrize("option", list(SPEED_OPTIONS))
def test_no_sync_between_logging_steps_with_speed_options(option: str, tmp_path: Path) -> None:
    # compiling (the first step) is excluded: with pytest's log capture, torch's structured trace logging
    # formats the traced graph's metadata then; a compiled step itself reads nothing on the host
    counter, quiet = _quiet_step_syncs(SPEED_OPTIONS[option], tmp_path, warm_up=option == "compile")
    assert {n: calls for n, calls in quiet.items() if calls} == {}
    assert all(counter.per_step()[n] > 0 for n in (4, 8, 12))  # logging steps read the loss


def test_fp16_syncs_only_inside_grad_scaler_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One host read per optimizer step, in ``GradScaler.step``; the trainer adds none (test seam: the
    device check refusing fp16 on CPU is lifted, see tests/trainer/test_acceleration.py)."""
    monkeypatch.setattr(Trainer, "_check_precision", lambda self: None)
    _, quiet = _quiet_step_syncs(dict(fp16=True), tmp_path)
    for step, calls in quiet.items():
        assert len(calls) == 1, (step, calls)
        assert calls[0].startswith("item from ") and "/torch/amp/grad_scaler.py:" in calls[0], calls
