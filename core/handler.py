"""The hub: ``CallbackHandler`` registers plugins and dispatches training events to them.

It keeps transformers' ``CallbackHandler`` surface (constructor, ``add_callback``, ``pop_callback``,
``remove_callback``, ``callback_list``, ``on_<event>(args, state, control, **kwargs)``) on top of a
pluggy ``PluginManager``, and adds:

* both plugin styles: ``TrainerCallback`` subclasses (only overridden methods are registered) and
  objects or modules with ``@tracklink.hookimpl`` functions naming just the arguments they need;
* dispatch in registration order (pluggy's ``tryfirst``/``trylast`` move an implementation to the front
  or back), with a precomputed plan per event so an event no plugin implements costs one lookup;
* misspelt hook names rejected at registration, naming the plugin;
* tracker plugins (``add_tracker``): rank-gated, snapshotted, delivered on their own worker thread and
  isolated from training (see :mod:`tracklink.delivery`);
* ``on_exception``, delivered to every plugin even when one of them fails.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .callback import TrainerCallback
from .delivery import HF_STYLE, NAMED_STYLE, Call, DeliverySettings, TrackerChannel, hf_kwargs, snapshot
from .errors import PluginRegistrationError, TrackerError
from .events import EVENTS, EXTRAS, RESETS, STANDARD_ARGS
from .flow import DefaultFlowCallback
from .followers import followers_of, start_followers, stop_followers, wait_followers
from .journal import JOURNALED, Journal, JournalSettings, journal_event_data, latest_journal, register_journal
from .process import RANK_POLICIES, ProcessInfo
from .state import HUB_STATE_KEY, TrainerControl, saved_attributes, state_key
from .tracker import Tracker

logger = logging.getLogger("tracklink")

__all__ = ["CallbackHandler", "PluginRegistrationError"]

_EVENT_SET = frozenset(EVENTS)
# attributes passed to transformers-style callbacks as keyword arguments
_KWARG_SOURCES = frozenset(
    {"model", "processing_class", "optimizer", "lr_scheduler", "train_dataloader", "eval_dataloader"}
)
_CONTROL_FLAGS = ("should_training_stop", "should_epoch_stop", "should_save", "should_evaluate", "should_log")
_DEFAULT_IMPL_OPTS = {
    "wrapper": False,
    "hookwrapper": False,
    "optionalhook": False,
    "tryfirst": False,
    "trylast": False,
    "specname": None,
}


def _is_noop_base(cls: type) -> bool:
    """The base callback classes whose event methods are no-ops (ours and transformers')."""
    return cls is TrainerCallback or (
        cls.__name__ == "TrainerCallback" and cls.__module__ == "transformers.trainer_callback"
    )


def _overrides(plugin: object, name: str) -> bool:
    """Whether ``plugin`` really implements event ``name`` as a transformers-style method."""
    if isinstance(plugin, types.ModuleType):
        return False
    if name in getattr(plugin, "__dict__", {}):
        return callable(plugin.__dict__[name])
    for cls in type(plugin).__mro__:
        if name in cls.__dict__:
            return callable(cls.__dict__[name]) and not _is_noop_base(cls)
    return False


class _Manager(pluggy.PluginManager):
    """A pluggy manager that also accepts transformers-style callbacks: an unmarked method named like
    an event is an implementation when the plugin's class overrides the no-op base method."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name in _EVENT_SET and _overrides(plugin, name):
            return dict(_DEFAULT_IMPL_OPTS)
        return opts

    def _verify_hook(self, hook: Any, hookimpl: Any) -> None:
        # transformers calls callback methods positionally (args, state, control) plus keywords, so their
        # parameter names are free; a @hookimpl function is called by argument name instead
        if hookimpl.function is not None and hook.name in _EVENT_SET:
            if hasattr(hookimpl.function, f"{hookspecs.PROJECT}_impl"):
                _check_named_impl(hookimpl, hook.name)
            else:
                _check_hf_method(hookimpl, hook.name)
                return
        super()._verify_hook(hook, hookimpl)


def _accepted_args(event: str) -> tuple[str, ...]:
    return STANDARD_ARGS + EXTRAS.get(event, ())


def _check_named_impl(hookimpl: Any, event: str) -> None:
    unknown = [name for name in hookimpl.argnames if name not in _accepted_args(event)]
    if unknown:
        raise PluginRegistrationError(
            f"plugin {_label(hookimpl.plugin)}: @hookimpl {event}({', '.join(hookimpl.argnames)}) names "
            f"{', '.join(map(repr, unknown))}, which {event} does not provide; accepted arguments: "
            f"{', '.join(_accepted_args(event))} (name only the ones you need)"
        )


def _check_hf_method(hookimpl: Any, event: str) -> None:
    """A transformers-style method must accept what transformers passes: three positional arguments
    (args, state, control, whatever their names) and the event's keyword arguments."""
    import inspect  # lazy: only when a transformers-style callback is registered (stdlib, slow to import)

    try:
        signature = inspect.signature(hookimpl.function)
    except (TypeError, ValueError):
        return
    keywords = {name: None for name in _accepted_args(event)[3:]}
    try:
        signature.bind(None, None, None, **keywords)
    except TypeError as exc:
        raise PluginRegistrationError(
            f"plugin {_label(hookimpl.plugin)}: {event}{signature} cannot be called as transformers calls "
            f"callbacks ({exc}); write it as `def {event}(self, args, state, control, **kwargs)` (the first "
            "three are passed by position, the rest by keyword: "
            f"{', '.join(keywords)})"
        ) from None


def _label(plugin: object) -> str:
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    return type(plugin).__name__


#: Event names of other frameworks (Lightning, Keras, Composer) that users carry over by habit.
_FOREIGN_NAMES = {
    "on_train_start": "on_train_begin", "on_fit_start": "on_train_begin", "on_fit_end": "on_train_end",
    "on_epoch_start": "on_epoch_begin", "on_train_epoch_start": "on_epoch_begin",
    "on_train_epoch_end": "on_epoch_end", "on_step_start": "on_step_begin",
    "on_train_batch_start": "on_step_begin", "on_train_batch_end": "on_step_end",
    "on_batch_begin": "on_step_begin", "on_batch_end": "on_step_end", "on_batch_start": "on_step_begin",
    "on_validation_end": "on_evaluate", "on_validation_epoch_end": "on_evaluate",
    "on_save_checkpoint": "on_save", "on_exception_raised": "on_exception",
}


def _misspelt_methods(plugin: object) -> list[tuple[str, str]]:
    """Unmarked ``on_*`` methods of a transformers-style plugin that look like a misspelt event or an
    event name of another framework."""
    import difflib  # lazy: stdlib, slow to import; ``import tracklink`` stays cheap

    if isinstance(plugin, types.ModuleType):
        return []
    found = []
    for name in dir(type(plugin)):
        if not name.startswith("on_") or name in _EVENT_SET:
            continue
        close = [_FOREIGN_NAMES[name]] if name in _FOREIGN_NAMES else \
            difflib.get_close_matches(name, EVENTS, n=1, cutoff=0.85)
        if close:
            found.append((name, close[0]))
    return found


@dataclass(eq=False)
class _Entry:
    plugin: object
    name: str
    tracker: str | None = None  # the tracker's report_to name when this is a tracker plugin
    channel: TrackerChannel | None = None
    calls: dict[str, list[Call]] = field(default_factory=dict)
    notify: Any = None  # the tracker's _tracklink_submitted hook, if any
    holds_checkpoint: Any = None  # the tracker's _tracklink_holds_checkpoint, if any


class CallbackHandler:
    """Registers callbacks, trackers and hookimpl plugins, and fires training events at them.

    Args mirror transformers: ``callbacks`` (classes are instantiated without arguments), ``model``,
    ``processing_class``, ``optimizer``, ``lr_scheduler``. ``process`` says which rank this is (read from
    the ``torchrun`` environment by default) for tracker rank gating; ``settings`` configures tracker
    delivery (``TRACKLINK_*`` environment variables by default); ``require_flow=False`` silences the
    warning about a missing ``DefaultFlowCallback`` (for hubs fed by another trainer's loop).
    """

    _kwargs: dict[str, Any] | None = None

    def __init__(
        self,
        callbacks: Iterable[Any] | None = None,
        model: Any = None,
        processing_class: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        *,
        process: ProcessInfo | None = None,
        settings: DeliverySettings | None = None,
        require_flow: bool = True,
    ) -> None:
        self._pm = _Manager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._entries: list[_Entry] = []
        self._plan: dict[str, tuple[tuple[str, Any, tuple[str, ...], _Entry], ...]] | None = None
        self._counter = 0
        self._fatal: TrackerError | None = None
        self.model = model
        self.processing_class = processing_class
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.train_dataloader: Any = None
        self.eval_dataloader: Any = None
        self.process = process or ProcessInfo.from_env()
        self.settings = settings or DeliverySettings.from_env()
        self.journal_settings = JournalSettings.from_env()
        #: the run journal of the current training session (opened at ``on_train_begin``), or None
        self.journal: Journal | None = None
        #: trackers recorded to the journal only (``TRACKLINK_OFFLINE``): name -> rank policy
        self.offline: dict[str, str] = {}
        #: trackers delivered from processes of their own (``TRACKLINK_DELIVERY=process``): name -> rank policy
        self.followed: dict[str, str] = {}
        #: the key under which each followed tracker's state goes into checkpoints (its ``state_key``)
        self.follower_keys: dict[str, str] = {}
        #: the followed trackers that have a run identity (their class defines ``run_identity``)
        self.identifying: set[str] = set()
        self._follower_resume: dict[str, dict[str, Any]] = {}
        self._follower_identities: dict[str, dict[str, Any]] = {}
        self._journal_dir: str | None = None
        for callback in callbacks or ():
            self.add_callback(callback)
        if require_flow and not any(isinstance(e.plugin, DefaultFlowCallback) for e in self._entries):
            logger.warning(
                "The Trainer will not work properly if you don't have a DefaultFlowCallback in its "
                "callbacks. You should add one before training with `trainer.add_callback("
                "DefaultFlowCallback)`. The current list of callbacks is:\n%s",
                self.callback_list,
            )

    # -- transformers' registration API ---------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """Alias of ``processing_class`` (transformers 4.x name)."""
        return self.processing_class

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self.processing_class = value

    @property
    def callbacks(self) -> tuple[Any, ...]:
        """Registered plugins, in dispatch order."""
        return tuple(entry.plugin for entry in self._entries)

    @property
    def callback_list(self) -> str:
        """Class names of the registered plugins, one per line (as in transformers' warnings)."""
        return "\n".join(_label(entry.plugin) for entry in self._entries)

    def add_callback(self, callback: Any) -> None:
        """Register a callback: a class (instantiated without arguments), an instance, or a module or
        object with ``@tracklink.hookimpl`` functions. ``Tracker`` instances are registered as trackers.
        """
        plugin = _instantiate(callback) if isinstance(callback, type) else callback
        if plugin is None or isinstance(plugin, (str, bytes, int, float, bool, list, tuple, dict)):
            hint = (f"; to report to the tracker {plugin!r}, use report_to=[{plugin!r}]"
                    if isinstance(plugin, str) else "")
            raise PluginRegistrationError(
                f"callbacks contains {plugin!r} ({type(plugin).__name__}), which is not a callback: pass "
                f"TrainerCallback classes or instances, Tracker instances, or objects/modules with "
                f"@tracklink.hookimpl functions{hint}"
            )
        if isinstance(plugin, Tracker):
            self.add_tracker(plugin)
            return
        self._warn_duplicate(plugin)
        self._register(_Entry(plugin, self._unique_name(plugin)))

    def add_tracker(
        self,
        plugin: Any,
        name: str | None = None,
        *,
        rank_policy: str | None = None,
        inline: bool | None = None,
    ) -> bool:
        """Register a tracker plugin; returns ``False`` when its rank policy excludes this process.

        Trackers run isolated from training: their hooks get snapshots, run on a worker thread (unless
        ``inline``), cannot steer the loop, and their failures are contained. A tracker already
        registered under the same name is replaced.
        """
        plugin = plugin() if isinstance(plugin, type) else plugin
        name = name or getattr(plugin, "name", None) or _label(plugin)
        policy = rank_policy or getattr(plugin, "rank_policy", "main")
        if policy not in RANK_POLICIES:
            raise PluginRegistrationError(
                f"tracker {name!r} declares rank_policy={policy!r}; accepted: {', '.join(RANK_POLICIES)}"
            )
        if not self.process.allows(policy):
            return False
        for entry in list(self._entries):
            if entry.tracker == name:
                logger.info("tracklink: tracker %r replaced by %s", name, _label(plugin))
                self._unregister(entry)
        entry = _Entry(plugin, self._unique_name(plugin), tracker=name,
                       notify=getattr(plugin, "_tracklink_submitted", None),
                       holds_checkpoint=getattr(plugin, "_tracklink_holds_checkpoint", None))
        run_inline = getattr(plugin, "inline", False) if inline is None else inline
        on_disable = getattr(plugin, "_tracklink_on_disabled", None)
        entry.channel = TrackerChannel(
            name, plugin, entry.calls, inline=bool(run_inline), settings=self.settings,
            on_fatal=self._set_fatal, on_disable=on_disable, batch=getattr(plugin, "_tracklink_batch", None),
        )
        self._register(entry)
        return True

    def pop_callback(self, callback: Any) -> Any:
        """Remove and return the first plugin matching ``callback`` (a class matches instances and
        subclasses, an instance matches itself, a string matches a tracker name); ``None`` if absent."""
        entry = self._find(callback)
        if entry is None:
            return None
        self._unregister(entry)
        return entry.plugin

    def replace_callback(self, old: Any, new: Any) -> None:
        """Put ``new`` where ``old`` is in the dispatch order (used when callback states are restored
        from a checkpoint, so restored callbacks keep their position)."""
        entry = self._find(old)
        if entry is None:
            raise ValueError(f"{_label(old)} is not registered")
        if entry.tracker is not None:
            raise ValueError(f"{_label(old)} is a tracker; use add_tracker, which replaces trackers by name")
        index = self._entries.index(entry)
        self._unregister(entry)
        self._register(_Entry(new, self._unique_name(new)), index=index)

    def remove_callback(self, callback: Any) -> None:
        """Remove the first plugin matching ``callback``; nothing happens when none matches."""
        entry = self._find(callback)
        if entry is not None:
            self._unregister(entry)

    # -- tracker bookkeeping ----------------------------------------------------------------------

    @property
    def trackers(self) -> dict[str, Any]:
        """Active tracker plugins by report_to name, in dispatch order."""
        return {e.tracker: e.plugin for e in self._entries if e.tracker is not None}

    def wait_for_trackers(self, timeout: float | None = None) -> bool:
        """Block until every tracker processed the events submitted so far."""
        if self.journal is not None:
            self.journal.request_commit()
        ok = True
        for entry in self._entries:
            if entry.channel is not None:
                ok = entry.channel.barrier(self.settings.drain_timeout if timeout is None else timeout) and ok
        self._raise_fatal()
        return ok

    def tracker_failures(self) -> dict[str, str]:
        """One summary line per tracker that failed, by tracker name."""
        out = {}
        for entry in self._entries:
            if entry.channel is not None and entry.tracker is not None:
                line = entry.channel.summary()
                if line:
                    out[entry.tracker] = line
        return out

    def final_metrics(self) -> dict[str, Any]:
        """Metrics trackers contribute to the final training summary (e.g. CodeCarbon's emissions).

        Each tracker with a ``final_metrics()`` method is first drained, then asked on this thread;
        a failure counts as a tracker error. The trainer merges the result into the summary log that
        every tracker then receives.
        """
        merged: dict[str, Any] = {}
        for entry in self._entries:
            provider = getattr(entry.plugin, "final_metrics", None)
            if entry.channel is None or entry.channel.disabled or not callable(provider):
                continue
            if getattr(type(entry.plugin), "final_metrics", None) is Tracker.final_metrics:
                continue
            entry.channel.barrier(self.settings.drain_timeout)
            try:
                merged.update(provider() or {})
            except Exception as exc:
                entry.channel._failed("final_metrics", exc)
        self._raise_fatal()
        return merged

    def checkpoint_in_use(self, path: str) -> bool:
        """Whether a tracker has not yet handled the ``on_save`` of checkpoint ``path`` (it uploads it,
        or still has to record its run identity in it): rotation then keeps the directory for now."""
        return any(e.channel is not None and not e.channel.disabled and e.channel.holds(str(path))
                   for e in self._entries)

    def trackers_uploading(self) -> bool:
        """Whether some active tracker uploads checkpoints in ``on_save`` (the trainer then waits for
        the tracker queues before checkpoint rotation deletes a directory)."""
        self._get_plan()
        for entry in self._entries:
            if entry.channel is None or entry.channel.disabled or not entry.calls.get("on_save"):
                continue
            if getattr(entry.plugin, "uploads_checkpoints", True):
                return True
        return False

    # -- events (transformers' handler methods) ---------------------------------------------------

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Let trackers validate the arguments (``check_args``, on this thread: a refusal propagates),
        then fire ``on_init_end``."""
        for entry in self._entries:
            check = getattr(entry.plugin, "check_args", None) if entry.channel is not None else None
            if callable(check):
                check(args)
        return self.call_event("on_init_end", args, state, control, **kwargs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Fire ``on_train_end``, wait for every tracker queue, then report tracker failures."""
        control = self.call_event("on_train_end", args, state, control, **kwargs)
        self._finish(state)
        return control

    def on_exception(self, args: Any, state: Any, control: Any, exception: BaseException | None = None,
                     **kwargs: Any) -> Any:
        """Fire ``on_exception`` at every plugin (a failing plugin does not stop the others), drain
        the tracker queues and report tracker failures. Never raises."""
        plan = self._get_plan().get("on_exception", ())
        namespace = self._namespace(args, state, control, {"exception": exception, **kwargs})
        snap = None
        seq = None
        if self._journaling:
            try:
                snap = snapshot(namespace)
                seq = self._record("on_exception", snap)
            except Exception as exc:
                logger.error("tracklink: recording on_exception in the journal failed: %r", exc)
        for style, function, argnames, entry in plan:
            try:
                if entry.channel is not None:
                    snap = snap or snapshot(namespace)
                    entry.channel.submit("on_exception", snap, None, seq)
                elif style == HF_STYLE:
                    function(args, state, control, **hf_kwargs(namespace))
                else:
                    function(*[namespace[n] for n in argnames])
            except Exception as exc:
                logger.error("tracklink: %s failed in on_exception: %r", entry.name, exc)
        self._finish(state, raise_fatal=False)
        return control

    def call_event(self, event: str, args: Any, state: Any, control: Any, **extras: Any) -> Any:
        """Reset the flags transformers resets for ``event``, then call every implementation in
        order. A returned ``TrainerControl`` replaces ``control``; the final control is returned."""
        if self._fatal is not None:
            self._raise_fatal()
        for flag in RESETS.get(event, ()):
            setattr(control, flag, False)
        plan = (self._plan or self._get_plan())[event]
        seq = None
        snap = None
        if event in JOURNALED and self._journaling:
            kwargs = self._kwargs or self._build_kwargs()
            snap = snapshot({"args": args, "state": state, "control": control, **kwargs, **extras})
            seq = self._record(event, snap)
        if not plan:
            return control
        # the keyword arguments of transformers-style calls (a callee's **kwargs is a fresh dict, so
        # sharing this one between calls and events is safe); rebuilt when an object in it is replaced
        kwargs = self._kwargs or self._build_kwargs()
        if extras:
            kwargs = {**kwargs, **extras}
        namespace = None
        for style, function, argnames, entry in plan:
            if entry.channel is not None:
                if snap is None:
                    snap = snapshot({"args": args, "state": state, "control": control, **kwargs})
                if entry.notify is not None:
                    entry.notify(event)
                hold = None
                if event == "on_save" and extras.get("checkpoint_dir") and (
                    entry.holds_checkpoint is None or entry.holds_checkpoint()
                ):
                    hold = str(extras["checkpoint_dir"])
                entry.channel.submit(event, snap, hold, seq)
                continue
            if style == HF_STYLE:
                result = function(args, state, control, **kwargs)
            else:
                if namespace is None:
                    namespace = {"args": args, "state": state, **kwargs}
                namespace["control"] = control
                result = function(*[namespace[n] for n in argnames])
            if result is not None and result is not control:
                control = _accept_control(result, entry, event)
        return control

    # -- internals ----------------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _KWARG_SOURCES:
            object.__setattr__(self, "_kwargs", None)

    def _build_kwargs(self) -> dict[str, Any]:
        self._kwargs = {
            "model": self.model,
            "processing_class": self.processing_class,
            "tokenizer": self.processing_class,
            "optimizer": self.optimizer,
            "lr_scheduler": self.lr_scheduler,
            "train_dataloader": self.train_dataloader,
            "eval_dataloader": self.eval_dataloader,
        }
        return self._kwargs

    def _namespace(self, args: Any, state: Any, control: Any, extras: dict[str, Any]) -> dict[str, Any]:
        kwargs = self._kwargs or self._build_kwargs()
        return {"args": args, "state": state, "control": control, **kwargs, **extras}

    def _set_fatal(self, error: TrackerError) -> None:
        if self._fatal is None:
            self._fatal = error

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            error, self._fatal = self._fatal, None
            raise error from error.error

    def _finish(self, state: Any, raise_fatal: bool = True) -> None:
        if self.journal is not None:
            self.journal.request_commit()
        for entry in self._entries:
            if entry.channel is not None:
                entry.channel.finish(self.settings.drain_timeout)
        self._report_journal()
        failures = self.tracker_failures()
        for line in failures.values():
            logger.warning("tracklink: %s", line)
        if failures and state is not None and isinstance(getattr(state, "stateful_callbacks", None), dict):
            state.stateful_callbacks[HUB_STATE_KEY] = {
                "args": {}, "attributes": {"tracker_failures": failures},
            }
        if raise_fatal:
            self._raise_fatal()
        else:
            self._fatal = None

    def _unique_name(self, plugin: object) -> str:
        self._counter += 1
        return f"{_label(plugin)}#{self._counter}"

    def _warn_duplicate(self, plugin: object) -> None:
        if isinstance(plugin, types.ModuleType):
            return
        if any(type(entry.plugin) is type(plugin) for entry in self._entries):
            logger.warning(
                "You are adding a %s to the callbacks of this Trainer, but there is already one. The "
                "current list of callbacks is:\n%s", type(plugin).__name__, self.callback_list,
            )

    def _register(self, entry: _Entry, index: int | None = None) -> None:
        plugin = entry.plugin
        if any(existing.plugin is plugin for existing in self._entries):
            logger.warning("tracklink: %s is already registered; ignoring the second registration", entry.name)
            return
        misspelt = _misspelt_methods(plugin)
        if misspelt:
            wrong, right = misspelt[0]
            raise PluginRegistrationError(
                f"plugin {_label(plugin)} defines {wrong!r}, which is not an event; did you mean "
                f"{right!r}? Events: {', '.join(EVENTS)}"
            )
        try:
            self._pm.register(plugin, entry.name)
            self._pm.check_pending()
        except PluginRegistrationError:
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            raise
        except pluggy.PluginValidationError as exc:
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            raise PluginRegistrationError(_explain(plugin, exc)) from None
        for event in EVENTS:
            for impl in getattr(self._pm.hook, event).get_hookimpls():
                if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper):
                    self._pm.unregister(plugin)
                    raise PluginRegistrationError(
                        f"plugin {_label(plugin)}: {event} is a hook wrapper; tracklink calls each "
                        "implementation itself, so wrappers are not supported"
                    )
        if index is None:
            self._entries.append(entry)
        else:
            self._entries.insert(index, entry)
        self._plan = None

    def _unregister(self, entry: _Entry) -> None:
        self._entries.remove(entry)
        if self._pm.is_registered(entry.plugin):
            self._pm.unregister(entry.plugin)
        if entry.channel is not None:
            entry.channel.stop(self.settings.drain_timeout)
        self._plan = None

    def _find(self, target: Any) -> _Entry | None:
        for entry in self._entries:
            if isinstance(target, str):
                if target in (entry.tracker, entry.name):
                    return entry
            elif isinstance(target, type):
                if isinstance(entry.plugin, target):
                    return entry
            elif entry.plugin is target or entry.plugin == target:
                return entry
        return None

    def _get_plan(self) -> dict[str, tuple[tuple[str, Any, tuple[str, ...], _Entry], ...]]:
        if self._plan is None:
            self._plan = self._build_plan()
            self._journaling = self.journal_settings.enabled and bool(
                self.offline or self.followed or any(e.channel is not None for e in self._entries))
        return self._plan

    # -- the run journal (tracklink.journal) -------------------------------------------------------

    _journaling = False

    def add_offline(self, name: str, rank_policy: str = "main") -> bool:
        """Record events for tracker ``name`` in the journal only (``TRACKLINK_OFFLINE``): it is not built
        nor contacted; ``tracklink sync`` sends them later. ``False`` when its rank policy excludes this
        process (then this process keeps no journal for it)."""
        return self._add_journal_only(self.offline, name, rank_policy)

    def add_follower(self, name: str, rank_policy: str = "main", state_key: str | None = None,
                     identifies: bool = True) -> bool:
        """Deliver tracker ``name`` from a process of its own that follows the run journal
        (``TRACKLINK_DELIVERY=process``, tracklink.follow); not built here. ``state_key`` is the key of its
        entry in checkpoints (see :meth:`follower_states`); ``identifies``: whether its runs have an identity
        to wait for. ``False`` when its rank policy excludes this process."""
        if not self._add_journal_only(self.followed, name, rank_policy):
            return False
        self.follower_keys[name] = state_key or name
        if identifies:
            self.identifying.add(name)
        return True

    def follower_identities(self) -> dict[str, dict[str, Any] | None]:
        """The run identity of each followed tracker as its follower stored it in the journal, or None while its
        setup is still going on. Reads the journal file (on the training thread: at saves, not per step). An
        identity once known is kept (a journal that failed later, or a new session's journal before its first
        commit, does not take it back)."""
        if not self.followed:
            return {}
        if self.journal is not None:
            self._follower_identities.update(self.journal.identities())
        return {name: self._follower_identities.get(name) for name in self.followed}

    def followers_identified(self) -> bool:
        """Whether every followed tracker whose runs have an identity has made it known."""
        return all(name in self._follower_identities for name in self.identifying)

    def tracker_states(self) -> dict[str, dict[str, Any]]:
        """The entries a checkpoint or run file keeps of this hub's trackers, by ``state_key``: each built
        tracker's ``state()``, and for a tracker in a process of its own the same entry made from the identity
        its follower stored (when the follower's setup is still going on, it adds the identity to the checkpoint
        itself when it handles the checkpoint's ``on_save``)."""
        states: dict[str, dict[str, Any]] = {
            self.follower_keys.get(name, name): {"args": {}, "attributes": {"run": identity}}
            for name, identity in self.follower_identities().items()}
        states.update({state_key(t): t.state() for t in self.trackers.values() if isinstance(t, Tracker)})
        return states

    def restore_tracker_states(self, stored: Any) -> None:
        """The reverse of :meth:`tracker_states` at a resume (``stored``: a run file's or the transformers
        bridge's entries by key): each built tracker re-attaches to its run (``load_state``), and the followed
        trackers' identities go into the next session's journal, see :meth:`resume_followers`."""
        if not isinstance(stored, Mapping):
            return
        for tracker in self.trackers.values():
            if isinstance(tracker, Tracker) and isinstance(stored.get(state_key(tracker)), Mapping):
                tracker.load_state(stored[state_key(tracker)])
        self.resume_followers(stored)

    def resume_followers(self, entries: Any) -> None:
        """Re-attach the followed trackers to the runs named in ``entries`` (saved states by key, as
        :meth:`tracker_states` exports them: a checkpoint's ``stateful_callbacks``, a run file) when the next
        training session begins: their identities go into its journal, where the followers read them, so they
        re-attach whichever delivery made the runs."""
        holder = types.SimpleNamespace(stateful_callbacks=entries if isinstance(entries, (dict, list)) else {})
        self._follower_resume = {}
        for name in self.followed:
            identity = saved_attributes(holder, self.follower_keys.get(name, name)).get("run")
            if isinstance(identity, dict):
                self._follower_resume[name] = identity
        self._follower_identities.update(self._follower_resume)

    def _add_journal_only(self, table: dict[str, str], name: str, rank_policy: str) -> bool:
        """A tracker this process does not build, only journals for (``offline`` or ``followed``)."""
        if not self.process.allows(rank_policy):
            return False
        table[name] = rank_policy
        self._plan = None
        return True

    def _start_followers(self) -> None:
        if self.journal is not None and self.followed:
            start_followers(self.journal.path, list(self.followed))

    def _open_journal(self, args: Any, resumed: bool = False, state: Any = None) -> None:
        """A new journal at each ``on_train_begin`` (a training session; a resumed one gets its own, which
        continues the directory's latest journal of this rank, so that ``tracklink sync`` of an offline run
        re-attaches the resumed session to the run the first one created), in the run's directory
        (``args.output_dir``)."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        self._begin = None
        directory = getattr(args, "output_dir", None)
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            self._follower_resume = {}
            return
        trackers = {e.tracker: True for e in self._entries if e.channel is not None and e.tracker is not None}
        trackers.update(dict.fromkeys(self.offline, False))
        trackers.update(dict.fromkeys(self.followed, True))
        continues = latest_journal(directory, self.process.rank, self.process.world_size) if resumed else None
        self.journal = Journal.create(directory, trackers, interval=self.journal_settings.interval,
                                      rank=self.process.rank, world_size=self.process.world_size, continues=continues)
        self._journal_dir = str(directory)
        for entry in self._entries:
            if entry.channel is not None:
                entry.channel.use_journal(self.journal, self.journal_settings.retry_budget)
        if self.journal is None and self.followed:
            logger.error("tracklink: the run journal cannot be written in %s, so the trackers in processes of their "
                         "own (%s, TRACKLINK_DELIVERY=process) receive nothing from this training session; "
                         "TRACKLINK_DELIVERY=thread delivers from memory when the journal cannot be written",
                         directory, ", ".join(self.followed))
        if self.journal is not None:
            register_journal(self.journal)
            if resumed and not self._follower_resume:
                self.resume_followers(getattr(state, "stateful_callbacks", None))
            for name, identity in self._follower_resume.items():  # the followers re-attach even without the
                self.journal.identify(name, identity)  # earlier session's journal
            if (self.offline and self.process.is_world_main) or (self.offline and not self._entries):
                logger.info("tracklink: offline: %s recorded in %s only; send them later with: tracklink sync %s",
                            ", ".join(self.offline), self.journal.path, directory)
            self._start_followers()
        self._follower_resume = {}

    def _record(self, event: str, snap: Any) -> int | None:
        """Put one event into the journal (on the training thread: a hand-off, no I/O); its id, or None."""
        state = snap.get("state")
        step, epoch = int(getattr(state, "global_step", 0) or 0), getattr(state, "epoch", None)
        if event == "on_train_begin":
            self._open_journal(snap.get("args"), resumed=step > 0, state=state)
        elif self.journal is not None and self.journal.closed and self._begin is not None and not self.journal.failed:
            # an evaluation after train() ended: a new file, same run
            self._continue_journal(step)
        journal = self.journal
        if journal is None or journal.failed or journal.closed:
            return None
        if event == "on_log" or event == "on_predict":  # the values are filtered on the journal's thread
            key = "logs" if event == "on_log" else "metrics"
            return journal.record_values(event, step, epoch, key, snap.get(key), when=getattr(snap, "when", None))
        data = journal_event_data(event, snap)
        seq = journal.record(event, step, epoch, data, when=getattr(snap, "when", None))
        if event == "on_train_begin":
            self._begin = (step, epoch, data)
        if event == "on_save":  # a checkpoint is a durability point
            journal.commit(timeout=10.0)
        return seq

    _begin: tuple[int, Any, dict[str, Any]] | None = None

    def _continue_journal(self, step: int) -> None:
        """Events after the end of a training session (a standalone evaluation): a new journal file that starts
        with the session's ``begin`` event and the trackers' run identities, so ``tracklink sync`` re-attaches."""
        previous, begin = self.journal, self._begin
        assert previous is not None and begin is not None
        self.journal = Journal.create(previous.run_dir, previous.trackers, interval=self.journal_settings.interval,
                                      rank=self.process.rank, world_size=self.process.world_size,
                                      continues=previous.path.name)
        for entry in self._entries:
            if entry.channel is not None:
                entry.channel.use_journal(self.journal, self.journal_settings.retry_budget)
        if self.journal is not None:
            register_journal(self.journal)
            for entry in self._entries:
                identity = getattr(entry.plugin, "identity", None) if entry.channel is not None else None
                if identity is not None and entry.tracker is not None:
                    self.journal.identify(entry.tracker, identity)
            seq = self.journal.record("on_train_begin", step, begin[1], begin[2])  # re-attached at this step
            for entry in self._entries:  # the begin event is not delivered again: the trackers have it
                if entry.channel is not None and entry.tracker is not None and not entry.channel.disabled:
                    self.journal.advance(entry.tracker, seq)
            self._start_followers()  # they re-attach to the runs the previous journal's followers made

    def _report_journal(self) -> None:
        """At the end of a training session: one line per tracker whose events are still only in the journal;
        the journal is then closed (events after the end go to a continuation, see :meth:`_continue_journal`)."""
        journal = self.journal
        if journal is None:
            return
        journal.commit(timeout=30.0)
        if journal.failed:
            if self.followed:
                logger.error("tracklink: the run journal %s could not be written (%s): the trackers in processes of "
                             "their own (%s) did not receive the events after that; TRACKLINK_DELIVERY=thread "
                             "delivers from memory when the journal fails", journal.path, journal.failed,
                             ", ".join(self.followed))
                journal.close()  # no more events can come: the followers are stopped, not waited for
                stop_followers(followers_of(journal.path), "had no more events to expect")
            return
        pending = journal.pending()
        journal.close()
        if self.followed:
            self._wait_followers(journal)
        for name, count in pending.items():
            if count and name not in self.offline and name not in self.followed:
                logger.warning("tracklink: tracker %r did not accept %d event(s); they are kept in the run journal. "
                               "Send them with: tracklink sync %s", name, count, self._journal_dir)
        offline = {n: c for n, c in pending.items() if n in self.offline and c}
        if offline:
            logger.warning("tracklink: offline run: %d event(s) for %s are in the run journal %s. Send them with: "
                           "tracklink sync %s", max(offline.values()), ", ".join(offline), journal.path,
                           self._journal_dir)

    def _wait_followers(self, journal: Journal) -> None:
        """The session's journal was closed: its followers deliver what is left and close their runs; wait for
        them within ``TRACKLINK_DRAIN_TIMEOUT`` (the ones still delivering go on while this process runs, and
        are stopped at exit after the same timeout)."""
        for follower in wait_followers(journal.path, self.settings.drain_timeout):
            logger.warning("tracklink: tracker %r, in its own process, has %d event(s) left to deliver after "
                           "TRACKLINK_DRAIN_TIMEOUT=%gs; it goes on while this process runs (at exit it gets the same "
                           "time again, then what is left stays in the run journal for: tracklink sync %s)",
                           follower.tracker, follower.pending(), self.settings.drain_timeout, self._journal_dir)

    def _build_plan(self) -> dict[str, tuple[tuple[str, Any, tuple[str, ...], _Entry], ...]]:
        order = {id(entry.plugin): index for index, entry in enumerate(self._entries)}
        by_plugin = {id(entry.plugin): entry for entry in self._entries}
        plan: dict[str, tuple[tuple[str, Any, tuple[str, ...], _Entry], ...]] = {}
        for entry in self._entries:
            entry.calls.clear()
        for event in EVENTS:
            impls = [i for i in getattr(self._pm.hook, event).get_hookimpls() if id(i.plugin) in order]
            impls.sort(key=lambda i: (0 if i.tryfirst else 2 if i.trylast else 1, order[id(i.plugin)]))
            steps = []
            for impl in impls:
                entry = by_plugin[id(impl.plugin)]
                marked = hasattr(impl.function, f"{hookspecs.PROJECT}_impl")
                call: Call = (NAMED_STYLE if marked else HF_STYLE, impl.function, tuple(impl.argnames))
                if entry.channel is not None:
                    entry.calls.setdefault(event, []).append(call)
                    if len(entry.calls[event]) > 1:
                        continue  # one submission per tracker and event
                steps.append((call[0], call[1], call[2], entry))
            plan[event] = tuple(steps)
        return plan


def _forwarder(event: str) -> Any:
    """transformers' handler method for ``event``: ``on_x(args, state, control, *extras, **kwargs)``, the
    event's own arguments (``logs``, ``metrics``, ...) also accepted by position, as transformers passes them."""
    extras = EXTRAS.get(event, ())
    forward: Any
    if extras:
        def forward(self: CallbackHandler, args: Any, state: Any, control: Any, *values: Any, **kwargs: Any) -> Any:
            kwargs.update(zip(extras, values))
            return self.call_event(event, args, state, control, **kwargs)
    else:  # the per-step events: nothing to map, the shortest call
        def forward(self: CallbackHandler, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            return self.call_event(event, args, state, control, **kwargs)

    forward.__name__ = event
    forward.__qualname__ = f"CallbackHandler.{event}"
    forward.__doc__ = f"Fire ``{event}`` at every plugin (see :meth:`CallbackHandler.call_event`)."
    return forward


# one method per event, from the event list (tracklink.hookspecs); the events with extra work are written above
for _event in EVENTS:
    if _event not in CallbackHandler.__dict__:
        setattr(CallbackHandler, _event, _forwarder(_event))


def _instantiate(cls: type) -> Any:
    """A callback given as a class is built without arguments, as in transformers."""
    import inspect  # lazy: stdlib, slow to import

    try:
        inspect.signature(cls).bind()
    except TypeError as exc:
        raise PluginRegistrationError(
            f"callbacks contains the class {cls.__name__}, whose constructor needs arguments ({exc}); a class is "
            f"built without arguments, so pass an instance instead: {cls.__name__}(...)"
        ) from None
    except ValueError:  # no signature to inspect (a builtin): let the call tell
        pass
    return cls()


def _accept_control(result: Any, entry: _Entry, event: str) -> Any:
    if isinstance(result, TrainerControl) or all(hasattr(result, f) for f in _CONTROL_FLAGS):
        return result
    raise TypeError(
        f"{entry.name}.{event} returned {type(result).__name__}; a callback may return a "
        "TrainerControl (which replaces the current one) or None"
    )


def _explain(plugin: object, exc: pluggy.PluginValidationError) -> str:
    import difflib  # lazy: only for a plugin that cannot be registered

    text = str(exc)
    for name in dir(plugin):
        if name.startswith("on_") and name not in _EVENT_SET and f"'{name}'" in text:
            close = difflib.get_close_matches(name, EVENTS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"plugin {_label(plugin)} implements unknown hook {name!r}{hint} Events: {', '.join(EVENTS)}"
    return f"plugin {_label(plugin)} cannot be registered: {text}"
