"""Checkpoints and resume: an interrupted run resumed to the end equals the uninterrupted run.

Bad behaviours these tests catch:
- resumed weights or ``log_history`` differing from the uninterrupted run: data not skipped, skipped
  twice, the dropout RNG restored before the DataLoader iterator draws its seed (mid-epoch resume), the
  scheduler or optimizer state not restored, the fractional ``epoch`` wrong after skipped batches;
- iterable (length-less) training data not skipped on resume;
- ``num_input_tokens_seen`` restarting from 0 after a resume;
- the final ``train_loss`` of a resumed call divided by the total step count (4.45) instead of the steps
  run in this call (v5);
- ``resume_from_checkpoint=True`` choosing an interrupted save (no ``trainer_state.json``), or not the
  newest checkpoint; an explicit path without ``trainer_state.json`` failing instead of loading the
  weights with a warning;
- resuming a finished run training one more step (4.45);
- callback states not restored, restored in the wrong order, moved to the end of the dispatch order
  (transformers' defect), the saved list growing at each save, no warning for a missing callback;
- a ``trainer_state.json`` transformers cannot load; checkpoint files missing, pickled arguments, secrets
  in ``training_args.json``; ``save_total_limit`` deleting the wrong checkpoints.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from trainer_testlib import (
    Recorder,
    ScriptedEvalModel,
    StopAfterSaveAt,
    checkpoint_names,
    comparable_history,
    same_weights,
    weights_of,
)

from helpers import (
    SECRET_ENV,
    SECRET_ENV_VAR,
    SECRETS,
    ClassificationDataset,
    TinyClassifier,
    files_containing,
    make_trainer,
)
from tracklink import EarlyStoppingCallback, TrainerCallback
from tracklink.trainer import Trainer, TrainingArguments


class Crash(Exception):
    pass


class CrashAtStep(TrainerCallback):
    """Raises when step ``n`` begins (the checkpoint of step ``n - 1`` is on disk)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step + 1 == self.n:
            raise Crash(f"simulated crash at step {self.n}")


def classifier_trainer(output_dir: Path, callbacks: list[Any] | None = None, train_dataset: Any = None,
                       **overrides: Any) -> Trainer:
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir), report_to="none", disable_tqdm=True, max_steps=20,
        per_device_train_batch_size=6, logging_steps=5, eval_strategy="steps", eval_steps=5, save_steps=5,
        learning_rate=0.05, seed=3,
    )
    settings.update(overrides)
    return Trainer(
        model_init=lambda: TinyClassifier(dropout=0.3),  # seeded by train(): identical initial weights
        args=TrainingArguments(**settings),
        train_dataset=train_dataset if train_dataset is not None else ClassificationDataset(length=50),
        eval_dataset=ClassificationDataset(length=12, seed=5),
        callbacks=callbacks,
    )


# 50 samples in batches of 6: 9 batches per epoch (the last holds 2 samples)
RESUME_CASES = {
    # name: (gradient accumulation, N, interval); every checkpoint N is in the middle of an epoch
    "ga1": (1, 10, 5),  # step 10 = epoch 1 after 1 batch
    "ga2": (2, 6, 3),   # 5 updates per epoch (the last of 1 batch); step 6 = epoch 1 after 2 batches
}


