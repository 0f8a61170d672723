"""Tracker delivery through the hub: isolation, error policy, snapshots, worker threads, rank gating,
barriers and back-pressure. No assertion depends on how long anything takes: slow trackers are held on
``threading.Event`` gates the test releases."""

from __future__ import annotations

import logging
import threading
import time
import types
from typing import Any

import pytest

from tracklink import (
    CallbackHandler,
    DefaultFlowCallback,
    PluginRegistrationError,
    TrackerError,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    hookimpl,
)
from tracklink.delivery import DeliverySettings
from tracklink.process import ProcessInfo

GATE_TIMEOUT = 60  # a safety net only; tests release their gates explicitly


def make_args() -> types.SimpleNamespace:
    return types.SimpleNamespace(logging_first_step=False, logging_strategy="steps", eval_strategy="no",
                                 eval_delay=0, save_strategy="no")


def new_handler(*callbacks: Any, **kwargs: Any) -> CallbackHandler:
    return CallbackHandler([DefaultFlowCallback, *callbacks], **kwargs)


class Failing(TrainerCallback):
    def __init__(self) -> None:
        self.calls = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.calls += 1
        raise RuntimeError(f"backend down at step {state.global_step}")

    on_log = on_step_end


class Recording(TrainerCallback):
    """Records (event, global_step, thread name) and optionally waits on a gate first."""

    def __init__(self, gated: bool = False) -> None:
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.seen: list[tuple[Any, ...]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.gate.wait(GATE_TIMEOUT)
        self.seen.append(("on_step_end", state.global_step, threading.current_thread().name))

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        self.gate.wait(GATE_TIMEOUT)
        self.seen.append(("on_log", state.global_step, dict(logs), len(state.log_history),
                          dict(state.stateful_callbacks), control.should_save, threading.current_thread().name))

    def on_exception(self, args: Any, state: Any, control: Any, exception: Any = None, **kwargs: Any) -> None:
        self.seen.append(("on_exception", state.global_step, type(exception).__name__))


def steps(handler: CallbackHandler, n: int, state: TrainerState | None = None) -> TrainerState:
    args, state = make_args(), state or TrainerState(max_steps=10_000)
    control = TrainerControl()
    for _ in range(n):
        state.global_step += 1
        control = handler.on_step_end(args, state, control)
    return state


# -- isolation -----------------------------------------------------------------------------------------


def test_failing_tracker_is_isolated_reported_once_and_switched_off(caplog: pytest.LogCaptureFixture) -> None:
    failing, after = Failing(), Recording()
    handler = new_handler()
    handler.add_tracker(failing, "flaky")
    handler.add_callback(after)
    with caplog.at_level(logging.DEBUG, logger="tracklink"):
        state = steps(handler, 6)  # must not raise
        handler.on_log(make_args(), state, TrainerControl(), logs={"loss": 1.0})
        handler.on_train_end(make_args(), state, TrainerControl())
    assert failing.calls == 3  # switched off after the third error
    assert [s[1] for s in after.seen if s[0] == "on_step_end"] == [1, 2, 3, 4, 5, 6]  # training went on
    reports = [r for r in caplog.records if r.levelno >= logging.WARNING and "failed in" in r.getMessage()]
    assert len(reports) == 1
    report = reports[0].getMessage()
    assert "'flaky'" in report and "Traceback" in report and "backend down at step 1" in report
    switched = [r.getMessage() for r in caplog.records if "switched off" in r.getMessage()]
    assert any("'flaky'" in m and "3 errors" in m for m in switched)
    summary = state.stateful_callbacks["TracklinkHub"]["attributes"]["tracker_failures"]["flaky"]
    assert "3 error(s)" in summary and "backend down at step 1" in summary and "switched off" in summary
    assert handler.tracker_failures() == {"flaky": summary}
    assert list(state.stateful_callbacks) == ["TracklinkHub"]  # never a new top-level state key


def test_no_summary_entry_when_nothing_failed() -> None:
    handler = new_handler()
    handler.add_tracker(Recording(), "fine")
    state = steps(handler, 2)
    handler.on_train_end(make_args(), state, TrainerControl())
    assert "TracklinkHub" not in state.stateful_callbacks
    assert handler.tracker_failures() == {}


def test_max_errors_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_TRACKER_MAX_ERRORS", "1")
    failing = Failing()
    handler = new_handler()
    handler.add_tracker(failing, "flaky", inline=True)
    steps(handler, 4)
    assert failing.calls == 1


def test_tracker_exception_in_hookimpl_plugin_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    class HookTracker:
        @hookimpl
        def on_step_end(self, state: Any) -> None:
            raise ValueError("hookimpl tracker broke")

    handler = new_handler()
    handler.add_tracker(HookTracker(), "hooky")
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        state = steps(handler, 2)
        handler.on_train_end(make_args(), state, TrainerControl())
    assert "hookimpl tracker broke" in caplog.text
    assert "2 error(s)" in handler.tracker_failures()["hooky"]


# -- TRACKLINK_ON_ERROR=raise ------------------------------------------------------------------------


def test_raise_policy_inline_raises_at_next_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_ON_ERROR", "raise")
    handler = new_handler()
    handler.add_tracker(Failing(), "flaky", inline=True)
    args, state, control = make_args(), TrainerState(global_step=1, max_steps=9), TrainerControl()
    handler.on_step_end(args, state, control)  # the failure is recorded here...
    with pytest.raises(TrackerError) as info:
        handler.on_step_begin(args, state, control)  # ...and raised at the next dispatch
    error = info.value
    assert error.tracker == "flaky" and error.event == "on_step_end"
    assert isinstance(error.error, RuntimeError) and error.__cause__ is error.error
    assert "flaky" in str(error) and "backend down at step 1" in str(error)


def test_raise_policy_async_raises_at_train_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_ON_ERROR", "RAISE")  # case-insensitive
    handler = new_handler()
    handler.add_tracker(Failing(), "flaky")
    state = steps(handler, 1)
    with pytest.raises(TrackerError, match="flaky"):
        handler.on_train_end(make_args(), state, TrainerControl())


def test_raise_policy_surfaces_at_barrier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_ON_ERROR", "raise")
    handler = new_handler()
    handler.add_tracker(Failing(), "flaky")
    state = steps(handler, 1)
    with pytest.raises(TrackerError):
        handler.wait_for_trackers()
    # raised once: the next dispatch goes on
    handler.on_step_begin(make_args(), state, TrainerControl())


def test_on_exception_never_raises_even_with_raise_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_ON_ERROR", "raise")
    handler = new_handler()
    handler.add_tracker(Failing(), "flaky")
    state = steps(handler, 1)
    handler.on_exception(make_args(), state, TrainerControl(), exception=RuntimeError("training died"))


@pytest.mark.parametrize("value", ["explode", "ignore", "1"])
def test_invalid_on_error_value(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_ON_ERROR", value)
    with pytest.raises(ValueError) as info:
        CallbackHandler([DefaultFlowCallback])
    message = str(info.value)
    assert f"TRACKLINK_ON_ERROR={value!r}" in message and "warn" in message and "raise" in message


@pytest.mark.parametrize(
    ("name", "value"),
    [("TRACKLINK_TRACKER_MAX_ERRORS", "0"), ("TRACKLINK_TRACKER_MAX_ERRORS", "many"),
     ("TRACKLINK_QUEUE_SIZE", "-1"), ("TRACKLINK_QUEUE_TIMEOUT", "soon"), ("TRACKLINK_DRAIN_TIMEOUT", "0")],
)
def test_invalid_delivery_numbers(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}={value!r}"):
        DeliverySettings.from_env()


def test_delivery_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TRACKLINK_ON_ERROR", "TRACKLINK_TRACKER_MAX_ERRORS", "TRACKLINK_QUEUE_SIZE",
                 "TRACKLINK_QUEUE_TIMEOUT", "TRACKLINK_DRAIN_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    assert DeliverySettings.from_env() == DeliverySettings("warn", 3, 10000, 300.0, 600.0)


# -- snapshots and threads ---------------------------------------------------------------------------


def test_tracker_sees_a_snapshot_of_the_event() -> None:
    slow = Recording(gated=True)
    handler = new_handler()
    handler.add_tracker(slow, "slow")
    args, control = make_args(), TrainerControl()
    state = TrainerState(global_step=5, log_history=[{"loss": 1.0, "step": 5}])
    logs = {"loss": 1.0}
    handler.on_log(args, state, control, logs=logs)
    # the training thread moves on before the tracker ran
    state.global_step = 6
    state.log_history.append({"loss": 2.0, "step": 6})
    state.stateful_callbacks["Later"] = {"args": {}, "attributes": {}}
    logs["loss"] = 99.0
    logs["injected"] = True
    control.should_save = True
    slow.gate.set()
    assert handler.wait_for_trackers()
    assert slow.seen == [("on_log", 5, {"loss": 1.0}, 1, {}, False, "tracklink-slow")]


def test_tracker_cannot_steer_training() -> None:
    class Steering(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            control.should_training_stop = True
            state.global_step = 1000
            return TrainerControl(should_save=True)

    handler = new_handler()
    handler.add_tracker(Steering(), "steering", inline=True)
    args, state, control = make_args(), TrainerState(global_step=1, max_steps=9), TrainerControl()
    result = handler.on_step_end(args, state, control)
    assert result is control
    assert not control.should_training_stop and not control.should_save
    assert state.global_step == 1


def test_events_delivered_in_order_on_a_worker_thread() -> None:
    recorder = Recording()
    handler = new_handler()
    handler.add_tracker(recorder, "ordered")
    steps(handler, 200)
    assert handler.wait_for_trackers()
    assert [s[1] for s in recorder.seen] == list(range(1, 201))
    threads = {s[2] for s in recorder.seen}
    assert threads == {"tracklink-ordered"}
    assert threading.current_thread().name not in threads


def test_each_tracker_has_its_own_worker() -> None:
    blocked, free = Recording(gated=True), Recording()
    handler = new_handler()
    handler.add_tracker(blocked, "blocked")
    handler.add_tracker(free, "free")
    steps(handler, 3)
    # the free tracker finishes although the blocked one has not started
    for channel_owner in handler._entries:
        if channel_owner.tracker == "free":
            assert channel_owner.channel is not None and channel_owner.channel.barrier(GATE_TIMEOUT)
    assert [s[1] for s in free.seen] == [1, 2, 3] and blocked.seen == []
    blocked.gate.set()
    assert handler.wait_for_trackers()
    assert {s[2] for s in blocked.seen} == {"tracklink-blocked"}


@pytest.mark.parametrize("how", ["attribute", "argument"])
def test_inline_trackers_run_on_the_calling_thread(how: str) -> None:
    recorder = Recording()
    handler = new_handler()
    if how == "attribute":
        recorder.inline = True  # type: ignore[attr-defined]
        handler.add_tracker(recorder, "inline")
    else:
        handler.add_tracker(recorder, "inline", inline=True)
    steps(handler, 2)
    # no barrier needed: the calls already happened, on this thread
    assert recorder.seen == [("on_step_end", 1, threading.current_thread().name),
                             ("on_step_end", 2, threading.current_thread().name)]


def test_on_exception_drains_queued_events_first() -> None:
    recorder = Recording(gated=True)
    handler = new_handler()
    handler.add_tracker(recorder, "slow")
    state = steps(handler, 5)
    recorder.gate.set()
    handler.on_exception(make_args(), state, TrainerControl(), exception=KeyboardInterrupt())
    assert [s[:2] for s in recorder.seen] == [("on_step_end", i) for i in range(1, 6)] + [("on_exception", 5)]


def test_on_train_end_drains_queued_events() -> None:
    class Slow(Recording):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            time.sleep(0.002)
            super().on_step_end(args, state, control, **kwargs)

    recorder = Slow()
    handler = new_handler()
    handler.add_tracker(recorder, "slow")
    state = steps(handler, 25)
    handler.on_train_end(make_args(), state, TrainerControl())
    assert [s[1] for s in recorder.seen] == list(range(1, 26))


# -- barriers and back-pressure -------------------------------------------------------------------


def test_wait_for_trackers_barrier() -> None:
    class Slow(Recording):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            time.sleep(0.002)
            super().on_step_end(args, state, control, **kwargs)

    recorder = Slow()
    handler = new_handler()
    handler.add_tracker(recorder, "slow")
    steps(handler, 25)
    assert handler.wait_for_trackers() is True
    assert len(recorder.seen) == 25


def test_wait_for_trackers_times_out_on_a_stuck_tracker() -> None:
    stuck = Recording(gated=True)
    handler = new_handler()
    handler.add_tracker(stuck, "stuck")
    steps(handler, 1)
    assert handler.wait_for_trackers(timeout=0.05) is False
    stuck.gate.set()
    assert handler.wait_for_trackers() is True
    assert len(stuck.seen) == 1


def test_full_queue_applies_back_pressure_then_switches_a_stalled_tracker_off(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TRACKLINK_QUEUE_SIZE", "2")
    monkeypatch.setenv("TRACKLINK_QUEUE_TIMEOUT", "0.05")
    stuck = Recording(gated=True)
    handler = new_handler()
    handler.add_tracker(stuck, "stuck")
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        state = steps(handler, 4)  # capacity is 1 running + 2 queued: one submission must time out
    assert any("'stuck'" in r.getMessage() and "stalled" in r.getMessage() for r in caplog.records)
    stuck.gate.set()
    handler.on_train_end(make_args(), state, TrainerControl())
    assert "stalled" in handler.tracker_failures()["stuck"]
    assert len(stuck.seen) <= 3


# -- rank gating -------------------------------------------------------------------------------------


class MainOnly(Recording):
    rank_policy = "main"


class PerNode(Recording):
    rank_policy = "local_main"


class Everywhere(Recording):
    rank_policy = "all"


def test_rank_gating_on_rank_1_of_a_single_node() -> None:
    handler = new_handler(process=ProcessInfo(rank=1, local_rank=1, world_size=2))
    assert handler.add_tracker(MainOnly(), "main") is False
    assert handler.add_tracker(PerNode(), "node") is False
    assert handler.add_tracker(Everywhere(), "all") is True
    assert handler.add_tracker(Recording(), "default") is False  # default policy is "main"
    assert list(handler.trackers) == ["all"]
    user = Recording()
    handler.add_callback(user)  # user callbacks run on every rank
    steps(handler, 1)
    assert user.seen


def test_rank_gating_on_the_local_main_of_a_second_node() -> None:
    handler = new_handler(process=ProcessInfo(rank=1, local_rank=0, world_size=2))
    assert handler.add_tracker(MainOnly(), "main") is False
    assert handler.add_tracker(PerNode(), "node") is True
    assert handler.add_tracker(MainOnly(), "forced", rank_policy="local_main") is True
    assert list(handler.trackers) == ["node", "forced"]


def test_rank_gating_on_world_main() -> None:
    handler = new_handler(process=ProcessInfo(rank=0, local_rank=0, world_size=2))
    for name, cls in (("main", MainOnly), ("node", PerNode), ("all", Everywhere)):
        assert handler.add_tracker(cls(), name)
    assert list(handler.trackers) == ["main", "node", "all"]


def test_rank_policy_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    handler = new_handler()
    assert handler.process == ProcessInfo(rank=3, local_rank=1, world_size=4)
    assert handler.add_tracker(MainOnly(), "main") is False


def test_invalid_rank_policy() -> None:
    class Odd(Recording):
        rank_policy = "sometimes"

    with pytest.raises(PluginRegistrationError, match="sometimes"):
        new_handler().add_tracker(Odd(), "odd")


def test_same_tracker_name_replaces_the_previous_one() -> None:
    first, second = Recording(), Recording()
    handler = new_handler()
    handler.add_tracker(first, "board")
    handler.add_tracker(second, "board")
    assert handler.trackers == {"board": second}
    steps(handler, 1)
    assert handler.wait_for_trackers()
    assert first.seen == [] and len(second.seen) == 1
