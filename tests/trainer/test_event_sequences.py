"""The real Trainer's event sequences, compared with sequences generated from transformers v5's rules.

``expected_run`` below is written from the behaviour specification (reference §2.2 loop order, §2.3
log → evaluate → save check, §3.1 DefaultFlowCallback with the v5 rules, §2.5/§2.6/§2.7 observed runs),
not from tracklink's code, and never calls transformers. A :class:`Recorder` callback sees every event
with ``global_step`` (plus the log kind for ``on_log`` and the checkpoint directory for ``on_save``).

Bad behaviours these tests catch (each assertion can fail):
- 4.45's double ``on_save`` at the last step with ``save_strategy="epoch"`` (v5: one save per epoch end);
- the last partial gradient-accumulation step dropped (v5 keeps it: 3 steps from 8 batches with ga 3);
- no final evaluation at ``max_steps`` when it is not a multiple of ``eval_steps`` (v5 adds one);
- a second train log at ``on_epoch_end`` for a step that already logged;
- ``logging_first_step``, ``eval_delay``, ``eval_on_start``, ratio intervals, ``logging_strategy="epoch"``
  ignored or misapplied;
- ``predict()`` firing ``on_log``; a dict of eval datasets not prefixed ``eval_<name>_`` or not getting one
  ``on_log``/``on_evaluate`` each;
- early stopping at the wrong step, the best checkpoint deleted by rotation, the best weights not loaded;
- ``on_exception`` missing, fired twice, or the exception swallowed (also for ``KeyboardInterrupt``);
- a returned ``TrainerControl`` ignored (training must stop at step 1);
- a transformers ``TrainerCallback`` subclass seeing a different sequence than a tracklink one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_testlib import (
    TRAINING_EVENTS,
    Recorder,
    ScriptedEvalModel,
    checkpoint_names,
    checkpoint_weights,
    log_kind,
    record_of,
    same_weights,
    weights_of,
)

from helpers import RegressionDataset, RegressionModel
from tracklink import EarlyStoppingCallback, TrainerCallback, TrainerControl
from tracklink.trainer import Trainer, TrainingArguments

# -- the expected-sequence generator (v5 rules) ---------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A training configuration, in the terms of the specification."""

    train_size: int = 64
    batch: int = 8
    epochs: float = 3
    max_steps: int = -1
    ga: int = 1
    logging_strategy: str = "steps"
    logging_steps: float = 500
    logging_first_step: bool = False
    eval_strategy: str = "no"
    eval_steps: float | None = None
    eval_delay: float = 0
    eval_on_start: bool = False
    save_strategy: str = "steps"
    save_steps: float = 500
    eval_size: int = 64
    eval_batch: int = 8
    #: a callback (early stopping, a user callback) stops training at the end of this step
    stop_after_step: int | None = None

    def arguments(self, output_dir: Path, **extra: Any) -> TrainingArguments:
        return TrainingArguments(
            output_dir=str(output_dir), report_to="none", disable_tqdm=True,
            per_device_train_batch_size=self.batch, per_device_eval_batch_size=self.eval_batch,
            num_train_epochs=self.epochs, max_steps=self.max_steps, gradient_accumulation_steps=self.ga,
            logging_strategy=self.logging_strategy, logging_steps=self.logging_steps,
            logging_first_step=self.logging_first_step, eval_strategy=self.eval_strategy,
            eval_steps=self.eval_steps, eval_delay=self.eval_delay, eval_on_start=self.eval_on_start,
            save_strategy=self.save_strategy, save_steps=self.save_steps, learning_rate=0.05, **extra,
        )


def _absolute(interval: float, max_steps: int) -> int:
    """§1.1: a float below 1 is a fraction of max_steps (ceil); otherwise a step count."""
    return math.ceil(max_steps * interval) if interval < 1 else int(interval)