@pytest.mark.parametrize("interrupt", ["stop_after_save", "crash"])
@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resumed_run_equals_uninterrupted_run(case: str, interrupt: str, tmp_path: Path) -> None:
    ga, n, interval = RESUME_CASES[case]
    common = dict(max_steps=2 * n, gradient_accumulation_steps=ga, logging_steps=interval,
                  eval_steps=interval, save_steps=interval)

    full = classifier_trainer(tmp_path / "full", **common)
    full.train()

    stopper = StopAfterSaveAt(n) if interrupt == "stop_after_save" else CrashAtStep(n + 1)
    first = classifier_trainer(tmp_path / "split", callbacks=[stopper], **common)
    if interrupt == "crash":
        with pytest.raises(Crash):
            first.train()
    else:
        first.train()
    assert first.state.global_step == n
    assert checkpoint_names(tmp_path / "split")[-1] == f"checkpoint-{n}"

    recorder = Recorder()
    resumed = classifier_trainer(tmp_path / "split", callbacks=[recorder], **common)
    output = resumed.train(resume_from_checkpoint=True)

    assert ("on_train_begin", n) in recorder.events
    assert next(e for e in recorder.events if e[0] == "on_step_end") == ("on_step_end", n + 1)
    assert resumed.state.global_step == 2 * n
    assert same_weights(weights_of(full.model), weights_of(resumed.model))
    assert comparable_history(resumed.state.log_history) == comparable_history(full.state.log_history)
    assert resumed.state.epoch == full.state.epoch
    saved = json.loads((tmp_path / "split" / f"checkpoint-{2 * n}" / "trainer_state.json").read_text())
    assert comparable_history(saved["log_history"]) == comparable_history(full.state.log_history)

    # v5: the final train_loss averages the steps run in this call only
    resumed_logs = [e["loss"] for e in full.state.log_history if "loss" in e and e["step"] > n]
    assert output.training_loss == pytest.approx(sum(resumed_logs) * interval / n, rel=1e-6)
    assert resumed.state.log_history[-1]["train_loss"] == output.training_loss


class CountingStream(torch.utils.data.IterableDataset):
    """A length-less stream of classification items (deterministic, no shuffling)."""

    def __init__(self, length: int = 200) -> None:
        self.data = ClassificationDataset(length=length, seed=11)

    def __iter__(self) -> Any:
        for i in range(len(self.data)):
            yield self.data[i]


def test_iterable_dataset_resume_skips_consumed_batches(tmp_path: Path) -> None:
    common = dict(max_steps=12, logging_steps=3, eval_steps=3, save_steps=3)
    full = classifier_trainer(tmp_path / "full", train_dataset=CountingStream(), **common)
    full.train()
    first = classifier_trainer(tmp_path / "split", callbacks=[StopAfterSaveAt(6)],
                               train_dataset=CountingStream(), **common)
    first.train()
    resumed = classifier_trainer(tmp_path / "split", train_dataset=CountingStream(), **common)
    resumed.train(resume_from_checkpoint=True)
    assert same_weights(weights_of(full.model), weights_of(resumed.model))
    assert comparable_history(resumed.state.log_history) == comparable_history(full.state.log_history)
    # transformers' epoch for length-less data: steps / (max_steps * grad_accum)
    assert [e["epoch"] for e in full.state.log_history if "loss" in e] == [0.25, 0.5, 0.75, 1.0]


class TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(50, 8, mode="sum")
        self.head = nn.Linear(8, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: Any = None) -> dict[str, Any]:
        logits = self.head(self.embed(input_ids, per_sample_weights=attention_mask.float()))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class TokenDataset(torch.utils.data.Dataset):
    """Sequences of 6 token ids, ``i % 4`` of them padding."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = torch.tensor([(i * 7 + k) % 50 for k in range(6)])
        mask = torch.tensor([1] * (6 - i % 4) + [0] * (i % 4))
        return {"input_ids": ids, "attention_mask": mask, "labels": i % 2}


@pytest.mark.parametrize("mode", ["all", "non_padding"])
def test_tokens_seen_continue_after_resume(mode: str, tmp_path: Path) -> None:
    def trainer(out: Path, callbacks: list[Any] | None = None) -> Trainer:
        torch.manual_seed(0)
        args = TrainingArguments(output_dir=str(out), report_to="none", disable_tqdm=True, max_steps=10,
                                 per_device_train_batch_size=4, logging_steps=2, save_steps=4,
                                 include_num_input_tokens_seen=mode, learning_rate=0.1)
        return Trainer(model=TokenModel(), args=args, train_dataset=TokenDataset(), callbacks=callbacks)

    full = trainer(tmp_path / "full")
    full.train()
    expected_total = 10 * 4 * 6 if mode == "all" else sum(
        int(TokenDataset()[i]["attention_mask"].sum()) for i in range(40))
    assert full.state.num_input_tokens_seen == expected_total
    trainer(tmp_path / "split", [StopAfterSaveAt(4)]).train()
    resumed = trainer(tmp_path / "split")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.num_input_tokens_seen == expected_total
    seen = [e["num_input_tokens_seen"] for e in resumed.state.log_history]
    assert seen == [e["num_input_tokens_seen"] for e in full.state.log_history]
    assert seen == sorted(seen) and seen[0] > 0


# -- which checkpoint ------------------------------------------------------------------------------


def test_resume_true_picks_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    make_trainer(tmp_path, max_steps=4, save_steps=1, eval_strategy="no").train()
    assert checkpoint_names(tmp_path) == [f"checkpoint-{i}" for i in range(1, 5)]
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()  # an interrupted save
    recorder = Recorder()
    trainer = make_trainer(tmp_path, max_steps=6, save_steps=1, eval_strategy="no", callbacks=[recorder])
    trainer.train(resume_from_checkpoint=True)
    assert ("on_train_begin", 3) in recorder.events
    assert [e[1] for e in recorder.events if e[0] == "on_step_end"] == [4, 5, 6]


def test_resume_true_without_checkpoint_is_an_error(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=2, eval_strategy="no")
    with pytest.raises(ValueError, match="found no valid checkpoint"):
        trainer.train(resume_from_checkpoint=True)


def test_explicit_checkpoint_without_state_loads_weights_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    make_trainer(tmp_path / "run", max_steps=4, save_steps=4, eval_strategy="no").train()
    checkpoint = tmp_path / "run" / "checkpoint-4"
    (checkpoint / "trainer_state.json").unlink()
    from safetensors.torch import load_file

    saved = load_file(str(checkpoint / "model.safetensors"))

    class WeightsAtBegin(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self.weights = weights_of(model)
            self.step = state.global_step

    probe = WeightsAtBegin()
    trainer = make_trainer(tmp_path / "new", max_steps=2, eval_strategy="no", callbacks=[probe])
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert probe.step == 0 and trainer.state.global_step == 2
    assert same_weights(probe.weights, dict(saved))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(checkpoint) in w and "trainer_state.json" in w and "step 0" in w for w in warnings), warnings


def test_explicit_path_that_is_not_a_checkpoint_is_rejected(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=2, eval_strategy="no")
    with pytest.raises(ValueError, match=r"not a checkpoint directory.*model\.safetensors"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "nowhere"))


def test_resuming_a_finished_run_trains_no_extra_step(tmp_path: Path) -> None:
    make_trainer(tmp_path, max_steps=6, save_steps=3, eval_strategy="no").train()
    history = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    recorder = Recorder()
    trainer = make_trainer(tmp_path, max_steps=6, save_steps=3, eval_strategy="no", callbacks=[recorder])
    output = trainer.train(resume_from_checkpoint=True)
    assert output.global_step == 6 and trainer.state.global_step == 6
    assert "on_step_begin" not in recorder.names() and "on_save" not in recorder.names()
    assert trainer.state.log_history[:-1] == history
    assert "train_runtime" in trainer.state.log_history[-1]


# -- callback states ---------------------------------------------------------------------------------


class Counter(TrainerCallback):
    """A stateful callback counting steps by ``increment``."""

    def __init__(self, label: str = "", increment: int = 1) -> None:
        self.label = label
        self.increment = increment
        self.count = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.count += self.increment

    def state(self) -> dict[str, Any]:
        return {"args": {"label": self.label, "increment": self.increment}, "attributes": {"count": self.count}}


def _scripted_trainer(out: Path, callbacks: list[Any], max_steps: int, restore: bool = False) -> Trainer:
    args = TrainingArguments(
        output_dir=str(out), report_to="none", disable_tqdm=True, max_steps=max_steps,
        per_device_train_batch_size=4, per_device_eval_batch_size=4, logging_steps=2, eval_strategy="steps",
        eval_steps=2, save_steps=2, metric_for_best_model="loss",
        restore_callback_states_from_checkpoint=restore,
    )
    from helpers import RegressionDataset

    return Trainer(model=ScriptedEvalModel([1.0, 0.9, 0.85, 0.8, 0.75, 0.7]), args=args,
                   train_dataset=RegressionDataset(length=32), eval_dataset=RegressionDataset(length=4, seed=2),
                   callbacks=callbacks)


def _types(trainer: Trainer) -> list[str]:
    return [type(cb).__name__ for cb in trainer.callback_handler.callbacks]


def test_callback_states_restored_in_place(tmp_path: Path) -> None:
    # threshold 0.2: none of the later improvements (0.1, 0.05, ...) counts, so the counter grows
    first = _scripted_trainer(tmp_path, [EarlyStoppingCallback(5, 0.2), Counter("a", 1), Counter("b", 2)], 6)
    first.train()
    saved = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())["stateful_callbacks"]
    assert saved["EarlyStoppingCallback"] == {
        "args": {"early_stopping_patience": 5, "early_stopping_threshold": 0.2},
        "attributes": {"early_stopping_patience_counter": 2}}
    assert saved["Counter"] == [  # one entry per instance, the latest values (no growing list)
        {"args": {"label": "a", "increment": 1}, "attributes": {"count": 6}},
        {"args": {"label": "b", "increment": 2}, "attributes": {"count": 12}}]

    seen: dict[str, Any] = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            handler_callbacks = resumed.callback_handler.callbacks
            stopper = next(cb for cb in handler_callbacks if isinstance(cb, EarlyStoppingCallback))
            seen["early"] = (stopper.early_stopping_patience, stopper.early_stopping_threshold,
                             stopper.early_stopping_patience_counter)
            seen["counters"] = [(cb.label, cb.count) for cb in handler_callbacks if isinstance(cb, Counter)]

    fresh = [EarlyStoppingCallback(), Counter(), Counter(), Probe()]
    resumed = _scripted_trainer(tmp_path, fresh, 8, restore=True)
    order_before = _types(resumed)
    resumed.train(resume_from_checkpoint=True)
    assert seen["early"] == (5, 0.2, 2)
    assert seen["counters"] == [("a", 6), ("b", 12)]
    assert _types(resumed) == order_before  # restored callbacks keep their dispatch position
    assert order_before.index("PrinterCallback") == len(order_before) - 1
    assert [(cb.label, cb.count) for cb in resumed.callback_handler.callbacks if isinstance(cb, Counter)] == [
        ("a", 8), ("b", 16)]


def test_callback_states_not_restored_without_the_flag(tmp_path: Path) -> None:
    _scripted_trainer(tmp_path, [EarlyStoppingCallback(5, 0.2), Counter("a")], 4).train()
    fresh = Counter()
    stopper = EarlyStoppingCallback()
    resumed = _scripted_trainer(tmp_path, [stopper, fresh], 6)
    resumed.train(resume_from_checkpoint=True)
    assert fresh in resumed.callback_handler.callbacks and fresh.count == 2 and fresh.label == ""
    assert stopper.early_stopping_patience == 1


def test_missing_stateful_callback_is_named_in_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _scripted_trainer(tmp_path, [EarlyStoppingCallback(5, 0.2)], 4).train()
    resumed = _scripted_trainer(tmp_path, [], 6, restore=True)
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        resumed.train(resume_from_checkpoint=True)
    messages = [r.getMessage() for r in caplog.records if "not included in current configuration" in r.getMessage()]
    assert len(messages) == 1 and "EarlyStoppingCallback" in messages[0]


# -- checkpoint files ----------------------------------------------------------------------------------

# transformers v5's top-level trainer_state.json keys (reference §1.1)
STATE_KEYS = {
    "best_global_step", "best_metric", "best_model_checkpoint", "epoch", "eval_steps", "global_step",
    "is_hyper_param_search", "is_local_process_zero", "is_world_process_zero", "log_history", "logging_steps",
    "max_steps", "num_input_tokens_seen", "num_train_epochs", "save_steps", "stateful_callbacks", "total_flos",
    "train_batch_size", "trial_name", "trial_params",
}


def test_checkpoint_contents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    make_trainer(tmp_path, max_steps=4, save_steps=4, eval_strategy="no", secrets=True).train()
    checkpoint = tmp_path / "checkpoint-4"
    assert {p.name for p in checkpoint.iterdir()} == {
        "model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng_state.pth",
        "trainer_state.json", "training_args.json"}
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.load(checkpoint / name, weights_only=True)  # plain tensors and containers, no pickled objects
    args = json.loads((checkpoint / "training_args.json").read_text())
    assert args["max_steps"] == 4 and args["learning_rate"] == 0.1
    # the arguments are redacted; config.json is the model's own config, saved as is so it can be reloaded
    hits = files_containing(checkpoint, SECRETS)
    assert [h for h in hits if "training_args.json" in h or "trainer_state.json" in h] == []
    assert SECRET_ENV not in (checkpoint / "training_args.json").read_text()
    text = (checkpoint / "trainer_state.json").read_text()
    state = json.loads(text)
    assert set(state) == STATE_KEYS
    assert text == json.dumps(state, indent=2, sort_keys=True) + "\n"
    assert state["stateful_callbacks"]["TrainerControl"]["args"]["should_save"] is True
    assert state["stateful_callbacks"]["TrainerControl"]["args"]["should_training_stop"] is True


def test_save_only_model_writes_no_training_state(tmp_path: Path) -> None:
    make_trainer(tmp_path, max_steps=2, save_steps=2, eval_strategy="no", save_only_model=True).train()
    assert {p.name for p in (tmp_path / "checkpoint-2").iterdir()} == {
        "model.safetensors", "config.json", "trainer_state.json", "training_args.json"}


@pytest.mark.interop
def test_trainer_state_loads_in_transformers(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import TrainerState as HFTrainerState

    _scripted_trainer(tmp_path, [EarlyStoppingCallback(3)], 4).train()
    path = tmp_path / "checkpoint-4" / "trainer_state.json"
    theirs = HFTrainerState.load_from_json(str(path))
    mine = json.loads(path.read_text())
    assert theirs.global_step == 4 and theirs.log_history == mine["log_history"]
    assert theirs.best_metric == mine["best_metric"] and theirs.best_global_step == mine["best_global_step"]
    assert theirs.stateful_callbacks["EarlyStoppingCallback"]["args"]["early_stopping_patience"] == 3
    theirs.save_to_json(str(tmp_path / "again.json"))
    assert (tmp_path / "again.json").read_text() == path.read_text()


def test_save_total_limit_deletes_oldest_first(tmp_path: Path) -> None:
    class Snapshot(TrainerCallback):
        def __init__(self) -> None:
            self.seen: list[list[str]] = []

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seen.append(checkpoint_names(args.output_dir))

    spy = Snapshot()
    make_trainer(tmp_path, max_steps=5, save_steps=1, eval_strategy="no", save_total_limit=2, callbacks=[spy]).train()
    assert spy.seen == [["checkpoint-1"], ["checkpoint-1", "checkpoint-2"], ["checkpoint-2", "checkpoint-3"],
                        ["checkpoint-3", "checkpoint-4"], ["checkpoint-4", "checkpoint-5"]]


# -- checkpoints shared with transformers ---------------------------------------------------------------


def _regression_kwargs() -> dict[str, Any]:
    return dict(report_to="none", max_steps=6, save_steps=3, per_device_train_batch_size=8, logging_steps=3,
                disable_tqdm=True, learning_rate=0.1)


def _losses(history: list[dict[str, Any]]) -> list[float]:
    """Step and training loss of each interval log, flattened (for pytest.approx)."""
    return [x for e in history if "loss" in e for x in (e["step"], e["loss"])]


@pytest.mark.interop
def test_transformers_checkpoint_resumes_in_tracklink(tmp_path: Path) -> None:
    """Weights, optimizer (transformers' two groups, one of them empty here), scheduler, NumPy-array RNG
    file and trainer_state.json written by transformers: the resumed run ends where transformers' does."""
    transformers = pytest.importorskip("transformers")
    from helpers import RegressionDataset, RegressionModel

    hf_args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, optim="adamw_torch",
                                             **_regression_kwargs())
    theirs = transformers.Trainer(model=RegressionModel(), args=hf_args, train_dataset=RegressionDataset(length=64))
    theirs.train()
    ours = Trainer(model=RegressionModel(), args=TrainingArguments(output_dir=str(tmp_path / "ours"),
                                                                   **_regression_kwargs()),
                   train_dataset=RegressionDataset(length=64))
    ours.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert ours.state.global_step == 6
    for name, value in theirs.model.state_dict().items():
        assert torch.allclose(value, ours.model.state_dict()[name], rtol=1e-6, atol=1e-7), name
    assert _losses(ours.state.log_history) == pytest.approx(_losses(theirs.state.log_history))


