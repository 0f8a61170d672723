"""The hub's ``CallbackHandler``: transformers' registration and dispatch rules, both plugin styles,
registration-time validation, and the built-in callbacks (printer, progress, early stopping)."""

from __future__ import annotations

import dataclasses
import logging
import types
from typing import Any

import pytest

import tracklink
from tracklink import (
    CallbackHandler,
    DefaultFlowCallback,
    EarlyStoppingCallback,
    PluginRegistrationError,
    PrinterCallback,
    ProgressCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    hookimpl,
)
from tracklink.events import EVENTS

FLAGS = ("should_training_stop", "should_epoch_stop", "should_save", "should_evaluate", "should_log")

#: reference 1.2 / 1.4: the flags the handler clears before callbacks run; no other event resets anything.
RESET_TABLE: dict[str, tuple[str, ...]] = {
    "on_init_end": (),
    "on_train_begin": ("should_training_stop",),
    "on_epoch_begin": ("should_epoch_stop",),
    "on_step_begin": ("should_log", "should_evaluate", "should_save"),
    "on_substep_end": (),
    "on_pre_optimizer_step": (),
    "on_optimizer_step": (),
    "on_step_end": (),
    "on_epoch_end": (),
    "on_log": ("should_log",),
    "on_evaluate": ("should_evaluate",),
    "on_prediction_step": (),
    "on_predict": (),
    "on_save": ("should_save",),
    "on_train_end": (),
    "on_push_begin": (),
    "on_exception": (),
}

STANDARD_KWARGS = {"model", "processing_class", "tokenizer", "optimizer", "lr_scheduler", "train_dataloader",
                   "eval_dataloader"}
EXTRA = {"on_log": "logs", "on_evaluate": "metrics", "on_predict": "metrics", "on_save": "checkpoint_dir",
         "on_exception": "exception"}


def make_args(**overrides: Any) -> types.SimpleNamespace:
    values = dict(logging_first_step=False, logging_strategy="steps", eval_strategy="no", eval_delay=0,
                  save_strategy="steps", metric_for_best_model=None, greater_is_better=None,
                  load_best_model_at_end=False)
    values.update(overrides)
    return types.SimpleNamespace(**values)


def handler_with(*callbacks: Any, **kwargs: Any) -> CallbackHandler:
    return CallbackHandler([DefaultFlowCallback, *callbacks], **kwargs)


def fire(handler: CallbackHandler, event: str, args: Any, state: Any, control: Any, **extras: Any) -> Any:
    return getattr(handler, event)(args, state, control, **extras)


class Named(TrainerCallback):
    """Records its name into a shared list at on_step_end."""

    def __init__(self, label: str = "", out: list[str] | None = None) -> None:
        self.label = label
        self.out = out if out is not None else []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.out.append(self.label)


class OtherCallback(TrainerCallback):
    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        pass


class SubNamed(Named):
    pass


# -- registration (reference 1.4) -----------------------------------------------------------------


def test_class_is_instantiated_and_instance_used_as_is() -> None:
    instance = Named("x")
    handler = CallbackHandler([DefaultFlowCallback, Named, instance])
    callbacks = handler.callbacks
    assert isinstance(callbacks[0], DefaultFlowCallback)
    assert type(callbacks[1]) is Named and callbacks[1] is not instance
    assert callbacks[2] is instance
    assert handler.callback_list == "DefaultFlowCallback\nNamed\nNamed"


def test_duplicate_class_warns_with_class_name_and_is_still_added(caplog: pytest.LogCaptureFixture) -> None:
    handler = handler_with(Named("a"))
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        handler.add_callback(Named("b"))
    messages = [r.getMessage() for r in caplog.records if r.name == "tracklink"]
    assert any("Named" in m and "already" in m for m in messages), messages
    assert [type(c).__name__ for c in handler.callbacks] == ["DefaultFlowCallback", "Named", "Named"]


def test_subclass_is_not_a_duplicate(caplog: pytest.LogCaptureFixture) -> None:
    handler = handler_with(Named())
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        handler.add_callback(SubNamed())
    assert not [r for r in caplog.records if "already" in r.getMessage()]


