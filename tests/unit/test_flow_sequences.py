"""Event sequences of a training run, reproduced with a scripted driver.

``ScriptedLoop`` below plays the role of the training loop: it calls the hub in transformers v5's order
(reference 2.2/2.3 and the ``tracklink.hookspecs`` docstring), and obeys the control flags the callbacks set,
so ``DefaultFlowCallback`` and the handler's flag resets decide which events fire. The expected sequences are
computed independently, from the formula of reference 2.6 (v5 variant) or written out by hand (reference
2.5).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from tracklink import (
    CallbackHandler,
    DefaultFlowCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)
from tracklink.events import EVENTS

STEP_EVENTS = ["on_step_begin", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end"]


def make_args(**overrides: Any) -> types.SimpleNamespace:
    """Just the fields DefaultFlowCallback reads (plus the step intervals), with transformers' defaults."""
    values: dict[str, Any] = dict(
        logging_first_step=False, logging_strategy="steps", logging_steps=500,
        eval_strategy="no", eval_steps=None, eval_delay=0,
        save_strategy="steps", save_steps=500,
    )
    values.update(overrides)
    if values["eval_strategy"] == "steps" and not values["eval_steps"]:
        values["eval_steps"] = values["logging_steps"]
    return types.SimpleNamespace(**values)


class Recorder(TrainerCallback):
    """Records every event, with global_step and (for on_log) the kind of log."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.detailed: list[tuple[str, int]] = []


for _event in EVENTS:
    def _record(self: Recorder, args: Any, state: Any, control: Any, _e: str = _event, **kwargs: Any) -> None:
        self.events.append(_e)
        self.detailed.append((_e, state.global_step))
    setattr(Recorder, _event, _record)


@dataclass
class ScriptedLoop:
    """A minimal stand-in for the trainer's loop (transformers v5 order of operations)."""

    handler: CallbackHandler
    args: Any
    train_batches: int = 8       # batches per epoch (64 samples / batch 8)
    num_train_epochs: int = 3
    max_steps: int | None = None  # overrides num_train_epochs, as TrainingArguments.max_steps does
    eval_batches: int = 8        # E: prediction steps per evaluation
    grad_accum: int = 1
    state: TrainerState = field(default_factory=TrainerState)
    control: TrainerControl = field(default_factory=TrainerControl)
    saves: list[int] = field(default_factory=list)
    last_logged: int = 0

    def __post_init__(self) -> None:
        self.control = self.handler.on_init_end(self.args, self.state, self.control)

    @property
    def updates_per_epoch(self) -> int:
        return max(math.ceil(self.train_batches / self.grad_accum), 1)  # v5: the last partial step counts

    def train(self) -> TrainerState:
        state, args = self.state, self.args
        if self.max_steps is not None:
            max_steps = self.max_steps
            epochs = math.ceil(max_steps / self.updates_per_epoch)
        else:
            epochs = self.num_train_epochs
            max_steps = epochs * self.updates_per_epoch
        state.max_steps, state.num_train_epochs, state.epoch = max_steps, epochs, 0
        state.compute_steps(args, max_steps)
        self.last_logged = state.global_step
        self.control = self.handler.on_train_begin(args, state, self.control)
        for epoch in range(epochs):
            self.control = self.handler.on_epoch_begin(args, state, self.control)
            for batch in range(self.train_batches):
                first_of_step = batch % self.grad_accum == 0
                ends_step = (batch + 1) % self.grad_accum == 0 or batch + 1 == self.train_batches
                if first_of_step:
                    self.control = self.handler.on_step_begin(args, state, self.control)
                if ends_step:
                    self.control = self.handler.on_pre_optimizer_step(args, state, self.control)
                    self.control = self.handler.on_optimizer_step(args, state, self.control)
                    state.global_step += 1
                    state.epoch = epoch + (batch + 1) / self.train_batches
                    self.control = self.handler.on_step_end(args, state, self.control)
                    self._check()
                else:
                    self.control = self.handler.on_substep_end(args, state, self.control)
                if self.control.should_epoch_stop or self.control.should_training_stop:
                    break
            self.control = self.handler.on_epoch_end(args, state, self.control)
            self._check()
            if self.control.should_training_stop:
                break
        self._log({"train_runtime": 1.0, "total_flos": 0.0, "train_loss": 0.5})
        self.control = self.handler.on_train_end(args, state, self.control)
        return state

    def _log(self, logs: dict[str, Any]) -> None:
        logs = {**logs, "epoch": self.state.epoch}
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.handler.on_log(self.args, self.state, self.control, logs=logs)

    def _check(self) -> None:
        state, control = self.state, self.control
        if control.should_log and state.global_step > self.last_logged:
            self.last_logged = state.global_step
            self._log({"loss": 1.0, "learning_rate": 0.001})
        if self.control.should_evaluate:
            self.evaluate()
        if self.control.should_save:
            self.saves.append(state.global_step)
            self.control = self.handler.on_save(self.args, state, self.control,
                                                checkpoint_dir=f"out/checkpoint-{state.global_step}")

    def evaluate(self) -> None:
        self.handler.eval_dataloader = list(range(self.eval_batches))
        for _ in range(self.eval_batches):
            self.control = self.handler.on_prediction_step(self.args, self.state, self.control)
        metrics = {"eval_loss": 0.5}
        self._log(metrics)
        self.control = self.handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)