@pytest.mark.interop
def test_tracklink_checkpoint_resumes_in_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from helpers import RegressionDataset, RegressionModel

    full = Trainer(model=RegressionModel(), args=TrainingArguments(output_dir=str(tmp_path / "full"),
                                                                   **_regression_kwargs()),
                   train_dataset=RegressionDataset(length=64))
    full.train()
    Trainer(model=RegressionModel(), args=TrainingArguments(output_dir=str(tmp_path / "split"), **_regression_kwargs()),
            train_dataset=RegressionDataset(length=64), callbacks=[StopAfterSaveAt(3)]).train()
    hf_args = transformers.TrainingArguments(output_dir=str(tmp_path / "split"), use_cpu=True, optim="adamw_torch",
                                             **_regression_kwargs())
    theirs = transformers.Trainer(model=RegressionModel(), args=hf_args, train_dataset=RegressionDataset(length=64))
    theirs.train(resume_from_checkpoint=str(tmp_path / "split" / "checkpoint-3"))
    for name, value in full.model.state_dict().items():
        assert torch.allclose(value, theirs.model.state_dict()[name], rtol=1e-6, atol=1e-7), name
    assert _losses(theirs.state.log_history) == pytest.approx(_losses(full.state.log_history))


class NormAndBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.layer_norm = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.final_norm = nn.Linear(4, 4)  # a "norm" by name only
        self.attn_norm = nn.Linear(4, 4, bias=False)
        self.rel_bias_table = nn.Parameter(torch.zeros(3))
        self.scale = nn.Parameter(torch.ones(1))


@pytest.mark.interop
def test_weight_decay_groups_match_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from tracklink.trainer.optim import create_optimizer, decay_parameter_names

    model = NormAndBias()
    theirs = transformers.Trainer(model=model, args=transformers.TrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, weight_decay=0.1))
    assert decay_parameter_names(model) == set(theirs.get_decay_parameter_names(model))
    optimizer = create_optimizer(model, TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                          weight_decay=0.1))
    theirs.create_optimizer()
    assert [(len(g["params"]), g["weight_decay"]) for g in optimizer.param_groups] == [
        (len(g["params"]), g["weight_decay"]) for g in theirs.optimizer.param_groups]