def test_missing_default_flow_callback_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        CallbackHandler([Named])
    assert any("DefaultFlowCallback" in r.getMessage() and "Named" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        CallbackHandler([DefaultFlowCallback, Named])
    assert not caplog.records


def test_pop_callback_by_class_instance_and_subclass() -> None:
    first, second, sub = Named("1"), Named("2"), SubNamed("s")
    handler = handler_with(sub, first, second)
    # a class matches the first instance, subclasses included
    assert handler.pop_callback(Named) is sub
    assert handler.pop_callback(second) is second
    assert handler.pop_callback(second) is None  # absent: None, no error
    assert handler.pop_callback(OtherCallback) is None
    assert handler.callbacks[1:] == (first,)


def test_remove_callback_by_class_instance_and_absent() -> None:
    a, b = Named("a"), OtherCallback()
    handler = handler_with(a, b)
    handler.remove_callback(OtherCallback)
    assert b not in handler.callbacks
    handler.remove_callback(a)
    assert handler.callback_list == "DefaultFlowCallback"
    handler.remove_callback(a)  # absent instance: no error (transformers raises ValueError here)
    handler.remove_callback(Named)  # absent class: no error


def test_pop_and_remove_tracker_by_name() -> None:
    tracker, other = Named("t"), Named("u")
    handler = handler_with()
    assert handler.add_tracker(tracker, "mytracker", inline=True)
    assert handler.add_tracker(other, "other", inline=True)
    assert list(handler.trackers) == ["mytracker", "other"]
    assert handler.pop_callback("mytracker") is tracker
    assert handler.pop_callback("mytracker") is None
    handler.remove_callback("other")
    assert handler.trackers == {}


def test_removed_callback_no_longer_receives_events() -> None:
    out: list[str] = []
    a, b = Named("a", out), Named("b", out)
    handler = handler_with(a, b)
    handler.remove_callback(a)
    fire(handler, "on_step_end", make_args(), TrainerState(global_step=1, max_steps=9), TrainerControl())
    assert out == ["b"]


def test_tokenizer_alias() -> None:
    handler = CallbackHandler([DefaultFlowCallback], processing_class="proc")
    assert handler.tokenizer == "proc"
    handler.tokenizer = "tok"
    assert handler.processing_class == "tok"


# -- per-event flag resets (reference 1.2 / 1.4) ----------------------------------------------------


class FlagSpy(TrainerCallback):
    def __init__(self) -> None:
        self.seen: dict[str, dict[str, bool]] = {}

    def _spy(self, event: str, control: Any) -> None:
        self.seen[event] = {flag: getattr(control, flag) for flag in FLAGS}


for _event in EVENTS:
    def _method(self: FlagSpy, args: Any, state: Any, control: Any, _e: str = _event, **kwargs: Any) -> None:
        self._spy(_e, control)
    setattr(FlagSpy, _event, _method)


def test_reset_table_covers_every_event() -> None:
    assert set(RESET_TABLE) == set(EVENTS)


@pytest.mark.parametrize("event", list(RESET_TABLE))
def test_flags_reset_before_each_event(event: str) -> None:
    spy = FlagSpy()
    handler = handler_with(spy)
    handler.remove_callback(DefaultFlowCallback)  # only the spy; DefaultFlow would raise flags itself
    control = TrainerControl(*([True] * len(FLAGS)))
    result = fire(handler, event, make_args(), TrainerState(global_step=3, max_steps=10), control)
    expected = {flag: flag not in RESET_TABLE[event] for flag in FLAGS}
    assert spy.seen[event] == expected
    assert {flag: getattr(result, flag) for flag in FLAGS} == expected


@pytest.mark.interop
def test_flag_resets_match_transformers_handler() -> None:
    hf = pytest.importorskip("transformers.trainer_callback")
    for event in RESET_TABLE:
        if not hasattr(hf.CallbackHandler, event):
            continue  # on_exception is tracklink's own
        ours, theirs = TrainerControl(*([True] * 5)), hf.TrainerControl(*([True] * 5))
        fire(CallbackHandler([]), event, make_args(), TrainerState(), ours)
        extras = {EXTRA[event]: {}} if event in ("on_log", "on_evaluate", "on_predict") else {}
        getattr(hf.CallbackHandler([], None, None, None, None), event)(make_args(), hf.TrainerState(), theirs,
                                                                        **extras)
        assert dataclasses.asdict(ours) == dataclasses.asdict(theirs), event


# -- returned control ---------------------------------------------------------------------------


class Replacer(TrainerCallback):
    def __init__(self) -> None:
        self.new = TrainerControl(should_save=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        return self.new


class ControlSpy(TrainerCallback):
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seen.append(control)


def test_returned_control_replaces_current_one() -> None:
    replacer, spy = Replacer(), ControlSpy()
    handler = CallbackHandler([replacer, spy])
    original = TrainerControl()
    result = fire(handler, "on_step_end", make_args(), TrainerState(global_step=1, max_steps=5), original)
    assert spy.seen == [replacer.new] and spy.seen[0] is replacer.new
    assert result is replacer.new


def test_returning_none_keeps_control() -> None:
    spy = ControlSpy()
    handler = CallbackHandler([Named(), spy])
    original = TrainerControl()
    assert fire(handler, "on_step_end", make_args(), TrainerState(), original) is original
    assert spy.seen[0] is original


def test_returned_control_replaces_for_hookimpl_plugins_too() -> None:
    new = TrainerControl(should_evaluate=True)
    seen = []

    class First:
        @hookimpl
        def on_epoch_end(self) -> Any:
            return new

    class Second:
        @hookimpl
        def on_epoch_end(self, control: Any) -> None:
            seen.append(control)

    handler = CallbackHandler([First(), Second()])
    assert fire(handler, "on_epoch_end", make_args(), TrainerState(), TrainerControl()) is new
    assert seen == [new]


def test_returning_a_non_control_raises_type_error() -> None:
    class Bad(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            return "oops"

    handler = CallbackHandler([Bad()])
    with pytest.raises(TypeError, match=r"Bad.*on_log|on_log.*str"):
        fire(handler, "on_log", make_args(), TrainerState(), TrainerControl(), logs={})


def test_user_callback_exceptions_propagate() -> None:
    class Steering(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            raise KeyError("user bug")

    handler = CallbackHandler([DefaultFlowCallback, Steering()])
    with pytest.raises(KeyError, match="user bug"):
        fire(handler, "on_step_end", make_args(), TrainerState(global_step=1, max_steps=3), TrainerControl())


# -- dispatch order ---------------------------------------------------------------------------------


def test_dispatch_in_registration_order() -> None:
    out: list[str] = []
    handler = CallbackHandler([Named(label, out) for label in "abcde"])
    fire(handler, "on_step_end", make_args(), TrainerState(), TrainerControl())
    assert out == list("abcde")
    handler.add_callback(Named("f", out))
    handler.remove_callback(handler.callbacks[0])
    out.clear()
    fire(handler, "on_step_end", make_args(), TrainerState(), TrainerControl())
    assert out == list("bcdef")


def test_tryfirst_and_trylast() -> None:
    out: list[str] = []

    class Last:
        @hookimpl(trylast=True)
        def on_step_end(self) -> None:
            out.append("last")

    class First:
        @hookimpl(tryfirst=True)
        def on_step_end(self) -> None:
            out.append("first")

    class MarkedMethod(TrainerCallback):
        @hookimpl(tryfirst=True)
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            out.append("marked-first")

    handler = CallbackHandler([Named("a", out), Last(), First(), Named("b", out), MarkedMethod()])
    fire(handler, "on_step_end", make_args(), TrainerState(), TrainerControl())
    assert out == ["first", "marked-first", "a", "b", "last"]


# -- both plugin styles see the same events ------------------------------------------------------------


MODEL, PROC, OPT, SCHED = object(), object(), object(), object()


class HFRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []
        self.kwarg_names: dict[str, set[str]] = {}

    def _record(self, event: str, args: Any, state: Any, control: Any, kwargs: dict[str, Any]) -> None:
        self.kwarg_names[event] = set(kwargs)
        extra = kwargs.get(EXTRA.get(event, ""))
        self.records.append((event, args, state.global_step, control, kwargs["model"], kwargs["processing_class"],
                             kwargs["optimizer"], kwargs["lr_scheduler"], kwargs["eval_dataloader"], extra))


for _event in EVENTS:
    def _hf_method(self: HFRecorder, args: Any, state: Any, control: Any, _e: str = _event, **kwargs: Any) -> None:
        self._record(_e, args, state, control, kwargs)
    setattr(HFRecorder, _event, _hf_method)


class NamedRecorder:
    """The same recorder written with ``@tracklink.hookimpl``, naming only what each hook uses."""

    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []

    def _r(self, event: str, args: Any, state: Any, control: Any, model: Any, processing_class: Any,
           optimizer: Any, lr_scheduler: Any, eval_dataloader: Any, extra: Any = None) -> None:
        self.records.append((event, args, state.global_step, control, model, processing_class, optimizer,
                             lr_scheduler, eval_dataloader, extra))

    @hookimpl
    def on_init_end(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader):  # type: ignore[no-untyped-def]
        self._r("on_init_end", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader)

    @hookimpl
    def on_train_begin(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader):  # type: ignore[no-untyped-def]
        self._r("on_train_begin", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader)

    @hookimpl
    def on_epoch_begin(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader):  # type: ignore[no-untyped-def]
        self._r("on_epoch_begin", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader)

    @hookimpl
    def on_step_begin(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader):  # type: ignore[no-untyped-def]
        self._r("on_step_begin", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader)

    @hookimpl
    def on_substep_end(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader):  # type: ignore[no-untyped-def]
        self._r("on_substep_end", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader)

    @hookimpl
    def on_pre_optimizer_step(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader):  # type: ignore[no-untyped-def]
        self._r("on_pre_optimizer_step", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader)

    @hookimpl
    def on_optimizer_step(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader):  # type: ignore[no-untyped-def]
        self._r("on_optimizer_step", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader)

    @hookimpl
    def on_step_end(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader):  # type: ignore[no-untyped-def]
        self._r("on_step_end", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader)

    @hookimpl
    def on_epoch_end(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader):  # type: ignore[no-untyped-def]
        self._r("on_epoch_end", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader)

    @hookimpl
    def on_log(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader, logs):  # type: ignore[no-untyped-def]
        self._r("on_log", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader, logs)

    @hookimpl
    def on_evaluate(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader, metrics):  # type: ignore[no-untyped-def]
        self._r("on_evaluate", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader, metrics)

    @hookimpl
    def on_prediction_step(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader):  # type: ignore[no-untyped-def]
        self._r("on_prediction_step", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader)

    @hookimpl
    def on_predict(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader, metrics):  # type: ignore[no-untyped-def]
        self._r("on_predict", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader, metrics)

    @hookimpl
    def on_save(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader, checkpoint_dir):  # type: ignore[no-untyped-def]
        self._r("on_save", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader, checkpoint_dir)

    @hookimpl
    def on_train_end(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader):  # type: ignore[no-untyped-def]
        self._r("on_train_end", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader)

    @hookimpl
    def on_exception(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader, exception):  # type: ignore[no-untyped-def]
        self._r("on_exception", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader, exception)

    @hookimpl
    def on_push_begin(self, args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader):  # type: ignore[no-untyped-def]
        self._r("on_push_begin", args, state, control, model, processing_class, optimizer, lr_scheduler, eval_dataloader)


def drive_every_event(handler: CallbackHandler) -> tuple[Any, TrainerState]:
    """Fire each event at least once, with changing state and the event extras."""
    args, state, control = make_args(), TrainerState(max_steps=2), TrainerControl()
    error = RuntimeError("boom")
    handler.on_init_end(args, state, control)
    handler.train_dataloader = "train-dl"
    control = handler.on_train_begin(args, state, control)
    control = handler.on_epoch_begin(args, state, control)
    for step in (1, 2):
        control = handler.on_step_begin(args, state, control)
        control = handler.on_substep_end(args, state, control)
        control = handler.on_pre_optimizer_step(args, state, control)
        control = handler.on_optimizer_step(args, state, control)
        state.global_step = step
        control = handler.on_step_end(args, state, control)
        control = handler.on_log(args, state, control, logs={"loss": 1.0 / step})
    handler.eval_dataloader = "eval-dl"
    control = handler.on_prediction_step(args, state, control)
    control = handler.on_log(args, state, control, logs={"eval_loss": 0.5})
    control = handler.on_evaluate(args, state, control, metrics={"eval_loss": 0.5})
    control = handler.on_save(args, state, control, checkpoint_dir="out/checkpoint-2")
    control = handler.on_epoch_end(args, state, control)
    control = handler.on_predict(args, state, control, metrics={"test_loss": 0.25})
    control = handler.on_push_begin(args, state, control)
    control = handler.on_train_end(args, state, control)
    handler.on_exception(args, state, control, exception=error)
    return args, state


def test_both_plugin_styles_see_identical_events_and_arguments() -> None:
    hf_style, named = HFRecorder(), NamedRecorder()
    handler = CallbackHandler([DefaultFlowCallback, hf_style, named], model=MODEL, processing_class=PROC,
                              optimizer=OPT, lr_scheduler=SCHED)
    drive_every_event(handler)
    assert named.records == hf_style.records
    assert [r[0] for r in hf_style.records].count("on_step_end") == 2
    assert {r[0] for r in hf_style.records} == set(EVENTS)
    first = hf_style.records[0]
    assert first[4:8] == (MODEL, PROC, OPT, SCHED)
    # HF-style callbacks get every standard kwarg plus the event extra, as transformers passes them
    for event, names in hf_style.kwarg_names.items():
        assert names == STANDARD_KWARGS | ({EXTRA[event]} if event in EXTRA else set()), event


def test_hookimpl_plugin_can_be_a_module() -> None:
    seen = []
    module = types.ModuleType("my_plugin_module")

    @hookimpl
    def on_log(logs: Any, state: Any) -> None:
        seen.append((state.global_step, dict(logs)))

    module.on_log = on_log  # type: ignore[attr-defined]
    handler = handler_with(module)
    assert "my_plugin_module" in handler.callback_list
    fire(handler, "on_log", make_args(), TrainerState(global_step=4), TrainerControl(), logs={"loss": 2.0})
    assert seen == [(4, {"loss": 2.0})]


# -- only overridden methods are registered ----------------------------------------------------------


def _hooks_of(handler: CallbackHandler, plugin: object) -> set[str]:
    callers = handler._pm.get_hookcallers(plugin) or []
    return {caller.name for caller in callers}


def test_only_overridden_methods_are_registered() -> None:
    only_log, flow = OtherCallback(), DefaultFlowCallback()
    handler = CallbackHandler([flow, only_log, ProgressCallback()])
    assert _hooks_of(handler, only_log) == {"on_log"}
    assert _hooks_of(handler, flow) == {"on_step_end", "on_epoch_end"}
    plan = handler._get_plan()
    assert plan["on_substep_end"] == ()  # nobody implements it: nothing is called
    assert [step[3].plugin for step in plan["on_log"]][:1] == [only_log]


def test_inherited_overrides_and_instance_attributes_count() -> None:
    class Base(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            pass

    class Child(Base):
        pass

    child = Child()
    calls = []
    child.on_train_end = lambda args, state, control, **kw: calls.append(state.global_step)  # type: ignore[method-assign]
    handler = CallbackHandler([DefaultFlowCallback, child])
    assert _hooks_of(handler, child) == {"on_save", "on_train_end"}
    fire(handler, "on_train_end", make_args(), TrainerState(global_step=3), TrainerControl())
    assert calls == [3]


def test_base_callback_registers_nothing() -> None:
    base = TrainerCallback()
    handler = CallbackHandler([DefaultFlowCallback, base])
    assert _hooks_of(handler, base) == set()


# -- validation at registration -------------------------------------------------------------------


def test_misspelt_method_on_callback_subclass_is_rejected() -> None:
    class Typo(TrainerCallback):
        def on_stp_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            pass

    handler = handler_with()
    with pytest.raises(PluginRegistrationError) as info:
        handler.add_callback(Typo())
    message = str(info.value)
    assert "Typo" in message and "on_stp_end" in message and "on_step_end" in message
    assert isinstance(info.value, ValueError)
    assert handler.callback_list == "DefaultFlowCallback"  # nothing half-registered


def test_misspelt_hookimpl_on_object_is_rejected() -> None:
    class TypoHooks:
        @hookimpl
        def on_stepp_end(self, state: Any) -> None:
            pass

    with pytest.raises(PluginRegistrationError) as info:
        handler_with(TypoHooks())
    message = str(info.value)
    assert "TypoHooks" in message and "on_stepp_end" in message and "on_step_end" in message


def test_misspelt_hookimpl_in_module_is_rejected() -> None:
    module = types.ModuleType("typo_module")

    @hookimpl
    def on_evaluat(metrics: Any) -> None:
        pass

    module.on_evaluat = on_evaluat  # type: ignore[attr-defined]
    handler = handler_with()
    with pytest.raises(PluginRegistrationError) as info:
        handler.add_callback(module)
    message = str(info.value)
    assert "typo_module" in message and "on_evaluat" in message and "'on_evaluate'" in message
    # the manager is left clean: a later valid plugin registers fine
    handler.add_callback(Named())
    assert handler.callback_list == "DefaultFlowCallback\nNamed"


def test_unknown_argument_in_hookimpl_is_rejected() -> None:
    class WrongArg:
        @hookimpl
        def on_log(self, logz: Any) -> None:
            pass

    with pytest.raises(PluginRegistrationError, match="logz") as info:
        handler_with(WrongArg())
    assert "WrongArg" in str(info.value)


def test_hook_wrappers_are_rejected() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def on_log(self, logs: Any) -> Any:
            return (yield)

    with pytest.raises(PluginRegistrationError, match="wrapper"):
        handler_with(Wrapper())


def test_close_but_distinct_names_are_not_flagged() -> None:
    class Helpers(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            pass

        def on_step_end_helper(self) -> None:  # a helper, not a typo
            pass

    handler_with(Helpers())


# -- an unmodified transformers callback ---------------------------------------------------------------


@pytest.mark.interop
def test_unmodified_transformers_callback_registers_and_receives_events() -> None:
    transformers = pytest.importorskip("transformers")

    class HFCallback(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.logs: list[tuple[int, dict[str, Any], Any]] = []
            self.steps: list[tuple[int, Any, Any]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            self.logs.append((state.global_step, dict(logs), kwargs["processing_class"]))

        def on_step_end(self, args, state, control, model=None, tokenizer=None, processing_class=None,  # type: ignore[no-untyped-def]
                        **kwargs):
            self.steps.append((state.global_step, tokenizer, processing_class))
            if state.global_step == 2:
                control.should_save = True
            return control

    callback = HFCallback()
    handler = CallbackHandler([DefaultFlowCallback, callback], model=MODEL, processing_class=PROC)
    assert _hooks_of(handler, callback) == {"on_log", "on_step_end"}
    args, state = make_args(), TrainerState(max_steps=10)
    control = TrainerControl()
    for step in (1, 2):
        control = handler.on_step_begin(args, state, control)
        state.global_step = step
        control = handler.on_step_end(args, state, control)
    control = handler.on_log(args, state, control, logs={"loss": 0.5})
    handler.on_train_end(args, state, control)
    assert callback.steps == [(1, PROC, PROC), (2, PROC, PROC)]
    assert control.should_save is True
    assert callback.logs == [(2, {"loss": 0.5}, PROC)]


@pytest.mark.interop
def test_transformers_control_returned_by_a_callback_is_accepted() -> None:
    hf = pytest.importorskip("transformers.trainer_callback")
    theirs = hf.TrainerControl(should_training_stop=True)

    class Stopper(hf.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            return theirs

    handler = CallbackHandler([DefaultFlowCallback, Stopper()])
    result = fire(handler, "on_step_end", make_args(), TrainerState(global_step=1, max_steps=9), TrainerControl())
    assert result is theirs and result.should_training_stop


# -- on_exception -----------------------------------------------------------------------------------


def test_on_exception_reaches_every_plugin_even_if_one_raises(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, Any]] = []

    class Watcher(TrainerCallback):
        def __init__(self, label: str, fail: bool = False) -> None:
            self.label, self.fail = label, fail

        def on_exception(self, args: Any, state: Any, control: Any, exception: Any = None, **kwargs: Any) -> None:
            seen.append((self.label, exception))
            if self.fail:
                raise RuntimeError(f"{self.label} cannot clean up")

    class HookWatcher:
        @hookimpl
        def on_exception(self, exception: Any) -> None:
            seen.append(("hooks", exception))
            raise ValueError("hook plugin failed too")

    tracker_seen = []

    class TrackerWatcher(TrainerCallback):
        def on_exception(self, args: Any, state: Any, control: Any, exception: Any = None, **kwargs: Any) -> None:
            tracker_seen.append(exception)
            raise RuntimeError("tracker failed")

    handler = handler_with(Watcher("a", fail=True), HookWatcher(), Watcher("b"))
    handler.add_tracker(TrackerWatcher(), "watcher")
    error = KeyboardInterrupt()
    with caplog.at_level(logging.ERROR, logger="tracklink"):
        handler.on_exception(make_args(), TrainerState(), TrainerControl(), exception=error)
    assert seen == [("a", error), ("hooks", error), ("b", error)]
    assert tracker_seen == [error]
    text = caplog.text
    assert "a cannot clean up" in text and "hook plugin failed too" in text


# -- built-in callbacks ----------------------------------------------------------------------------


class LogsSpy(TrainerCallback):
    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        self.logs.append(dict(logs))


def test_printer_callback_does_not_mutate_shared_logs(capsys: pytest.CaptureFixture[str]) -> None:
    spy = LogsSpy()
    handler = handler_with(PrinterCallback, spy)
    logs = {"train_runtime": 1.23456789, "total_flos": 12345.0, "train_loss": 0.5, "epoch": 3.0}
    original = dict(logs)
    fire(handler, "on_log", make_args(), TrainerState(global_step=24), TrainerControl(), logs=logs)
    assert logs == original
    assert spy.logs == [original]  # the later callback still sees total_flos
    printed = capsys.readouterr().out
    assert "total_flos" not in printed and "train_runtime" in printed and "1.235" in printed


def test_printer_callback_prints_only_on_local_main(capsys: pytest.CaptureFixture[str]) -> None:
    handler = handler_with(PrinterCallback)
    fire(handler, "on_log", make_args(), TrainerState(is_local_process_zero=False), TrainerControl(),
         logs={"loss": 1.0})
    assert capsys.readouterr().out == ""


def test_progress_callback_is_resume_aware(capsys: pytest.CaptureFixture[str]) -> None:
    progress = ProgressCallback()
    handler = handler_with(progress)
    args, control = make_args(), TrainerControl()
    state = TrainerState(global_step=8, max_steps=16)  # resumed from checkpoint-8
    handler.on_train_begin(args, state, control)
    bar = progress.training_bar
    assert bar is not None and bar.total == 16 and bar.n == 8
    state.global_step = 9
    handler.on_step_end(args, state, control)
    assert bar.n == 9
    logs = {"loss": 0.123456, "total_flos": 1.0, "note": "x" * 150}
    handler.on_log(args, state, control, logs=dict(logs))
    state.global_step = 16
    handler.on_step_end(args, state, control)
    assert bar.n == 16
    handler.on_train_end(args, state, control)
    assert progress.training_bar is None
    err = capsys.readouterr()
    written = err.out + err.err
    assert "0.1235" in written and "total_flos" not in written and "String too long" in written


def test_progress_callback_prediction_bar_and_ranks(capsys: pytest.CaptureFixture[str]) -> None:
    progress = ProgressCallback()
    handler = handler_with(progress)
    handler.eval_dataloader = [0, 1, 2]
    args, control = make_args(), TrainerControl()
    state = TrainerState(max_steps=4)
    for _ in range(3):
        handler.on_prediction_step(args, state, control)
    assert progress.prediction_bar is not None and progress.prediction_bar.n == 3
    assert progress.prediction_bar.total == 3
    handler.on_evaluate(args, state, control, metrics={})
    assert progress.prediction_bar is None
    # a length-less eval dataloader opens no bar
    handler.eval_dataloader = iter([1, 2])
    handler.on_prediction_step(args, state, control)
    assert progress.prediction_bar is None
    # other ranks open no bar at all
    quiet = ProgressCallback()
    other = handler_with(quiet)
    rank1 = TrainerState(max_steps=4, is_world_process_zero=False, is_local_process_zero=False)
    other.on_train_begin(args, rank1, control)
    rank1.global_step = 1
    other.on_step_end(args, rank1, control)
    assert quiet.training_bar is None


# -- EarlyStoppingCallback (reference 3.4, v5 rules) -----------------------------------------------


def es_args(**overrides: Any) -> types.SimpleNamespace:
    values = dict(metric_for_best_model="loss", greater_is_better=False, eval_strategy="steps",
                  load_best_model_at_end=True)
    values.update(overrides)
    return make_args(**values)


def run_evaluations(callback: EarlyStoppingCallback, args: Any, values: list[Any], key: str = "eval_loss",
                    ) -> list[tuple[int, bool]]:
    """Evaluate with ``values`` in turn; the trainer updates best_metric after each (v5), after on_evaluate."""
    handler = handler_with(callback)
    state, control = TrainerState(max_steps=100), TrainerControl()
    handler.on_train_begin(args, state, control)
    out = []
    better = (lambda a, b: a > b) if args.greater_is_better else (lambda a, b: a < b)
    for step, value in enumerate(values, start=1):
        state.global_step = step
        control = handler.on_evaluate(args, state, control, metrics={key: value, "epoch": 1.0})
        out.append((callback.early_stopping_patience_counter, control.should_training_stop))
        if value is not None and (state.best_metric is None or better(value, state.best_metric)):
            state.best_metric = value
    return out


def test_early_stopping_patience() -> None:
    callback = EarlyStoppingCallback(early_stopping_patience=2)
    history = run_evaluations(callback, es_args(), [1.0, 0.9, 0.95, 0.92])
    assert history == [(0, False), (0, False), (1, False), (2, True)]


def test_early_stopping_observed_example() -> None:
    # reference 3.4: patience 1 with eval losses 6.87 -> 0.569 -> 2.538 stops at the third evaluation
    callback = EarlyStoppingCallback()
    assert run_evaluations(callback, es_args(), [6.87, 0.569, 2.538]) == [(0, False), (0, False), (1, True)]


def test_early_stopping_improvement_resets_counter() -> None:
    callback = EarlyStoppingCallback(early_stopping_patience=3)
    history = run_evaluations(callback, es_args(), [1.0, 1.1, 1.2, 0.5, 0.6])
    assert [c for c, _ in history] == [0, 1, 2, 0, 1]
    assert not any(stop for _, stop in history)


def test_early_stopping_threshold() -> None:
    callback = EarlyStoppingCallback(early_stopping_patience=3, early_stopping_threshold=0.1)
    # 0.95 is better than 1.0 but not by more than 0.1: no improvement (the trainer still records 0.95 as the
    # best, v5); 0.80 improves on 0.95 by 0.15; 0.79 only by 0.01
    history = run_evaluations(callback, es_args(), [1.0, 0.95, 0.80, 0.79])
    assert [c for c, _ in history] == [0, 1, 0, 1]
    # exactly the threshold is not enough (strictly greater is required)
    exact = EarlyStoppingCallback(early_stopping_patience=5, early_stopping_threshold=0.5)
    assert [c for c, _ in run_evaluations(exact, es_args(), [2.0, 1.5])] == [0, 1]


def test_early_stopping_greater_is_better() -> None:
    callback = EarlyStoppingCallback(early_stopping_patience=1)
    args = es_args(metric_for_best_model="eval_accuracy", greater_is_better=True)
    history = run_evaluations(callback, args, [0.5, 0.7, 0.6], key="eval_accuracy")
    assert history == [(0, False), (0, False), (1, True)]


def test_early_stopping_equal_value_counts_as_no_improvement() -> None:
    callback = EarlyStoppingCallback(early_stopping_patience=2)
    assert [c for c, _ in run_evaluations(callback, es_args(), [1.0, 1.0, 1.0])] == [0, 1, 2]


def test_early_stopping_missing_metric_warns_and_keeps_counter(caplog: pytest.LogCaptureFixture) -> None:
    callback = EarlyStoppingCallback(early_stopping_patience=3)
    handler = handler_with(callback)
    args, state, control = es_args(metric_for_best_model="accuracy"), TrainerState(best_metric=0.5), TrainerControl()
    callback.early_stopping_patience_counter = 2
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        control = handler.on_evaluate(args, state, control, metrics={"eval_loss": 1.0})
        control = handler.on_evaluate(args, state, control, metrics={"eval_loss": 1.0})
    warnings = [r.getMessage() for r in caplog.records if "eval_accuracy" in r.getMessage()]
    assert len(warnings) == 2 and "early stopping" in warnings[0]
    assert callback.early_stopping_patience_counter == 2
    assert not control.should_training_stop


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"metric_for_best_model": None}, "metric_for_best_model"),
        ({"eval_strategy": "no"}, "eval_strategy"),
    ],
)
def test_early_stopping_configuration_errors_are_value_errors(overrides: dict[str, Any], pattern: str) -> None:
    handler = handler_with(EarlyStoppingCallback())
    with pytest.raises(ValueError, match=pattern):
        handler.on_train_begin(es_args(**overrides), TrainerState(), TrainerControl())


def test_early_stopping_without_load_best_model_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    handler = handler_with(EarlyStoppingCallback())
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        handler.on_train_begin(es_args(load_best_model_at_end=False), TrainerState(), TrainerControl())
    assert "load_best_model_at_end" in caplog.text


@pytest.mark.parametrize("patience", [0, -1, 1.5, True, "3", None])
def test_early_stopping_bad_patience(patience: Any) -> None:
    with pytest.raises(ValueError, match="early_stopping_patience") as info:
        EarlyStoppingCallback(early_stopping_patience=patience)
    assert repr(patience) in str(info.value)


@pytest.mark.parametrize("threshold", [-0.1, "0.1", True, float("nan")])
def test_early_stopping_bad_threshold(threshold: Any) -> None:
    with pytest.raises(ValueError, match="early_stopping_threshold"):
        EarlyStoppingCallback(early_stopping_threshold=threshold)


def test_early_stopping_none_threshold_means_zero_and_state_round_trips() -> None:
    callback = EarlyStoppingCallback(early_stopping_patience=5, early_stopping_threshold=None)
    assert callback.early_stopping_threshold == 0.0
    callback = EarlyStoppingCallback(early_stopping_patience=5, early_stopping_threshold=0.2)
    callback.early_stopping_patience_counter = 4
    exported = callback.state()
    rebuilt = EarlyStoppingCallback(**exported["args"])
    for name, value in exported["attributes"].items():
        setattr(rebuilt, name, value)
    assert rebuilt.state() == exported
    assert isinstance(callback, tracklink.ExportableState)



@pytest.mark.parametrize(("name", "event"), [("on_train_start", "on_train_begin"), ("on_epoch_start", "on_epoch_begin"),
                                            ("on_step_start", "on_step_begin"), ("on_validation_end", "on_evaluate")])
def test_event_names_of_other_frameworks_are_rejected(name: str, event: str) -> None:
    cls = type("Habit", (tracklink.TrainerCallback,), {name: lambda self, *a, **k: None})
    with pytest.raises(tracklink.PluginRegistrationError, match=f"did you mean '{event}'"):
        tracklink.CallbackHandler([tracklink.DefaultFlowCallback, cls()])
