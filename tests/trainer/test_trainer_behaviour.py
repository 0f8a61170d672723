"""Trainer behaviours outside the event flow: data conventions, column filtering, evaluation plumbing,
user schedulers and the ``trial`` argument.

Bad behaviours caught:
- iterable (length-less) training data: crashing with a ``__len__`` (a sampler given to an
  ``IterableDataset``), ``epoch`` stuck at 0, no clear error without ``max_steps``;
- ``remove_unused_columns`` passing extra columns to the model, dropping the ``label_names`` columns, or
  filtering when it is off;
- an overridden ``compute_loss`` ignored by evaluation (the eval loss computed by the model instead);
- callbacks seeing the wrong ``eval_dataloader`` (not the one of the evaluation in progress);
- a user ``ReduceLROnPlateau`` stepped every optimizer step without a metric (``TypeError``) instead of
  after each evaluation;
- ``trial`` leaving per-trial leftovers (checkpoints outside ``output_dir``) or its parameters unrecorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from trainer_testlib import Recorder, ScriptedEvalModel, checkpoint_names

from helpers import ClassificationDataset, RegressionDataset, RegressionModel, TinyClassifier
from tracklink import TrainerCallback
from tracklink.trainer import Trainer, TrainingArguments


def arguments(out: Path, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = dict(output_dir=str(out), report_to="none", disable_tqdm=True,
                                    per_device_train_batch_size=4, learning_rate=0.05, save_strategy="no")
    settings.update(overrides)
    return TrainingArguments(**settings)


class Stream(torch.utils.data.IterableDataset):
    def __init__(self, length: int = 30) -> None:
        self.data = ClassificationDataset(length=length)

    def __iter__(self) -> Any:
        return (self.data[i] for i in range(len(self.data)))


class SizedStream(Stream):
    def __len__(self) -> int:
        return len(self.data)


def test_iterable_dataset_with_max_steps(tmp_path: Path) -> None:
    recorder = Recorder()
    trainer = Trainer(model=TinyClassifier(), args=arguments(tmp_path, max_steps=10, logging_steps=5),
                      train_dataset=Stream(30), callbacks=[recorder])
    trainer.train()
    assert trainer.state.global_step == 10
    # 30 samples in batches of 4 = 8 batches per pass: the stream is restarted as a new epoch
    assert [e[1] for e in recorder.events if e[0] == "on_epoch_begin"] == [0, 8]
    assert [e["epoch"] for e in trainer.state.log_history if "loss" in e] == [0.5, 1.2]


def test_iterable_dataset_with_a_length(tmp_path: Path) -> None:
    trainer = Trainer(model=TinyClassifier(), args=arguments(tmp_path, num_train_epochs=2, logging_steps=4),
                      train_dataset=SizedStream(30))
    trainer.train()
    assert trainer.state.global_step == 16 and trainer.state.epoch == 2.0


def test_iterable_dataset_needs_max_steps(tmp_path: Path) -> None:
    trainer = Trainer(model=TinyClassifier(), args=arguments(tmp_path), train_dataset=Stream())
    with pytest.raises(ValueError, match="max_steps must be set"):
        trainer.train()


class ExtraColumns(torch.utils.data.Dataset):
    """Items with the model's inputs plus columns the model does not take."""

    def __init__(self, length: int = 16) -> None:
        self.data = ClassificationDataset(length=length)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.data[i]
        return {"x": item["x"], "target": item["labels"], "idx": i, "text": f"sample {i}"}


class NoLabelModel(TinyClassifier):
    """Takes only ``x``; the loss is computed by the trainer's ``compute_loss`` override."""

    def forward(self, x: torch.Tensor) -> dict[str, Any]:  # type: ignore[override]
        return {"logits": self.net(x)}


class TargetTrainer(Trainer):
    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, **kwargs: Any) -> Any:
        target = inputs.pop("target")
        outputs = model(**inputs)
        loss = nn.functional.cross_entropy(outputs["logits"], target) * 0 + 42.0  # recognisable
        return (loss, outputs) if return_outputs else loss


def test_remove_unused_columns_keeps_label_names(tmp_path: Path) -> None:
    trainer = TargetTrainer(model=NoLabelModel(), args=arguments(tmp_path, max_steps=3, label_names=["target"]),
                            train_dataset=ExtraColumns(), eval_dataset=ExtraColumns(8))
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(42.0)  # the overridden compute_loss, also in evaluation
    output = trainer.predict(ExtraColumns(8))
    assert output.label_ids.tolist() == [int(ExtraColumns(8)[i]["target"]) for i in range(8)]
    assert output.predictions.shape == (8, 2)