def run(args: Any, *extra_callbacks: Any, **loop_options: Any) -> tuple[Recorder, ScriptedLoop]:
    recorder = Recorder()
    handler = CallbackHandler([DefaultFlowCallback, recorder, *extra_callbacks])
    loop = ScriptedLoop(handler, args, **loop_options)
    loop.train()
    return recorder, loop


def expected_events(args: Any, *, steps_per_epoch: int = 8, epochs: int = 3, eval_batches: int = 8) -> list[str]:
    """Reference 2.6's formula, transformers v5 variant (save_strategy "steps", no logging_first_step)."""
    max_steps = steps_per_epoch * epochs
    logging_steps = args.logging_steps
    eval_steps = args.eval_steps if args.eval_steps else logging_steps
    save_steps = args.save_steps
    evaluation = ["on_prediction_step"] * eval_batches + ["on_log", "on_evaluate"]
    events = ["on_init_end", "on_train_begin"]
    step = 0
    for _ in range(epochs):
        events.append("on_epoch_begin")
        for _ in range(steps_per_epoch):
            step += 1
            events += STEP_EVENTS
            if step % logging_steps == 0:
                events.append("on_log")
            if args.eval_strategy == "steps" and step % eval_steps == 0:
                events += evaluation
            if (step == max_steps and args.eval_strategy == "steps" and step % eval_steps != 0
                    and args.eval_delay <= step):
                events += evaluation
            if step % save_steps == 0 or step == max_steps:
                events.append("on_save")
        events.append("on_epoch_end")
        if args.eval_strategy == "epoch":
            events += evaluation
    events += ["on_log", "on_train_end"]
    return events


CONFIGURATIONS = {
    "defaults": {},
    "logging_steps=5": {"logging_steps": 5},
    "save_steps=5": {"save_steps": 5},
    "eval_steps=5": {"eval_strategy": "steps", "eval_steps": 5},
    "eval_epoch": {"eval_strategy": "epoch"},
    "mix": {"logging_steps": 3, "save_steps": 10, "eval_steps": 5, "eval_strategy": "steps"},
}


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_sequences_match_transformers_test_formula(name: str) -> None:
    args = make_args(**CONFIGURATIONS[name])
    recorder, loop = run(args)
    assert recorder.events == expected_events(args)
    assert loop.state.global_step == 24


def test_formula_itself_for_the_mix_configuration() -> None:
    """Hand-checked totals for the mix: logs at 3..24 by 3, evals at 5..20 by 5 plus the final one at 24,
    saves at 10, 20 and 24 (max steps)."""
    events = expected_events(make_args(**CONFIGURATIONS["mix"]))
    assert events.count("on_step_end") == 24
    assert events.count("on_evaluate") == 5
    assert events.count("on_log") == 8 + 5 + 1
    assert events.count("on_save") == 3
    assert events.count("on_prediction_step") == 40


