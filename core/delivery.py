"""Delivery of events to tracker plugins: snapshots, one worker thread per tracker, error isolation.

The training loop never waits for a tracker: the hub copies what an event carries (:func:`snapshot`)
and puts it on the tracker's bounded queue; a worker thread calls the tracker in order. Failures are
caught, reported once with the tracker's name and traceback, counted, and after
``TRACKLINK_TRACKER_MAX_ERRORS`` failures (default 3) the tracker is switched off.
``TRACKLINK_ON_ERROR=raise`` makes the hub re-raise the first failure on the training thread instead.

Queues hold ``TRACKLINK_QUEUE_SIZE`` events (default 10000). When a queue is full the training thread
waits (back-pressure, nothing is dropped) for up to ``TRACKLINK_QUEUE_TIMEOUT`` seconds (default 300);
a tracker that makes no progress for that long is declared stalled and switched off, with a warning.
Queues are drained at ``on_train_end``, ``on_exception``, before checkpoint rotation, at interpreter
exit and on SIGTERM (the trainer turns SIGTERM into ``on_exception``).
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import TrackerError, TrackerSetupError
from .redact import current_secrets, redacted_copy
from .shutdown import on_exit

logger = logging.getLogger("tracklink")

__all__ = ["DeliverySettings", "TrackerChannel", "TrackerError", "snapshot"]

ERROR_POLICIES = ("warn", "raise")

# How a hook implementation is called: transformers style (args, state, control, **kwargs) or
# pluggy style (only the named arguments).
HF_STYLE = "hf"
NAMED_STYLE = "named"


def _env_number(name: str, default: float, *, minimum: float, integer: bool = False) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}={raw!r} is not {kind}; expected {kind} >= {minimum}") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} is too small; expected a value >= {minimum}")
    return value


@dataclass(frozen=True)
class DeliverySettings:
    """Knobs of tracker delivery, read from the environment by :meth:`from_env`."""

    on_error: str = "warn"
    max_errors: int = 3
    queue_size: int = 10000
    queue_timeout: float = 300.0
    drain_timeout: float = 600.0

    @classmethod
    def from_env(cls) -> DeliverySettings:
        policy = os.environ.get("TRACKLINK_ON_ERROR", "warn").strip().lower() or "warn"
        if policy not in ERROR_POLICIES:
            raise ValueError(
                f"TRACKLINK_ON_ERROR={os.environ['TRACKLINK_ON_ERROR']!r} is not a valid error policy; "
                f"accepted: {', '.join(ERROR_POLICIES)}"
            )
        return cls(
            on_error=policy,
            max_errors=_env_number("TRACKLINK_TRACKER_MAX_ERRORS", 3, minimum=1, integer=True),
            queue_size=_env_number("TRACKLINK_QUEUE_SIZE", 10000, minimum=1, integer=True),
            queue_timeout=_env_number("TRACKLINK_QUEUE_TIMEOUT", 300.0, minimum=0.001),
            drain_timeout=_env_number("TRACKLINK_DRAIN_TIMEOUT", 600.0, minimum=0.001),
        )


def _detach(value: Any) -> Any:
    detach = getattr(value, "detach", None)
    if detach is not None and type(value).__module__.startswith("torch"):
        return detach()
    return value


def _copy_mapping(mapping: Any) -> Any:
    if isinstance(mapping, Mapping):
        return {key: _detach(value) for key, value in mapping.items()}
    return mapping


_redacted_args: dict[int, tuple[Any, Any, Any]] = {}


def _tracker_args(args: Any) -> Any:
    """The redacted copy of ``args`` trackers receive, cached per arguments object and rebuilt when the
    object records a change (``TrainingArguments`` counts its field assignments in ``_tracklink_changes``)."""
    cached = _redacted_args.get(id(args))
    changes = getattr(args, "_tracklink_changes", None)
    if cached is not None and cached[0] is args and cached[2] == changes:
        return cached[1]
    clone = redacted_copy(args, current_secrets())
    if len(_redacted_args) > 16:
        _redacted_args.clear()
    _redacted_args[id(args)] = (args, clone, changes)
    return clone


def _shallow(obj: Any) -> Any:
    """A shallow copy; for plain objects (dataclasses) without going through ``__reduce_ex__``."""
    fields = getattr(obj, "__dict__", None)
    if type(fields) is dict and not hasattr(type(obj), "__slots__"):
        clone = object.__new__(type(obj))
        clone.__dict__.update(fields)
        return clone
    return copy.copy(obj)


_POSITIONAL = frozenset({"args", "state", "control"})


def hf_kwargs(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a transformers-style call: the namespace without args, state, control."""
    return {k: v for k, v in namespace.items() if k not in _POSITIONAL}


