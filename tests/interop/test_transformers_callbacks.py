"""transformers' callbacks run unchanged in tracklink's Trainer: its own ``EarlyStoppingCallback`` and a
user's transformers-style callback (written against transformers' API: ``**kwargs``, ``tokenizer`` /
``processing_class``, returning the control)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import make_trainer

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.interop


class WorseningModel(torch.nn.Module):
    """Its evaluation loss grows with every evaluation, so early stopping must trigger."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))
        self.evals = 0

    def forward(self, input_x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        y = input_x * self.w
        if not self.training:
            self.evals += 1
            return {"loss": torch.tensor(float(self.evals)), "logits": y}
        return {"loss": torch.nn.functional.mse_loss(y, labels), "logits": y}


def test_transformers_early_stopping_runs_unchanged(tmp_path: Path) -> None:
    from transformers.trainer_callback import EarlyStoppingCallback

    stopper = EarlyStoppingCallback(early_stopping_patience=2)
    trainer = make_trainer(
        tmp_path / "out", model=WorseningModel(), callbacks=[stopper], max_steps=100, eval_steps=5,
        save_steps=5, load_best_model_at_end=True, per_device_eval_batch_size=16,
    )
    trainer.train()
    # evals at 5 (best), 10 (worse, counter 1), 15 (worse, counter 2 -> stop)
    assert trainer.state.global_step == 15
    assert stopper.early_stopping_patience_counter == 2
    assert trainer.state.best_global_step == 5
    saved = trainer.state.stateful_callbacks["EarlyStoppingCallback"]
    assert saved["args"]["early_stopping_patience"] == 2


def test_a_transformers_style_user_callback(tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []

    class MyCallback(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, tokenizer=None, **kwargs):
            seen.append(("train_begin", state.global_step))
            assert model is not None and "processing_class" in kwargs

        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(("log", state.global_step))

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 12:
                control.should_training_stop = True
            return control

    trainer = make_trainer(tmp_path / "out", callbacks=[MyCallback()])
    trainer.train()
    assert trainer.state.global_step == 12
    assert seen[0] == ("train_begin", 0)
    assert [step for kind, step in seen if kind == "log"] == [5, 10, 10, 12]