def test_mix_configuration_steps_of_each_event() -> None:
    recorder, loop = run(make_args(**CONFIGURATIONS["mix"]))
    at = lambda name: [s for e, s in recorder.detailed if e == name]  # noqa: E731
    assert at("on_evaluate") == [5, 10, 15, 20, 24]
    assert at("on_save") == [10, 20, 24] == loop.saves
    assert [e["step"] for e in loop.state.log_history if "loss" in e] == [3, 6, 9, 12, 15, 18, 21, 24]
    # within step 24: train log, then the final evaluation, then the save
    events = recorder.events
    tail = events[len(events) - 1 - events[::-1].index("on_step_end"):]
    assert tail[:1] == ["on_step_end"]
    assert tail[1] == "on_log"
    assert tail[2:12] == ["on_prediction_step"] * 8 + ["on_log", "on_evaluate"]
    assert tail[12:] == ["on_save", "on_epoch_end", "on_log", "on_train_end"]


def test_eval_delay_postpones_step_evaluations() -> None:
    recorder, _ = run(make_args(eval_strategy="steps", eval_steps=5, eval_delay=12))
    assert [s for e, s in recorder.detailed if e == "on_evaluate"] == [15, 20, 24]


def test_logging_first_step_and_epoch_logging() -> None:
    recorder, loop = run(make_args(logging_first_step=True, logging_strategy="epoch"))
    assert [e["step"] for e in loop.state.log_history] == [1, 8, 16, 24, 24]
    assert [s for e, s in recorder.detailed if e == "on_log"] == [1, 8, 16, 24, 24]


def test_epoch_save_strategy_with_max_steps_saves_once() -> None:
    """transformers v5 test_no_duplicate_save_on_epoch_strategy: max_steps=2, save_strategy="epoch"."""
    recorder, loop = run(make_args(save_strategy="epoch"), max_steps=2)
    assert recorder.events.count("on_save") == 1
    assert loop.saves == [2]
    assert recorder.events[-5:] == ["on_step_end", "on_epoch_end", "on_save", "on_log", "on_train_end"]


def test_worked_example_v5() -> None:
    """Reference 2.5: 8 steps/epoch, 2 epochs, logging_steps=3, eval every 4 steps (E=4), epoch saves."""
    args = make_args(logging_steps=3, eval_strategy="steps", eval_steps=4, save_strategy="epoch")
    recorder, loop = run(args, train_batches=8, num_train_epochs=2, eval_batches=4)

    def S(n: int) -> list[tuple[str, int]]:
        return [(e, n - 1) for e in STEP_EVENTS[:3]] + [("on_step_end", n)]

    def LOG(n: int) -> list[tuple[str, int]]:
        return [("on_log", n)]

    def EVAL(n: int) -> list[tuple[str, int]]:
        return [("on_prediction_step", n)] * 4 + [("on_log", n), ("on_evaluate", n)]

    expected = [("on_init_end", 0), ("on_train_begin", 0), ("on_epoch_begin", 0)]
    expected += S(1) + S(2) + S(3) + LOG(3) + S(4) + EVAL(4) + S(5) + S(6) + LOG(6) + S(7) + S(8) + EVAL(8)
    expected += [("on_epoch_end", 8), ("on_save", 8), ("on_epoch_begin", 8)]
    expected += S(9) + LOG(9) + S(10) + S(11) + S(12) + LOG(12) + EVAL(12) + S(13) + S(14) + S(15) + LOG(15)
    expected += S(16) + EVAL(16)
    expected += [("on_epoch_end", 16), ("on_save", 16), ("on_log", 16), ("on_train_end", 16)]
    assert recorder.detailed == expected
    assert recorder.events.count("on_save") == 2  # 4.45 saved checkpoint-16 twice
    assert loop.saves == [8, 16]
    assert [e["step"] for e in loop.state.log_history] == [3, 4, 6, 8, 9, 12, 12, 15, 16, 16]
    assert "eval_loss" in loop.state.log_history[1] and "train_runtime" in loop.state.log_history[-1]