def expected_run(plan: Plan) -> list[tuple[Any, ...]]:
    """The events of ``Trainer(...)`` + ``train()`` under the v5 rules."""
    batches = math.ceil(plan.train_size / plan.batch)
    updates_per_epoch = max(math.ceil(batches / plan.ga), 1)  # v5: ceil, the last step takes the rest
    if plan.max_steps > 0:
        max_steps = plan.max_steps
        epochs = math.ceil(max_steps / updates_per_epoch)
    else:
        max_steps = math.ceil(plan.epochs * updates_per_epoch)
        epochs = math.ceil(plan.epochs)
    log_every = _absolute(plan.logging_steps, max_steps)
    eval_every = _absolute(plan.eval_steps or plan.logging_steps, max_steps)  # falls back to logging_steps
    save_every = _absolute(plan.save_steps, max_steps)
    per_eval = math.ceil(plan.eval_size / plan.eval_batch)

    out: list[tuple[Any, ...]] = [("on_init_end", 0), ("on_train_begin", 0)]

    def evaluation(step: int) -> list[tuple[Any, ...]]:
        return [("on_prediction_step", step)] * per_eval + [("on_log", step, "eval"), ("on_evaluate", step)]

    last_logged = 0

    def check(step: int, log: bool, evaluate: bool, save: bool) -> None:  # §2.3
        nonlocal last_logged
        if log and step > last_logged:
            out.append(("on_log", step, "train"))
            last_logged = step
        if evaluate:
            out.extend(evaluation(step))
        if save:
            out.append(("on_save", step, f"checkpoint-{step}"))

    if plan.eval_on_start:
        out.extend(evaluation(0))
    step = 0
    stop = False
    for epoch in range(epochs):
        out.append(("on_epoch_begin", step))
        left, used = batches, 0
        while left and step < max_steps:
            n = min(plan.ga, left)
            left -= n
            used += n
            out.append(("on_step_begin", step))
            out.extend([("on_substep_end", step)] * (n - 1))
            out += [("on_pre_optimizer_step", step), ("on_optimizer_step", step)]
            step += 1
            out.append(("on_step_end", step))
            # §3.1 DefaultFlowCallback.on_step_end (v5)
            log = (step == 1 and plan.logging_first_step) or (
                plan.logging_strategy == "steps" and step % log_every == 0
            )
            step_eval = plan.eval_strategy == "steps" and plan.eval_delay <= step
            evaluate = step_eval and step % eval_every == 0
            save = plan.save_strategy == "steps" and step % save_every == 0
            if step >= max_steps:
                stop = True
                evaluate = evaluate or (step_eval and step % eval_every != 0)  # v5 final evaluation
                save = save or plan.save_strategy == "steps"  # v5: the max-steps save only for "steps"
            check(step, log, evaluate, save)
            if plan.stop_after_step == step:
                stop = True
            if stop:
                break
        epoch_value = epoch + used / batches
        out.append(("on_epoch_end", step))
        check(
            step,
            plan.logging_strategy == "epoch",
            plan.eval_strategy == "epoch" and plan.eval_delay <= epoch_value,
            plan.save_strategy == "epoch",
        )
        if stop:
            break
    out += [("on_log", step, "summary"), ("on_train_end", step)]
    return out


def logs_of(events: list[tuple[Any, ...]]) -> list[tuple[int, str]]:
    return [(e[1], e[2]) for e in events if e[0] == "on_log"]


def saves_of(events: list[tuple[Any, ...]]) -> list[str]:
    return [e[2] for e in events if e[0] == "on_save"]


def run(plan: Plan, output_dir: Path, callbacks: list[Any] | None = None, model: Any = None,
        **extra: Any) -> tuple[Trainer, Recorder]:
    recorder = Recorder()
    trainer = Trainer(
        model=model or RegressionModel(), args=plan.arguments(output_dir, **extra),
        train_dataset=RegressionDataset(length=plan.train_size),
        eval_dataset=RegressionDataset(length=plan.eval_size, seed=7),
        callbacks=[recorder, *(callbacks or [])],
    )
    trainer.train()
    return trainer, recorder