def test_without_label_names_the_label_column_is_dropped(tmp_path: Path) -> None:
    trainer = TargetTrainer(model=NoLabelModel(), args=arguments(tmp_path, max_steps=3),
                            train_dataset=ExtraColumns())
    with pytest.raises(KeyError, match="target"):
        trainer.train()


def test_columns_are_passed_through_when_filtering_is_off(tmp_path: Path) -> None:
    trainer = TargetTrainer(model=NoLabelModel(),
                            args=arguments(tmp_path, max_steps=3, label_names=["target"], remove_unused_columns=False),
                            train_dataset=ExtraColumns())
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        trainer.train()


def test_callbacks_see_the_eval_dataloader_in_use(tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []

    class Spy(TrainerCallback):
        def on_prediction_step(self, args: Any, state: Any, control: Any, eval_dataloader: Any = None, **kw: Any) -> None:
            seen.append(("step", len(eval_dataloader.dataset)))

        def on_evaluate(self, args: Any, state: Any, control: Any, eval_dataloader: Any = None, **kw: Any) -> None:
            seen.append(("evaluate", len(eval_dataloader)))

    trainer = Trainer(model=RegressionModel(), args=arguments(tmp_path, per_device_eval_batch_size=4),
                      train_dataset=RegressionDataset(length=16),
                      eval_dataset={"small": RegressionDataset(length=4), "big": RegressionDataset(length=12)},
                      callbacks=[Spy()])
    trainer.evaluate()
    assert seen == [("step", 4), ("evaluate", 1), ("step", 12), ("step", 12), ("step", 12), ("evaluate", 3)]


def test_user_reduce_lr_on_plateau_steps_after_evaluations(tmp_path: Path) -> None:
    model = ScriptedEvalModel([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    trainer = Trainer(model=model, optimizers=(optimizer, scheduler),
                      args=arguments(tmp_path, max_steps=8, logging_steps=2, eval_strategy="steps", eval_steps=2,
                                     per_device_eval_batch_size=4),
                      train_dataset=RegressionDataset(length=32), eval_dataset=RegressionDataset(length=4))
    trainer.train()
    rates = [(e["step"], e["learning_rate"]) for e in trainer.state.log_history if "learning_rate" in e]
    # evaluations at 2, 4, 6, 8 never improve on 1.0: the rate halves after each one but the first
    assert rates == [(2, 0.1), (4, 0.1), (6, 0.05), (8, 0.025)]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0125)


def test_trial_parameters_are_recorded_and_checkpoints_stay_in_output_dir(tmp_path: Path) -> None:
    calls: list[Any] = []

    def model_init(trial: Any) -> nn.Module:
        calls.append(trial)
        return RegressionModel()

    trainer = Trainer(model_init=model_init, args=arguments(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
                      train_dataset=RegressionDataset(length=16))
    trainer.train(trial={"learning_rate": 0.05})
    assert calls[-1] == {"learning_rate": 0.05}
    assert trainer.state.is_hyper_param_search is True
    assert trainer.state.trial_params == {"learning_rate": 0.05}
    assert checkpoint_names(tmp_path) == ["checkpoint-2"]


def test_evaluate_before_training_and_without_an_eval_dataset(tmp_path: Path) -> None:
    recorder = Recorder()
    trainer = Trainer(model=RegressionModel(), args=arguments(tmp_path), train_dataset=RegressionDataset(),
                      callbacks=[recorder])
    metrics = trainer.evaluate(RegressionDataset(length=8))
    assert metrics["epoch"] == 0 and "eval_loss" in metrics
    assert recorder.names() == ["on_init_end", "on_prediction_step", "on_log", "on_evaluate"]  # 8 items, batch 8
    with pytest.raises(ValueError, match="needs an eval_dataset"):
        trainer.evaluate()


def test_predict_on_a_named_eval_dataset_measures_that_dataset(tmp_path: Path) -> None:
    """predict("validation") reads the named dataset; its speed metrics count its 19 samples (5 batches of
    4), not the characters of the name."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True,
                             per_device_eval_batch_size=4)
    trainer = Trainer(model=RegressionModel(), args=args,
                      eval_dataset={"validation": RegressionDataset(length=19, seed=1)})
    output = trainer.predict("validation")
    assert output.predictions.shape == (19,)
    # both rates share one runtime: their ratio is samples per step (the name has 10 characters, 3 steps)
    ratio = output.metrics["test_samples_per_second"] / output.metrics["test_steps_per_second"]
    assert ratio == pytest.approx(19 / 5, rel=1e-3)