def test_final_eval_at_max_steps_not_a_multiple_of_eval_steps() -> None:
    """Reference 2.7: eval_steps=5, save_steps=6, logging_steps=5 over 16 steps: evals 5, 10, 15 and (v5) 16
    before the save at 16."""
    args = make_args(logging_steps=5, eval_strategy="steps", eval_steps=5, save_steps=6)
    recorder, loop = run(args, num_train_epochs=2)
    assert [s for e, s in recorder.detailed if e == "on_evaluate"] == [5, 10, 15, 16]
    assert loop.saves == [6, 12, 16]
    tail = [e for e, s in recorder.detailed if s == 16 and e not in STEP_EVENTS]
    assert tail == ["on_prediction_step"] * 8 + ["on_log", "on_evaluate", "on_save", "on_epoch_end", "on_log",
                                                 "on_train_end"]


def test_callback_returning_stop_control_at_step_one() -> None:
    class StopAtOne(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step == 1:
                return TrainerControl(should_training_stop=True)
            return None

    recorder, loop = run(make_args(), StopAtOne())
    assert loop.state.global_step == 1
    assert recorder.events.count("on_step_end") == 1
    assert recorder.events[-4:] == ["on_step_end", "on_epoch_end", "on_log", "on_train_end"]


def test_epoch_stop_ends_only_the_epoch() -> None:
    class StopEpochAtThree(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 3:
                control.should_epoch_stop = True

    recorder, loop = run(make_args(), StopEpochAtThree())
    assert recorder.events.count("on_epoch_begin") == 3
    assert loop.state.global_step == 3 + 8 + 8


def test_gradient_accumulation_keeps_the_last_partial_step() -> None:
    """Reference 2.7 (v5): 8 batches, grad_accum 3, logging every step: 3 steps, the last with 1 substep."""
    recorder, loop = run(make_args(logging_steps=1), num_train_epochs=1, grad_accum=3)
    assert loop.state.global_step == 3
    full = ["on_step_begin", "on_substep_end", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step",
            "on_step_end", "on_log"]
    last = ["on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end",
            "on_log"]
    body = recorder.events[3:-4]
    assert body == full + full + last
    assert recorder.events[-4:] == ["on_save", "on_epoch_end", "on_log", "on_train_end"]  # max-steps save


def test_flag_set_before_step_end_survives_to_the_check() -> None:
    """A flag raised in on_step_begin / on_optimizer_step survives to the check after on_step_end."""

    class EarlySaver(TrainerCallback):
        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 4:  # still the previous step here
                control.should_save = True

    _, loop = run(make_args(), EarlySaver(), num_train_epochs=1)
    assert loop.saves == [5, 8]


def test_resume_continues_at_restored_step() -> None:
    recorder = Recorder()
    handler = CallbackHandler([DefaultFlowCallback, recorder])
    loop = ScriptedLoop(handler, make_args(logging_steps=3), num_train_epochs=2)
    loop.state.global_step = 8  # as if restored from checkpoint-8; the driver skips the first epoch's steps
    loop.state.log_history = [{"loss": 1.0, "step": 3}, {"loss": 1.0, "step": 6}]
    loop.train_batches = 8
    args, state = loop.args, loop.state
    state.max_steps, state.num_train_epochs = 16, 2
    state.compute_steps(args, 16)
    loop.last_logged = 8
    loop.control = handler.on_train_begin(args, state, loop.control)
    loop.control = handler.on_epoch_begin(args, state, loop.control)
    for batch in range(8):
        loop.control = handler.on_step_begin(args, state, loop.control)
        state.global_step += 1
        state.epoch = 1 + (batch + 1) / 8
        loop.control = handler.on_step_end(args, state, loop.control)
        loop._check()
    assert recorder.detailed[:3] == [("on_init_end", 0), ("on_train_begin", 8), ("on_epoch_begin", 8)]
    assert [e["step"] for e in state.log_history] == [3, 6, 9, 12, 15]
    assert loop.saves == [16]
