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
import errno
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import TrackerError, TrackerSetupError
from .journal import Event, JournalFile
from .redact import current_secrets, redacted_copy
from .shutdown import on_exit
from .state import TrainerControl, TrainerState

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
    queue_bytes: int = 256 * 2**20

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
            queue_bytes=_env_number("TRACKLINK_QUEUE_BYTES", 256 * 2**20, minimum=1024, integer=True),
        )


def _detach(value: Any) -> Any:
    detach = getattr(value, "detach", None)
    # a media value (tracklink.media) detaches to the snapshot a queued event holds: frozen once, shared
    if detach is not None and type(value).__module__.startswith(("torch", "tracklink.media")):
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


class HistoryView(Sequence[Any]):
    """The first ``length`` entries of a log history, without copying it: a queued event holds only what it
    needs, not a copy of the whole history (which made a backlog's memory grow with the square of the run's
    length). The trainer only ever appends to its history, so the prefix never changes."""

    __slots__ = ("_items", "_length")

    def __init__(self, items: list[Any], length: int) -> None:
        self._items = items
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self._items[i] for i in range(*index.indices(self._length))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("log history index out of range")
        return self._items[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (list, tuple, HistoryView)) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self))


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
    """An event's namespace as trackers see it; shared by every tracker the event goes to. ``when`` is the time
    the event was fired (seconds since the epoch): the run journal keeps the same time, so a tracker that stamps
    points with it sends identical points live and when ``tracklink sync`` replays them."""

    __slots__ = ("_hf_kwargs", "when")
    _hf_kwargs: dict[str, Any]
    when: float

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
    (with their own ``stateful_callbacks`` mapping, and the log history as it is now, as a
    :class:`HistoryView`), ``logs``/``metrics`` are copied with tensors detached; the model, optimizer and
    other objects are passed by reference.
    """
    snap = Snapshot(namespace)
    snap.when = time.time()
    if namespace.get("args") is not None:
        snap["args"] = _tracker_args(namespace["args"])
    state = namespace.get("state")
    if state is not None:
        state = _shallow(state)
        history = getattr(state, "log_history", None)
        if isinstance(history, list):
            state.log_history = HistoryView(history, len(history))
        elif isinstance(history, HistoryView):  # a snapshot of a snapshot
            state.log_history = HistoryView(history._items, len(history))
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


def deliver_events(tracker: Any, events: list[Event], args: Any, state: Any, control: Any) -> bool:
    """Hand journal ``events`` to ``tracker`` (a :class:`tracklink.Tracker`) as the hub would (consecutive logs as
    one batch; ``state`` is updated to each event's step): ``tracklink sync`` and a live tracker catching up.
    An exception propagates (the cursor stays before these events). Returns whether an end event was among them."""
    ended = False
    logs: list[Snapshot] = []

    def flush_logs() -> None:
        if not logs:
            return
        if not tracker._tracklink_batch("on_log", logs):
            for namespace in logs:
                tracker.on_log(namespace["args"], namespace["state"], control, logs=namespace["logs"])
        logs.clear()

    for event in events:
        state.global_step, state.epoch = event.step, event.epoch or 0.0
        if event.kind == "log":
            namespace = Snapshot(args=args, state=TrainerState(global_step=event.step, epoch=event.epoch or 0.0),
                                 control=control, logs=event.logs(), model=None)
            namespace.when = event.when if event.when is not None else time.time()
            logs.append(namespace)
            continue
        flush_logs()
        if event.kind == "predict":
            tracker.on_predict(args, state, control, metrics=event.data.get("metrics") or {})
        elif event.kind == "save":
            folder = event.data.get("checkpoint_dir")
            if folder and os.path.isdir(folder):
                tracker.on_save(args, state, control, checkpoint_dir=folder)
        elif event.kind == "end":
            ended = True
            status = event.data.get("status") or "success"
            if status == "success":
                tracker.on_train_end(args, state, control)
            else:
                error: BaseException = KeyboardInterrupt() if status == "killed" else \
                    RuntimeError(event.data.get("error") or "training failed")
                tracker.on_exception(args, state, control, exception=error)
        elif event.kind == "begin" and not tracker.is_active:
            tracker.on_train_begin(args, state, control)
    flush_logs()
    return ended


_STOP = object()
#: Events that end a run: still handled after a drain timeout, so the run is closed.
_RUN_ENDS = frozenset({"on_train_end", "on_exception"})
#: Seconds a tracker's worker waits for its run identity's commit before it hands the backend more events.
IDENTITY_COMMIT_S = 5.0
#: Seconds a tracker that takes batches waits for more events after the first (fewer, larger SDK calls).
BATCH_LINGER = 0.25
#: Seconds the worker of a tracker that fell behind gets to close its run after a drain timeout.
ABANDON_GRACE = 30.0
#: Seconds before the first retry of a tracker whose backend does not answer (doubling each time, at most
#: ``RETRY_MAX``), while its events wait in the run journal.
RETRY_FIRST, RETRY_MAX = 0.5, 30.0
#: What a backend that does not answer raises: socket errors of the network, and the HTTP clients' errors by name.
_NETWORK_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH,
                             errno.ENETUNREACH, errno.ENETDOWN, errno.ETIMEDOUT, errno.EHOSTDOWN})
_NETWORK_ERRORS = frozenset({"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "MaxRetryError",
                             "NewConnectionError", "ProtocolError", "RemoteDisconnected"})
#: Estimated bytes of a queued event, and of each value it carries (for ``TRACKLINK_QUEUE_BYTES``).
_EVENT_BYTES, _VALUE_BYTES = 1024, 160


def _size(namespace: Mapping[str, Any]) -> int:
    """A cheap estimate of what a queued event holds beyond what it shares with other events: media values
    (and any array) count their bytes (``nbytes``), so ``TRACKLINK_QUEUE_BYTES`` bounds a queue of images."""
    values = namespace.get("logs") or namespace.get("metrics")
    if not isinstance(values, Mapping):
        return _EVENT_BYTES
    size = _EVENT_BYTES + _VALUE_BYTES * len(values)
    for value in values.values():
        if type(value) not in (float, int, str, bool):
            size += int(getattr(value, "nbytes", 0) or 0)
    return size
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
        batch: Callable[[str, list[Any]], bool] | None = None,
    ) -> None:
        self.name = name
        self._batch = batch
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
        self._bytes = 0  # estimated size of the queued events (single writer each way, like the counters)
        self._freed = 0
        self.undelivered = 0  # events left out after a drain timeout (see abandon)
        self._abandoned = False
        self._space = threading.Condition()
        self._producer_waiting = False
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        #: the run journal (tracklink.journal) whose events this channel delivers, when there is one
        self.journal: Any = None
        self._cursor_stuck = False  # an event this tracker did not accept: its cursor stays before it
        self._identity: Any = None
        #: seconds a tracker whose backend does not answer is retried from the journal before it is switched off
        self.retry_budget = 300.0
        self._behind = False  # catching up from the journal: new journaled events wait there, not in the queue
        self._down: BaseException | None = None  # the backend failure that started a catch-up
        self._delivered = 0  # the last journal event id handed to the tracker without an error
        self._last_args: Any = None
        self._wake = threading.Event()
        self._urgent = threading.Event()  # cuts a batching worker's linger short (see _loop)
        self._ending = False
        _live_channels.add(self)

    @property
    def disabled(self) -> bool:
        return self.disabled_reason is not None

    def submit(self, event: str, namespace: dict[str, Any], hold: str | None = None, seq: int | None = None) -> None:
        """Deliver an event (already snapshotted) to the tracker, asynchronously unless inline.

        ``hold`` names a resource (a checkpoint directory) the event needs until the tracker has
        handled it: :meth:`holds` is true for it in the meantime. ``seq`` is the event's id in the run
        journal: it is delivered once the journal committed it, and the tracker's cursor moves to it
        once the tracker accepted it."""
        if self.disabled_reason is not None:
            return
        if self._behind and seq is not None:
            return  # its backend is down: the event waits in the journal, the worker reads it from there
        if self.inline:
            errors = self.errors
            self._run(event, namespace)
            if seq is not None:
                self._advance(event, seq, errors)
            return
        if self._worker is None:
            self._ensure_worker()
        if hold is not None:
            with self._lock:
                self._held[hold] = self._held.get(hold, 0) + 1
        if not self._put((event, namespace, hold, _size(namespace), seq), self.settings.queue_timeout):
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

    def _full(self) -> bool:
        return (self._produced - self._consumed >= self.settings.queue_size
                or self._bytes - self._freed >= self.settings.queue_bytes)

    def _put(self, item: Any, timeout: float | None) -> bool:
        """Queue ``item``, waiting (back-pressure, nothing dropped) while the queue holds ``queue_size``
        events or about ``queue_bytes`` bytes of them."""
        if type(item) is not tuple:
            self._urgent.set()  # a barrier or a stop: a lingering worker hands over what it has now
        if self._full():
            self._urgent.set()
            with self._space:
                self._producer_waiting = True
                try:
                    if not self._space.wait_for(lambda: not self._full(), timeout):
                        return False
                finally:
                    self._producer_waiting = False
        self._produced += 1
        if type(item) is tuple:
            self._bytes += item[3]
        self._queue.put(item)
        return True

    @property
    def pending(self) -> int:
        """Events queued and not handled yet."""
        return self._produced - self._consumed

    def abandon(self) -> int:
        """After a drain timeout: the worker leaves out what is still queued, except the events that end the
        run (``on_train_end``, ``on_exception``), which it still handles: the run is closed after the worker
        stopped delivering, never while it still does. Returns how many events are left out."""
        self._abandoned = True
        return max(0, self.pending)

    def barrier(self, timeout: float | None = None, warn: bool = True) -> bool:
        """Wait until every event submitted so far was processed. Returns ``False`` on timeout."""
        worker = self._worker
        if self.inline or worker is None or not worker.is_alive():
            return True
        if self._behind:  # what was logged is in the journal; nothing waits for a tracker that is down
            return True
        if self.journal is not None:  # the events before the barrier are delivered once committed: commit now
            self.journal.request_commit()
        done = threading.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._put(done, timeout):
            return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not done.wait(remaining):
            if warn:
                logger.warning(
                    "tracklink: tracker %r did not finish its queued events within %.0f s (%d still queued)",
                    self.name, timeout or 0, max(0, self.pending - 1),
                )
            return False
        return True

    def finish(self, timeout: float) -> bool:
        """The end of a run: drain within ``timeout``; when that is not enough, leave the rest out
        (:meth:`abandon`), report how much, and give the worker a moment to close the run."""
        self._ending = True  # a tracker catching up from the journal tries once more, then leaves the rest there
        self._wake.set()
        if self.barrier(timeout, warn=False):
            return self.stop(timeout)
        lost = self.abandon()
        logger.warning(
            "tracklink: tracker %r fell behind: %d queued event(s) were not delivered within "
            "TRACKLINK_DRAIN_TIMEOUT=%g s and %s; its run is closed after its worker stops",
            self.name, lost, timeout, "stay in the run journal for `tracklink sync` (see below)"
            if self._journaled() else "are left out",
        )
        return self.stop(ABANDON_GRACE)

    def _journaled(self) -> bool:
        """Whether what this tracker does not deliver stays in a run journal (its cursor stops before it)."""
        return self.journal is not None and not self.journal.failed and not self.inline

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
        if not self.errors and not self.disabled and not self.undelivered:
            return None
        text = f"tracker {self.name!r}: {self.errors} error(s)"
        if self.first_error:
            text += f", first: {self.first_error}"
        if self.undelivered:
            text += f"; {self.undelivered} event(s) not delivered (drain timeout)"
            if self._journaled():
                text += ", kept in the run journal for tracklink sync"
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
        batching = self._takes_batches()
        while True:
            items = [self._queue.get()]
            # a tracker that fell behind takes everything pending at once (its SDK then gets batches); one that
            # takes batches also lingers a moment for the events right behind the first, asleep: a wake-up per
            # arriving event cost more CPU than the SDK calls it saved. A barrier, a stop or a full queue wakes it.
            if batching and type(items[0]) is tuple:
                self._urgent.wait(BATCH_LINGER)
                self._urgent.clear()
            while len(items) < self.settings.queue_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                if type(item) is not tuple:  # a barrier or a stop: hand over what came before it now
                    break
            if self._handle(items):
                return

    def _takes_batches(self) -> bool:
        probe = getattr(self.plugin, "_tracklink_takes_batches", None)
        try:
            return bool(probe()) if callable(probe) else False
        except Exception:
            return False

    def _handle(self, items: list[Any]) -> bool:
        """Handle ``items`` in order; consecutive ``on_log`` events go to the tracker together when it takes
        batches. Returns whether the worker was told to stop."""
        logs: list[Any] = []
        for item in items:
            if type(item) is tuple and item[0] == "on_log" and self._batch is not None:
                logs.append(item)
                continue
            if logs:
                self._deliver(logs)
                logs = []
            if item is _STOP:
                self._done(item)
                return True
            if isinstance(item, threading.Event):
                item.set()
                self._done(item)
                continue
            self._deliver([item])
        if logs:
            self._deliver(logs)
        return False

    def _deliver(self, items: list[Any]) -> None:
        seq = max((item[4] for item in items if item[4] is not None), default=None)
        journal = self.journal
        run = items
        if seq is not None and journal is not None:
            journal.wait_committed(seq)  # a tracker never gets an event the journal could still lose
            if items[0][0] != "on_train_begin":  # (before a new session's setup, the identity is the last run's)
                self._identify(journal)
            if self._delivered and min(item[4] or seq for item in items) <= self._delivered:
                run = [item for item in items if item[4] is None or item[4] > self._delivered]  # read from the journal
        errors, undelivered = self.errors, self.undelivered
        try:
            if self._behind:
                run = [item for item in run if item[4] is None]  # they wait in the journal
            if len(run) > 1 or (self._batch is not None and run and run[0][0] == "on_log"):
                self._run_batch(run[0][0], [item[1] for item in run])  # (a tracker's batch path has the times)
            elif run:
                self._run(run[0][0], run[0][1])
        finally:
            for item in items:
                self._release(item[2])
                self._done(item)
        if seq is None or not run:
            return
        self._last_args = run[-1][1].get("args") if isinstance(run[-1][1], Mapping) else self._last_args
        if self._down is not None:
            if self.disabled:  # switched off meanwhile (its run closed): nothing is retried, nor re-opened
                self._down = None
            else:
                self._catch_up()
            return
        left = self.undelivered - undelivered
        if left:  # a drain timeout left out the last ``left`` of them: they stay in the journal
            done = len(run) - left  # (several events are only ever on_log events, left out as a suffix)
            if done > 0 and run[done - 1][4] is not None:
                self._advance(run[done - 1][0], run[done - 1][4], errors)
            self._cursor_stuck = True
            return
        if self.errors == errors and not self.disabled:
            self._delivered = max(self._delivered, seq)
        self._advance(items[-1][0], seq, errors)

    # -- a tracker whose backend is down: its events wait in the journal --------------------------------

    def use_journal(self, journal: Any, retry_budget: float) -> None:
        """Deliver the events of ``journal`` (a new training session's) from now on."""
        self.journal = journal
        self.retry_budget = retry_budget
        self._cursor_stuck = self._behind = self._ending = False
        self._identity = self._down = None
        self._delivered = 0

    def _can_wait(self, exc: BaseException) -> bool:
        """Whether a failure means the backend is unreachable (a connection refused or reset, a timeout: the
        exception or one it was raised from), and this tracker can wait for it in the journal: retried with
        backoff instead of counted. A full disk, a missing file, a bug are not."""
        if self.journal is None or self.journal.failed or self.inline or isinstance(
                exc, TrackerSetupError) or not hasattr(self.plugin, "_tracklink_batch"):
            return False
        seen: set[int] = set()
        error: BaseException | None = exc
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            if isinstance(error, (ConnectionError, TimeoutError)) or type(error).__name__ in _NETWORK_ERRORS:
                return True
            if isinstance(error, OSError) and error.errno in _NETWORK_ERRNOS:
                return True
            error = error.__cause__ or error.__context__
        return False

    def _catch_up(self) -> None:
        """The backend did not answer: new journaled events stay in the journal (not in memory); retry with
        backoff (``RETRY_FIRST`` doubling up to ``RETRY_MAX``) from the event after the last one accepted,
        until the tracker has caught up (then it takes its queue again, in order), or ``retry_budget`` seconds
        passed, or the run ends after one more try: then it is switched off (its run closed as failed where the
        backend takes that call, the failure summary names it) and its events stay in the journal for
        ``tracklink sync``, which re-attaches, sends them and closes the run with the recorded status."""
        journal = self.journal
        assert journal is not None
        self._behind = True
        down, self._down = self._down, None
        logger.warning("tracklink: tracker %r cannot reach its backend (%s: %s); its events wait in the run journal "
                       "and are retried while the run lives", self.name, type(down).__name__, down)
        delay = RETRY_FIRST
        deadline = time.monotonic() + self.retry_budget
        reader: JournalFile | None = None
        try:
            while True:
                if not self._ending:
                    self._wake.wait(delay)
                    self._wake.clear()
                try:
                    reader = reader or JournalFile(journal.path)
                    self._replay(reader, journal.committed)
                    self._behind = False  # new events are queued again; replay those recorded in between
                    last = journal.last
                    journal.wait_committed(last, 30.0)
                    self._replay(reader, min(last, journal.committed))
                    logger.warning("tracklink: tracker %r reaches its backend again and caught up", self.name)
                    return
                except Exception as exc:
                    self._behind = True
                    if not self._can_wait(exc):
                        self._cursor_stuck = True
                        self._down = None
                        self._failed("catch-up", exc)
                        return
                    if self._ending:  # the run ends: what is left waits in the journal for tracklink sync
                        self._cursor_stuck = True
                        self._disable(f"its backend did not answer ({type(exc).__name__}: {exc}); what it did not "
                                      "accept waits in the run journal for tracklink sync")
                        return
                    if time.monotonic() > deadline:
                        self._cursor_stuck = True
                        self._disable(f"its backend did not answer for {self.retry_budget:g} s ({type(exc).__name__}: "
                                      f"{exc}); its events are kept in the run journal")
                        return
                    delay = min(delay * 2, RETRY_MAX)
        finally:
            if reader is not None:
                reader.close()

    def _replay(self, reader: JournalFile, upto: int) -> None:
        """Hand the journal's events after the last delivered one, up to ``upto``, to the tracker in batches;
        the cursor follows each batch."""
        state, control = TrainerState(), TrainerControl()
        batch: list[Any] = []
        for event in reader.events(self._delivered):
            if event.id > upto:
                break
            batch.append(event)
            if len(batch) >= 1000:
                self._replay_batch(batch, state, control)
                batch = []
        if batch:
            self._replay_batch(batch, state, control)

    def _replay_batch(self, batch: list[Any], state: Any, control: Any) -> None:
        events = [e for e in batch if e.kind != "begin"]  # the run was set up before the backend went away
        ended = deliver_events(self.plugin, events, self._last_args, state, control) if events else False
        self._delivered = batch[-1].id
        self._advance("on_train_end" if ended else "on_log", batch[-1].id, self.errors)

    def _advance(self, event: str, seq: int, errors: int) -> None:
        """Move this tracker's journal cursor to ``seq`` when the tracker accepted every event up to it: no
        failure now or before, not switched off, nothing held back in a spool of its own."""
        journal = self.journal
        if journal is None or journal.failed:
            return
        if self.errors != errors or self.disabled:
            self._cursor_stuck = True
        if self._cursor_stuck:
            return
        unsent = getattr(self.plugin, "unsent_count", None)
        try:
            if callable(unsent) and unsent():
                return  # the tracker keeps points its backend has not taken yet: the cursor waits for them
        except Exception:
            return
        self._identify(journal)
        journal.advance(self.name, seq, closed=event in _RUN_ENDS)

    def _identify(self, journal: Any) -> None:
        """Store the tracker's run identity in the journal when it changed, and wait for the commit (once per
        identity and journal; not on the training thread of an inline tracker): a process killed once the
        backend holds points must leave ``tracklink sync`` the run to re-attach to, or those points would be
        sent again, to a second run."""
        try:
            if not getattr(self.plugin, "is_active", True):
                return  # no run open (its setup failed, or it ended): the identity it knows is an earlier run's
            identity = getattr(self.plugin, "identity", None)
        except Exception:
            return
        if identity is not None and identity != self._identity:
            self._identity = identity
            journal.identify(self.name, identity)
            if not self.inline:
                journal.commit(timeout=IDENTITY_COMMIT_S)

    def _done(self, item: Any) -> None:
        if type(item) is tuple:
            self._freed += item[3]
        self._consumed += 1
        if self._producer_waiting:
            with self._space:
                self._space.notify_all()

    def _run_batch(self, event: str, namespaces: list[Any]) -> None:
        if self.disabled:
            return
        if self._abandoned:
            self.undelivered += len(namespaces)
            return
        try:
            batched = self._batch is not None and self._batch(event, namespaces)
        except Exception as exc:  # isolation, as for one event
            self._failed(event, exc)
            return
        if not batched:
            for namespace in namespaces:
                self._run(event, namespace)
                if self._down is not None:  # its backend is down: the rest waits in the journal (see _catch_up)
                    return

    def _run(self, event: str, namespace: dict[str, Any]) -> None:
        if self.disabled:
            return
        if self._abandoned and event not in _RUN_ENDS:  # after a drain timeout: only what ends the run
            self.undelivered += 1
            return
        for call in self.calls.get(event, ()):
            try:
                invoke(call, namespace)
            except Exception as exc:  # isolation: a tracker never takes training down
                self._failed(event, exc)
                if self.disabled:
                    return

    def _failed(self, event: str, exc: Exception) -> None:
        if (self.settings.on_error != "raise" and self._down is None and not self._behind and not self._ending
                and self._can_wait(exc)):
            self._down = exc  # the worker retries from the journal after this delivery (see _catch_up)
            return
        import traceback  # lazy: only on a failure (stdlib, slow to import)

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


def busy(plugin: object) -> bool:
    """Whether a tracker's worker is still handling events (then nothing else may close its run)."""
    for channel in list(_live_channels):
        worker = channel._worker
        if channel.plugin is plugin and worker is not None and worker.is_alive() and channel.pending > 0:
            return True
    return False


def drain_all(timeout: float | None = None) -> None:
    """Drain every live tracker queue (used at interpreter exit and by the SIGTERM path)."""
    for channel in list(_live_channels):
        try:
            channel.finish(timeout) if timeout is not None else channel.stop(timeout)
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