class Snapshot(dict[str, Any]):
    """An event's namespace as trackers see it; shared by every tracker the event goes to."""

    __slots__ = ("_hf_kwargs",)
    _hf_kwargs: dict[str, Any]

    def hf_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of a transformers-style call (built once; a callee's ``**kwargs`` is
        its own copy)."""
        try:
            return self._hf_kwargs
        except AttributeError:
            self._hf_kwargs = hf_kwargs(self)
            return self._hf_kwargs


def snapshot(namespace: dict[str, Any]) -> Snapshot:
    """Copy what a tracker reads later on another thread.

    ``args`` is replaced by a redacted copy (secret-named fields and credentials in URLs masked, so a
    tracker calling ``args.to_dict()`` itself cannot leak them); ``state`` and ``control`` are copied
    (with their own ``log_history`` list and ``stateful_callbacks`` mapping), ``logs``/``metrics`` are
    copied with tensors detached; the model, optimizer and other objects are passed by reference.
    """
    snap = Snapshot(namespace)
    if namespace.get("args") is not None:
        snap["args"] = _tracker_args(namespace["args"])
    state = namespace.get("state")
    if state is not None:
        state = _shallow(state)
        if isinstance(getattr(state, "log_history", None), list):
            state.log_history = list(state.log_history)
        if isinstance(getattr(state, "stateful_callbacks", None), dict):
            state.stateful_callbacks = dict(state.stateful_callbacks)
        if isinstance(getattr(state, "trial_params", None), dict):
            state.trial_params = dict(state.trial_params)
        snap["state"] = state
    if namespace.get("control") is not None:
        snap["control"] = _shallow(namespace["control"])
    for key in ("logs", "metrics"):
        if key in snap:
            snap[key] = _copy_mapping(snap[key])
    return snap


Call = tuple[str, Callable[..., Any], tuple[str, ...]]


def invoke(call: Call, namespace: dict[str, Any]) -> Any:
    """Call one hook implementation with the arguments its style expects."""
    style, function, argnames = call
    if style == HF_STYLE:
        kwargs = namespace.hf_kwargs() if type(namespace) is Snapshot else hf_kwargs(namespace)
        return function(namespace["args"], namespace["state"], namespace["control"], **kwargs)
    return function(*[namespace[name] for name in argnames])


_STOP = object()
_live_channels: weakref.WeakSet[TrackerChannel] = weakref.WeakSet()


class TrackerChannel:
    """The queue, worker thread and error bookkeeping of one tracker plugin."""

    def __init__(
        self,
        name: str,
        plugin: object,
        calls: dict[str, list[Call]],
        *,
        inline: bool,
        settings: DeliverySettings,
        on_fatal: Callable[[TrackerError], None],
        on_disable: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.plugin = plugin
        self.calls = calls
        self.inline = inline
        self.settings = settings
        self._on_fatal = on_fatal
        self._on_disable = on_disable
        self.errors = 0
        self.first_error: str | None = None
        self.disabled_reason: str | None = None
        # An unbounded C queue (cheap put, cheap wake-up) bounded by counting: only the training
        # thread produces and only the worker consumes, so each counter has a single writer.
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._produced = 0
        self._consumed = 0
        self._space = threading.Condition()
        self._producer_waiting = False
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        _live_channels.add(self)

    @property
    def disabled(self) -> bool:
        return self.disabled_reason is not None

    def submit(self, event: str, namespace: dict[str, Any], hold: str | None = None) -> None:
        """Deliver an event (already snapshotted) to the tracker, asynchronously unless inline.

        ``hold`` names a resource (a checkpoint directory) the event needs until the tracker has
        handled it: :meth:`holds` is true for it in the meantime."""
        if self.disabled_reason is not None:
            return
        if self.inline:
            self._run(event, namespace)
            return
        if self._worker is None:
            self._ensure_worker()
        if hold is not None:
            with self._lock:
                self._held[hold] = self._held.get(hold, 0) + 1
        if not self._put((event, namespace, hold), self.settings.queue_timeout):
            self._release(hold)
            self._disable(
                f"stalled: its queue stayed full ({self.settings.queue_size} events) for "
                f"{self.settings.queue_timeout:g} s"
            )

    def holds(self, resource: str) -> bool:
        """Whether a queued event still needs ``resource`` (see :meth:`submit`)."""
        return resource in self._held

    def _release(self, hold: str | None) -> None:
        if hold is None:
            return
        with self._lock:
            left = self._held.get(hold, 0) - 1
            if left > 0:
                self._held[hold] = left
            else:
                self._held.pop(hold, None)

    def _put(self, item: Any, timeout: float | None) -> bool:
        """Queue ``item``, waiting (back-pressure) while the queue holds ``queue_size`` items."""
        if self._produced - self._consumed >= self.settings.queue_size:
            with self._space:
                self._producer_waiting = True
                try:
                    if not self._space.wait_for(
                        lambda: self._produced - self._consumed < self.settings.queue_size, timeout
                    ):
                        return False
                finally:
                    self._producer_waiting = False
        self._produced += 1
        self._queue.put(item)
        return True

    def barrier(self, timeout: float | None = None) -> bool:
        """Wait until every event submitted so far was processed. Returns ``False`` on timeout."""
        worker = self._worker
        if self.inline or worker is None or not worker.is_alive():
            return True
        done = threading.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._put(done, timeout):
            return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not done.wait(remaining):
            logger.warning(
                "tracklink: tracker %r did not finish its queued events within %.0f s", self.name,
                timeout or 0,
            )
            return False
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """Drain the queue and stop the worker thread (a later event starts a new one)."""
        drained = self.barrier(timeout)
        worker = self._worker
        if worker is not None and worker.is_alive() and drained:
            self._put(_STOP, timeout)
            worker.join(timeout)
        return drained

    def summary(self) -> str | None:
        """One line describing this tracker's failures, or ``None`` when it never failed."""
        if not self.errors and not self.disabled:
            return None
        text = f"tracker {self.name!r}: {self.errors} error(s)"
        if self.first_error:
            text += f", first: {self.first_error}"
        if self.disabled_reason:
            text += f"; switched off ({self.disabled_reason})"
        return text

    # -- internals -------------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        with self._lock:  # the worker clears self._worker itself when it exits
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name=f"tracklink-{self.name}", daemon=True
                )
                self._worker.start()

    def _work(self) -> None:
        try:
            self._loop()
        finally:
            with self._lock:
                if self._worker is threading.current_thread():
                    self._worker = None

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                event, namespace, hold = item
                try:
                    self._run(event, namespace)
                finally:
                    self._release(hold)
            finally:
                self._consumed += 1
                if self._producer_waiting:
                    with self._space:
                        self._space.notify_all()

    def _run(self, event: str, namespace: dict[str, Any]) -> None:
        if self.disabled:
            return
        for call in self.calls.get(event, ()):
            try:
                invoke(call, namespace)
            except Exception as exc:  # isolation: a tracker never takes training down
                self._failed(event, exc)
                if self.disabled:
                    return

    def _failed(self, event: str, exc: Exception) -> None:
        self.errors += 1
        setup_failed = isinstance(exc, TrackerSetupError)
        cause = exc.error if isinstance(exc, TrackerSetupError) else exc
        if self.first_error is None:
            self.first_error = f"{event}: {type(cause).__name__}: {cause}"
        if self.settings.on_error == "raise":
            if self.errors == 1:
                self._on_fatal(TrackerError(self.name, event, cause))
            return
        if setup_failed:
            logger.warning(
                "tracklink: tracker %r could not set up its run in %s; training continues without it:\n%s",
                self.name, event, "".join(traceback.format_exception(cause)).rstrip(),
            )
            self._disable(f"its run could not be set up: {type(cause).__name__}: {cause}")
            return
        if self.errors == 1:
            logger.warning(
                "tracklink: tracker %r failed in %s; training continues (set TRACKLINK_ON_ERROR=raise "
                "to stop instead):\n%s",
                self.name, event, "".join(traceback.format_exception(exc)).rstrip(),
            )
        else:
            logger.debug("tracklink: tracker %r failed again in %s: %r", self.name, event, exc)
        if self.errors >= self.settings.max_errors:
            self._disable(f"{self.errors} errors, the limit is {self.settings.max_errors}")

    def _disable(self, reason: str) -> None:
        if self.disabled:
            return
        self.disabled_reason = reason
        logger.warning("tracklink: tracker %r switched off: %s", self.name, reason)
        if self._on_disable is not None:
            try:
                self._on_disable()
            except Exception as exc:
                logger.debug("tracklink: closing disabled tracker %r failed: %r", self.name, exc)


def drain_all(timeout: float | None = None) -> None:
    """Drain every live tracker queue (used at interpreter exit and by the SIGTERM path)."""
    for channel in list(_live_channels):
        try:
            channel.stop(timeout)
        except Exception as exc:  # pragma: no cover - best effort at shutdown
            logger.debug("tracklink: draining %r failed: %r", channel.name, exc)


def _drain_at_exit() -> None:
    """At interpreter exit: drain every queue within ``TRACKLINK_DRAIN_TIMEOUT`` (as at the end of training)."""
    try:
        timeout = DeliverySettings.from_env().drain_timeout
    except ValueError:  # an invalid setting was reported when training started
        timeout = DeliverySettings.drain_timeout
    drain_all(timeout)


on_exit("drain", _drain_at_exit)