def assert_same_sequence(actual: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> None:
    """Equal sequences; on failure, show the first difference with some context."""
    if actual == expected:
        return
    index = next((i for i, (a, e) in enumerate(zip(actual, expected)) if a != e), min(len(actual), len(expected)))
    lo = max(0, index - 6)
    raise AssertionError(
        f"sequences differ at index {index} (lengths {len(actual)} vs {len(expected)}):\n"
        f"  actual:   {actual[lo:index + 6]}\n  expected: {expected[lo:index + 6]}"
    )


def assert_run_matches(trainer: Trainer, recorder: Recorder, plan: Plan, output_dir: Path) -> None:
    expected = expected_run(plan)
    assert_same_sequence(recorder.events, expected)
    history = [(entry["step"], log_kind(entry)) for entry in trainer.state.log_history]
    assert history == logs_of(expected)
    assert checkpoint_names(output_dir) == sorted(set(saves_of(expected)), key=lambda n: int(n.split("-")[1]))


# -- the generator itself, on hand-written facts --------------------------------------------------

WORKED = Plan(train_size=16, batch=2, epochs=2, logging_steps=3, eval_strategy="steps", eval_steps=4,
              save_strategy="epoch", eval_size=8, eval_batch=2)


def test_generator_reproduces_the_worked_example_by_hand() -> None:
    """Reference §2.5, v5 column, written out literally."""
    def s(n: int) -> list[tuple[Any, ...]]:
        return [("on_step_begin", n - 1), ("on_pre_optimizer_step", n - 1), ("on_optimizer_step", n - 1),
                ("on_step_end", n)]

    def log(n: int) -> list[tuple[Any, ...]]:
        return [("on_log", n, "train")]

    def ev(n: int) -> list[tuple[Any, ...]]:
        return [("on_prediction_step", n)] * 4 + [("on_log", n, "eval"), ("on_evaluate", n)]

    by_hand = [("on_init_end", 0), ("on_train_begin", 0), ("on_epoch_begin", 0)]
    by_hand += s(1) + s(2) + s(3) + log(3) + s(4) + ev(4) + s(5) + s(6) + log(6) + s(7) + s(8) + ev(8)
    by_hand += [("on_epoch_end", 8), ("on_save", 8, "checkpoint-8"), ("on_epoch_begin", 8)]
    by_hand += s(9) + log(9) + s(10) + s(11) + s(12) + log(12) + ev(12) + s(13) + s(14) + s(15) + log(15)
    by_hand += s(16) + ev(16)
    by_hand += [("on_epoch_end", 16), ("on_save", 16, "checkpoint-16"), ("on_log", 16, "summary"),
                ("on_train_end", 16)]
    assert expected_run(WORKED) == by_hand


# -- the real trainer -------------------------------------------------------------------------------


def test_worked_example(tmp_path: Path) -> None:
    trainer, recorder = run(WORKED, tmp_path)
    assert_run_matches(trainer, recorder, WORKED, tmp_path)
    names = recorder.names()
    assert names.count("on_save") == 2
    assert checkpoint_names(tmp_path) == ["checkpoint-8", "checkpoint-16"]
    steps = [(e["step"], log_kind(e)) for e in trainer.state.log_history]
    assert steps == [(3, "train"), (4, "eval"), (6, "train"), (8, "eval"), (9, "train"), (12, "train"),
                     (12, "eval"), (15, "train"), (16, "eval"), (16, "summary")]
    assert [e[2] for e in recorder.events if e[0] == "on_save"] == ["checkpoint-8", "checkpoint-16"]


HARNESS = Plan()  # reference §2.6: 64 samples, batch 8, 3 epochs, 64 eval samples

HARNESS_CASES = {
    "defaults": HARNESS,
    "logging_steps=5": replace(HARNESS, logging_steps=5),
    "save_steps=5": replace(HARNESS, save_steps=5),
    "eval_steps=5": replace(HARNESS, eval_strategy="steps", eval_steps=5),
    "eval_epoch": replace(HARNESS, eval_strategy="epoch"),
    "mix": replace(HARNESS, logging_steps=3, save_steps=10, eval_strategy="steps", eval_steps=5),
}


@pytest.mark.parametrize("name", list(HARNESS_CASES))
def test_transformers_harness_configurations(name: str, tmp_path: Path) -> None:
    plan = HARNESS_CASES[name]
    trainer, recorder = run(plan, tmp_path)
    assert_run_matches(trainer, recorder, plan, tmp_path)


def test_final_evaluation_at_max_steps_not_a_multiple_of_eval_steps(tmp_path: Path) -> None:
    """24 steps, eval every 5: evaluations at 5, 10, 15, 20 and (v5) 24, before the final save."""
    plan = HARNESS_CASES["eval_steps=5"]
    _, recorder = run(plan, tmp_path)
    evals = [e[1] for e in recorder.events if e[0] == "on_evaluate"]
    assert evals == [5, 10, 15, 20, 24]
    tail = [e[0] for e in recorder.events if e[1] == 24 and e[0] in ("on_evaluate", "on_save")]
    assert tail == ["on_evaluate", "on_save"]


def test_max_steps_with_epoch_saves_saves_once(tmp_path: Path) -> None:
    plan = replace(HARNESS, max_steps=2, save_strategy="epoch")
    trainer, recorder = run(plan, tmp_path)
    assert_run_matches(trainer, recorder, plan, tmp_path)
    assert recorder.names().count("on_save") == 1
    assert checkpoint_names(tmp_path) == ["checkpoint-2"]


def test_gradient_accumulation_keeps_the_last_partial_step(tmp_path: Path) -> None:
    """8 batches per epoch, accumulation 3: steps of 3, 3 and 2 batches (v5), logging every step."""
    plan = Plan(train_size=16, batch=2, epochs=1, ga=3, logging_steps=1, eval_size=8, eval_batch=2)
    trainer, recorder = run(plan, tmp_path)
    assert_run_matches(trainer, recorder, plan, tmp_path)
    assert trainer.state.global_step == 3
    substeps = [e[1] for e in recorder.events if e[0] == "on_substep_end"]
    assert substeps == [0, 0, 1, 1, 2]  # 2 + 2 + 1 substeps
    assert [e[1] for e in recorder.events if e[0] == "on_log"] == [1, 2, 3, 3]
    assert trainer.state.epoch == 1.0


@pytest.mark.parametrize("name, plan", [
    ("eval_on_start", replace(HARNESS, eval_on_start=True, eval_strategy="steps", eval_steps=10)),
    ("eval_delay_steps", replace(HARNESS, eval_strategy="steps", eval_steps=5, eval_delay=12)),
    ("eval_delay_epochs", replace(HARNESS, eval_strategy="epoch", eval_delay=2)),
    ("logging_first_step", replace(HARNESS, logging_first_step=True, logging_steps=4)),
    ("logging_epoch", replace(HARNESS, logging_strategy="epoch", logging_first_step=True)),
    # one step per epoch: the first-step log and the epoch log fall on the same step, logged once
    ("logging_epoch_one_step_epochs", replace(HARNESS, train_size=8, logging_strategy="epoch",
                                              logging_first_step=True)),
    ("ratios", replace(HARNESS, logging_steps=0.25, eval_strategy="steps", eval_steps=0.5, save_steps=0.4)),
    ("save_no", replace(HARNESS, save_strategy="no", logging_steps=7)),
    ("fractional_epochs", replace(HARNESS, epochs=1.5, logging_steps=4, save_strategy="epoch")),
])
def test_argument_variants(name: str, plan: Plan, tmp_path: Path) -> None:
    trainer, recorder = run(plan, tmp_path)
    assert_run_matches(trainer, recorder, plan, tmp_path)


def test_variant_facts(tmp_path: Path) -> None:
    """Facts of the variants, stated independently of the generator."""
    _, rec = run(replace(HARNESS, eval_strategy="steps", eval_steps=5, eval_delay=12), tmp_path / "delay")
    assert [e[1] for e in rec.events if e[0] == "on_evaluate"] == [15, 20, 24]
    _, rec = run(replace(HARNESS, logging_steps=0.25), tmp_path / "ratio")
    assert [e[1] for e in rec.events if e[0] == "on_log"] == [6, 12, 18, 24, 24]
    _, rec = run(replace(HARNESS, logging_first_step=True, logging_steps=4), tmp_path / "first")
    assert [e[1] for e in rec.events if e[0] == "on_log" and e[2] == "train"] == [1, 4, 8, 12, 16, 20, 24]
    _, rec = run(replace(HARNESS, eval_on_start=True, eval_strategy="steps", eval_steps=10), tmp_path / "start")
    assert rec.names()[:3] == ["on_init_end", "on_train_begin", "on_prediction_step"]
    assert rec.names().index("on_evaluate") < rec.names().index("on_epoch_begin")


def test_callback_returning_a_stopping_control_stops_at_step_one(tmp_path: Path) -> None:
    class StopNow(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> TrainerControl:
            return TrainerControl(should_training_stop=True)  # a new object replaces the current one

    plan = replace(HARNESS, stop_after_step=1)
    trainer, recorder = run(plan, tmp_path, callbacks=[StopNow()])
    assert trainer.state.global_step == 1
    assert_same_sequence(recorder.events, expected_run(plan))


@pytest.mark.interop
def test_transformers_callback_sees_the_same_sequence(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers.trainer_callback import TrainerCallback as HFTrainerCallback

    class HFRecorder(HFTrainerCallback):
        def __init__(self) -> None:
            self.events: list[tuple[Any, ...]] = []

    def method(event: str) -> Any:
        def record(self: HFRecorder, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.events.append(record_of(event, state, kwargs))
        return record

    for event in TRAINING_EVENTS:
        if hasattr(HFTrainerCallback, event):
            setattr(HFRecorder, event, method(event))
    hf_recorder = HFRecorder()
    _, recorder = run(WORKED, tmp_path, callbacks=[hf_recorder])
    hf_events = [e for e in recorder.events if e[0] != "on_exception"]
    assert hf_recorder.events == hf_events
    assert_same_sequence(hf_recorder.events, expected_run(WORKED))


# -- evaluate() and predict() ---------------------------------------------------------------------


def test_eval_on_start_predict_and_named_eval_datasets(tmp_path: Path) -> None:
    """Reference §2.7: eval_on_start + predict() + evaluate({"a": ..., "b": ...})."""
    plan = Plan(train_size=16, batch=2, epochs=1, eval_size=8, eval_batch=2, eval_on_start=True,
                eval_strategy="steps", eval_steps=100, logging_steps=100, save_strategy="no")
    trainer, recorder = run(plan, tmp_path)
    train_events = list(recorder.events)
    assert_same_sequence(train_events, expected_run(plan))
    assert [e[0] for e in train_events[:8]] == ["on_init_end", "on_train_begin"] + ["on_prediction_step"] * 4 + [
        "on_log", "on_evaluate"]

    recorder.events.clear()
    recorder.logs.clear()
    output = trainer.predict(RegressionDataset(length=4, seed=3))
    assert recorder.names() == ["on_prediction_step", "on_prediction_step", "on_predict"]
    assert output.predictions.shape == (4,)
    assert set(output.metrics) >= {"test_loss", "test_runtime"}

    recorder.events.clear()

    class MetricsSpy(TrainerCallback):
        seen: list[dict[str, Any]] = []

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
            self.seen.append(dict(metrics))

    spy = MetricsSpy()
    trainer.add_callback(spy)
    metrics = trainer.evaluate(eval_dataset={"a": RegressionDataset(length=2, seed=4),
                                             "b": RegressionDataset(length=2, seed=5)})
    step = trainer.state.global_step
    assert recorder.events == [
        ("on_prediction_step", step), ("on_log", step, "eval"), ("on_evaluate", step),
        ("on_prediction_step", step), ("on_log", step, "eval"), ("on_evaluate", step),
    ]
    assert {k for k in recorder.logs[0] if k != "epoch"} == {
        "eval_a_loss", "eval_a_runtime", "eval_a_samples_per_second", "eval_a_steps_per_second"}
    assert {k for k in recorder.logs[1] if k != "epoch"} == {
        "eval_b_loss", "eval_b_runtime", "eval_b_samples_per_second", "eval_b_steps_per_second"}
    assert [sorted(k for k in m if k.endswith("_loss")) for m in spy.seen] == [["eval_a_loss"], ["eval_b_loss"]]
    assert {"eval_a_loss", "eval_b_loss"} <= set(metrics)
    assert not any(k.startswith("eval_loss") for k in metrics)
    assert trainer.state.log_history[-1]["step"] == step and "eval_b_loss" in trainer.state.log_history[-1]


def test_compute_metrics_results_are_prefixed_once(tmp_path: Path) -> None:
    def metrics_fn(pred: Any) -> dict[str, float]:
        return {"mse": float(((pred.predictions - pred.label_ids) ** 2).mean()), "eval_x_pre": 1.0}

    plan = Plan(train_size=16, batch=4, epochs=1, eval_size=8, eval_batch=4)
    trainer = Trainer(model=RegressionModel(), args=plan.arguments(tmp_path),
                      train_dataset=RegressionDataset(length=16),
                      eval_dataset={"x": RegressionDataset(length=8, seed=3)}, compute_metrics=metrics_fn)
    metrics = trainer.evaluate()
    assert {k for k in metrics if not k.endswith(("_runtime", "_per_second", "epoch"))} == {
        "eval_x_mse", "eval_x_loss", "eval_x_pre"}  # an already prefixed key is not prefixed twice
    by_name = trainer.evaluate("x")  # as in transformers: one named dataset, the plain prefix
    assert by_name["eval_loss"] == metrics["eval_x_loss"] and "eval_mse" in by_name
    with pytest.raises(ValueError, match=r"names no eval dataset.*'x'"):
        trainer.evaluate("y")
    assert trainer.predict(RegressionDataset(length=4)).metrics["test_mse"] >= 0


# -- early stopping and the best model --------------------------------------------------------------

SCRIPT = [1.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 1.1, 1.2, 1.3, 1.4]


def _best_model_plan(**changes: Any) -> Plan:
    base = Plan(train_size=32, batch=4, epochs=3, logging_steps=2, eval_strategy="steps", eval_steps=2,
                save_steps=2, eval_size=4, eval_batch=4)
    return replace(base, **changes)


def test_early_stopping_stops_at_the_right_step(tmp_path: Path) -> None:
    """Eval losses 1.0, 0.5, 0.7, 0.8 at steps 2, 4, 6, 8; patience 2 → stop after step 8."""
    plan = _best_model_plan(stop_after_step=8)
    model = ScriptedEvalModel(SCRIPT)
    trainer, recorder = run(plan, tmp_path, callbacks=[EarlyStoppingCallback(early_stopping_patience=2)],
                            model=model, load_best_model_at_end=True, metric_for_best_model="loss")
    assert trainer.state.global_step == 8
    assert_same_sequence(recorder.events, expected_run(plan))
    assert trainer.state.best_metric == 0.5
    assert trainer.state.best_global_step == 4
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-4")
    assert same_weights(weights_of(trainer.model), dict(checkpoint_weights(tmp_path / "checkpoint-4")))
    assert not same_weights(weights_of(trainer.model), dict(checkpoint_weights(tmp_path / "checkpoint-8")))


@pytest.mark.parametrize("limit, remaining", [(1, ["checkpoint-4"]), (2, ["checkpoint-4", "checkpoint-12"]),
                                              (3, ["checkpoint-4", "checkpoint-10", "checkpoint-12"])])
def test_load_best_model_at_end_with_save_total_limit(limit: int, remaining: list[str], tmp_path: Path) -> None:
    """The best checkpoint (step 4) survives rotation; with limit 1 only it is left at the end."""

    class CheckpointsAtSave(TrainerCallback):
        def __init__(self) -> None:
            self.seen: list[list[str]] = []

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seen.append(checkpoint_names(args.output_dir))

    spy = CheckpointsAtSave()
    plan = _best_model_plan(max_steps=12)
    trainer, _ = run(plan, tmp_path, callbacks=[spy], model=ScriptedEvalModel(SCRIPT),
                     load_best_model_at_end=True, save_total_limit=limit)
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-4")
    assert checkpoint_names(tmp_path) == remaining
    assert all("checkpoint-4" in names for names in spy.seen[1:])  # never deleted once written
    assert all(len(names) <= max(limit, 2) for names in spy.seen)
    assert same_weights(weights_of(trainer.model), dict(checkpoint_weights(tmp_path / "checkpoint-4")))


def test_missing_best_metric_names_the_available_metrics(tmp_path: Path) -> None:
    plan = _best_model_plan(max_steps=4)
    with pytest.raises(KeyError) as info:
        run(plan, tmp_path, load_best_model_at_end=True, metric_for_best_model="accuracy")
    text = str(info.value)
    assert "metric_for_best_model='accuracy'" in text and "'eval_accuracy'" in text
    assert "eval_loss" in text and "eval_runtime" in text
    assert not text.startswith('"')  # printed as a message, not as a quoted key


# -- exceptions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("error, event, step", [
    (RuntimeError("boom in a callback"), "on_step_end", 3),
    (KeyboardInterrupt(), "on_step_begin", 2),
])
def test_on_exception_fires_once_then_the_exception_propagates(
    error: BaseException, event: str, step: int, tmp_path: Path,
) -> None:
    class Raiser(TrainerCallback):
        pass

    setattr(Raiser, event, lambda self, args, state, control, **kw: _raise_at(state, step, error))
    exceptions: list[BaseException] = []

    class Catcher(TrainerCallback):
        def on_exception(self, args: Any, state: Any, control: Any, exception: Any = None, **kw: Any) -> None:
            exceptions.append(exception)

    recorder = Recorder()
    plan = replace(HARNESS, logging_steps=2)
    trainer = Trainer(model=RegressionModel(), args=plan.arguments(tmp_path),
                      train_dataset=RegressionDataset(length=64), eval_dataset=None,
                      callbacks=[recorder, Raiser(), Catcher()])
    with pytest.raises(type(error)) as info:
        trainer.train()
    assert info.value is error
    names = recorder.names()
    assert names.count("on_exception") == 1 and names[-1] == "on_exception"
    assert "on_train_end" not in names
    assert recorder.events[-2][0] == event and recorder.events[-1] == ("on_exception", trainer.state.global_step)
    assert exceptions == [error]


def _raise_at(state: Any, step: int, error: BaseException) -> None:
    if state.global_step == step:
        raise error


# -- precision ------------------------------------------------------------------------------------


def test_bf16_autocast_on_cpu(tmp_path: Path) -> None:
    seen: list[tuple[bool, torch.dtype]] = []

    class Probe(RegressionModel):
        def forward(self, input_x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
            if self.training:
                seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return super().forward(input_x, labels)

    plan = Plan(train_size=16, batch=4, epochs=1, logging_steps=2, eval_size=8, eval_batch=4)
    trainer, recorder = run(plan, tmp_path, model=Probe(), bf16=True, use_cpu=True)
    assert seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen)
    assert all(math.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)
    assert_same_sequence(recorder.events, expected_run(plan))
