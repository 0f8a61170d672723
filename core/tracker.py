"""``Tracker``: the base class of every tracker plugin.

A tracker declares, as class attributes the hub and the CLI read without importing its SDK:

``name``            its ``report_to`` name;
``sdk``             the distribution it needs, or a tuple of alternative distributions that each provide
                    the SDK module (preferred first, e.g. ``("mlflow", "mlflow-skinny")``; any one installed
                    counts), ``sdk_min_version`` and ``sdk_module`` (the import name);
``extra``           the pip extra that installs the SDK (``pip install "tracklink[<extra>]"``);
``env_vars``        the environment variables it reads (:class:`EnvVar`: default, meaning, secret or not);
``rank_policy``     ``"main"`` (world rank 0, default), ``"local_main"`` (one per node) or ``"all"``;
``inline``          ``True`` when its SDK must be called from the training thread;
``auto``            ``False`` when ``report_to="all"`` must never pick it;
``metric_style``    ``"hf"`` (``train/loss``, ``eval/loss``, ``test/...``) or ``"raw"`` (``loss``, ``eval_loss``);
``media``           the kinds of media value its ``log_media`` renders natively (``"image"``, ``"histogram"``,
                    ``"table"``, ``"figure"``); text is native with ``log_text``, files with ``log_artifact``;
``media_reserved``  key patterns (``fnmatch``) the backend reserves, where no media value may go;
``max_image_bytes``, ``max_histogram_bins``  the backend's limits (``None``: none known).

and implements a small lifecycle the base class drives from the training events:

``setup(run)``                     import the SDK and start (or re-attach to) a run; log ``run.params``;
``log_metrics(metrics, step, epoch)``  send numeric metrics at the trainer's ``global_step``;
``log_text(texts, step)``          optional: string values (otherwise skipped with one warning per key);
``log_media(values, step)``        optional: media values of the kinds declared in ``media``;
``log_artifact(path, name, step)`` optional: upload a file (logged ``File`` values and media fallbacks);
``log_summary(metrics)``           optional: the final training summary (default: ``log_metrics``);
``log_checkpoint(path, state)``    optional: upload the checkpoint directory the trainer just wrote;
``check_args(args)``               optional: refuse a configuration (runs on the training thread, raises);
``run_identity()``                 what identifies the run (stored in checkpoints for resume);
``finish(status)``                 close the run: ``"success"``, ``"failed"`` or ``"killed"``.

The base class sets the run up once on first use (``on_train_begin``, or lazily on a standalone
``evaluate``/``predict``), rewrites and sanitises metric names, filters values, routes media values (native,
or through their documented fallback: :func:`tracklink.media.outcome`), builds the redacted
hyper-parameter view, and closes the run exactly once at ``on_train_end`` or ``on_exception``.
Trackers run on their own worker thread (see :mod:`tracklink.delivery`); hooks receive snapshots and
their return values are ignored.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, ClassVar

from .atomic import atomic_write_text, directory_lock
from .callback import TrainerCallback
from .delivery import busy
from .envvars import FALSE_VALUES, KINDS, TRUE_VALUES, EnvVar, env_snapshot, truthy
from .errors import TrackerSetupError, TrackerUnavailableError
from .media import (
    NATIVE_KINDS,
    Figure,
    File,
    Histogram,
    Image,
    Media,
    MediaError,
    Table,
    TempFiles,
    Text,
    outcome,
    safe_name,
)
from .redact import declare_secret_names, declared_secret_names
from .shaping import SUMMARY_KEYS, flatten, hyperparameters, param_text, redacted_name, rewrite_logs
from .shutdown import on_exit
from .state import SEARCH_STATE_KEY, saved_attributes
from .values import as_number

logger = logging.getLogger("tracklink")

__all__ = [
    # moved to tracklink.envvars and tracklink.shaping; still importable from here for existing plugins
    "FALSE_VALUES",
    "KINDS",
    "TRUE_VALUES",
    "EnvVar",
    "RunEnd",
    "RunInfo",
    "Tracker",
    "declared_environment",
    "dumps_param",
    "env_snapshot",
    "exit_code",
    "flatten",
    "hyperparameters",
    "is_killed",
    "rewrite_logs",
    "truthy",
]

dumps_param = param_text

STATUSES = ("success", "failed", "killed")
STATE_FILE = "trainer_state.json"


@dataclass
class RunInfo:
    """What a tracker's ``setup`` needs to start or re-attach to a run.

    ``name``, ``project`` (``tracklink.init(project=...)``; ``None`` for the trainer, where each tracker's
    own variable such as ``WANDB_PROJECT`` applies), ``config`` (the redacted hyper-parameters) and ``params``
    (the same, flattened), ``resume`` (the identity to re-attach to) and ``start_step``, ``output_dir`` (the
    run's directory), ``extra`` (this tracker's ``init_kwargs``), ``training`` (``False`` when a standalone
    evaluation or prediction opened the run). ``args``, ``state`` and ``model`` are the driver's objects
    where it has them (the trainer's arguments and state; for other loops a :class:`~tracklink.run.RunArgs`
    and a state holding the step); a tracker should prefer the fields above.
    """

    args: Any
    state: Any
    model: Any
    name: str | None
    config: dict[str, Any]
    params: dict[str, Any]
    resume: dict[str, Any] | None = None
    args_config: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    start_step: int = 0
    output_dir: str | None = None
    trial_name: str | None = None
    trial_params: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    project: str | None = None
    training: bool = True
    #: ``tracklink sync`` replays the run from its journal: a re-attached run already holds some of the points
    #: that follow (leave out those it holds, where the backend can tell)
    replay: bool = False

    @property
    def is_hyper_param_search(self) -> bool:
        return bool(getattr(self.state, "is_hyper_param_search", False))

    @property
    def group(self) -> str | None:
        """The search this run is a trial of (its study name), for backends that group runs."""
        return str(self.search["name"]) if self.search and self.search.get("name") else None


class RunEnd(str):
    """How a run ended: the status string itself (``"success"``, ``"failed"`` or ``"killed"``, so a
    ``finish(self, status)`` written for the status alone keeps working), carrying what a tracker needs
    at the end so that it never has to handle a training event:

    ``exception`` (what ended a failed or killed run), ``exit_code`` (0, 1, 130 for an interrupt, 128 +
    signal for a signal), ``step`` and ``epoch`` (the last ones), ``output_dir``, ``last_checkpoint`` (the
    last checkpoint directory this run saved, or ``None``), ``best_checkpoint`` with ``best_metric`` and
    ``metric_for_best_model``, ``load_best_model_at_end`` (the final model is the best checkpoint's),
    ``model`` (the final model object, where the loop has one) and ``log_history`` (the trainer's log
    history; empty for other loops).
    """

    exception: BaseException | None
    exit_code: int
    step: int
    epoch: float | None
    output_dir: str | None
    last_checkpoint: str | None
    best_checkpoint: str | None
    best_metric: float | None
    metric_for_best_model: str | None
    load_best_model_at_end: bool
    model: Any
    log_history: list[dict[str, Any]]

    def __new__(cls, status: str = "success", **details: Any) -> RunEnd:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is invalid; accepted: {', '.join(STATUSES)}")
        self = super().__new__(cls, status)
        self.exception = details.pop("exception", None)
        default_code = 0 if status == "success" else 130 if status == "killed" else 1
        self.exit_code = int(details.pop("exit_code", None) or exit_code(self.exception, default_code))
        self.step = int(details.pop("step", 0) or 0)
        self.epoch = details.pop("epoch", None)
        self.output_dir = details.pop("output_dir", None)
        self.last_checkpoint = details.pop("last_checkpoint", None)
        self.best_checkpoint = details.pop("best_checkpoint", None)
        self.best_metric = details.pop("best_metric", None)
        self.metric_for_best_model = details.pop("metric_for_best_model", None)
        self.load_best_model_at_end = bool(details.pop("load_best_model_at_end", False))
        self.model = details.pop("model", None)
        self.log_history = list(details.pop("log_history", None) or [])
        if details:
            raise TypeError(f"RunEnd got unknown details {sorted(details)}")
        return self

    @property
    def status(self) -> str:
        return str(self)

    @classmethod
    def of_training(cls, status: str, args: Any, state: Any, model: Any = None,
                    exception: BaseException | None = None, last_checkpoint: str | None = None) -> RunEnd:
        """The end of a run driven by the trainer's events: details read from its arguments and state."""
        return cls(
            status, exception=exception, step=getattr(state, "global_step", 0), epoch=getattr(state, "epoch", None),
            output_dir=getattr(args, "output_dir", None), last_checkpoint=last_checkpoint,
            best_checkpoint=getattr(state, "best_model_checkpoint", None),
            best_metric=getattr(state, "best_metric", None),
            metric_for_best_model=getattr(args, "metric_for_best_model", None),
            load_best_model_at_end=bool(getattr(args, "load_best_model_at_end", False)),
            model=model, log_history=getattr(state, "log_history", None),
        )


def exit_code(exception: BaseException | None, default: int = 1) -> int:
    """The process exit status a run ended by ``exception`` stands for: 128 + the signal for SIGTERM,
    130 for an interrupt or a search backend stopping the trial, else ``default``."""
    if exception is None:
        return default
    signum = getattr(exception, "signum", None)
    if isinstance(exception, SystemExit) and isinstance(signum, int):
        return 128 + signum
    return 130 if is_killed(exception) else 1


class _Runtime:
    """Per-instance bookkeeping, created in ``__new__`` so subclasses need not call ``super().__init__``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.active = False
        self.identity: dict[str, Any] | None = None
        self.resume: dict[str, Any] | None = None
        self.last_step = 0
        self.warned: set[str] = set()
        self.last_checkpoint: str | None = None
        self.names: dict[str, str] = {}  # logged key -> backend metric name
        self.owners: dict[str, str] = {}  # backend metric name -> the logged key that has it
        self.setup_done = threading.Event()
        self.setup_pending = False
        self.times: list[float] | None = None  # when the points being sent were logged (see Tracker.logged_at)
        self.offset = 0


_open_trackers: weakref.WeakSet[Tracker] = weakref.WeakSet()


def is_killed(exception: BaseException | None) -> bool:
    """Whether training ended by being stopped rather than by failing: interrupted, SIGTERM'd, stopped by a
    search backend (Ray exits the trial) or pruned (Optuna's ``TrialPruned``)."""
    return isinstance(exception, (KeyboardInterrupt, SystemExit)) or type(exception).__name__ == "TrialPruned"


class Tracker(TrainerCallback):
    """Base class of tracker plugins (see the module documentation for the contract)."""

    name: ClassVar[str] = ""
    sdk: ClassVar[str | tuple[str, ...] | None] = None
    sdk_min_version: ClassVar[str | Mapping[str, str] | None] = None  # per distribution: a mapping
    sdk_module: ClassVar[str | None] = None
    extra: ClassVar[str | None] = None
    env_vars: ClassVar[tuple[EnvVar, ...]] = ()
    rank_policy: ClassVar[str] = "main"
    inline: ClassVar[bool] = False
    auto: ClassVar[bool] = True
    metric_style: ClassVar[str] = "hf"
    summary_keys: ClassVar[frozenset[str]] = SUMMARY_KEYS
    #: What this tracker's ``init_kwargs`` (``tracklink.init(init_kwargs={name: {...}})``) are passed to, or
    #: ``None`` when it takes none (they are then ignored with a warning).
    init_kwargs_target: ClassVar[str | None] = None
    #: The kinds of media value :meth:`log_media` renders natively (a subset of image, histogram, table,
    #: figure). Text is native when :meth:`log_text` is overridden, files when :meth:`log_artifact` is.
    media: ClassVar[frozenset[str]] = frozenset()
    #: Key patterns (``fnmatch``, on backend names) the backend reserves: a media value there is left out.
    media_reserved: ClassVar[tuple[str, ...]] = ()
    #: The backend's limit on one image (PNG bytes), and on a histogram's bins; ``None`` when it has none.
    max_image_bytes: ClassVar[int | None] = None
    max_histogram_bins: ClassVar[int | None] = None

    _tl: _Runtime

    def __new__(cls, *args: Any, **kwargs: Any) -> Tracker:
        self = super().__new__(cls)
        self._tl = _Runtime()
        return self

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its runtime (locks, open run): e.g. to be sent to a Ray worker."""
        return {k: v for k, v in self.__dict__.items() if k != "_tl"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tl = _Runtime()

    # -- declarations read without the SDK ------------------------------------------------------

    @property
    def state_key(self) -> str:
        return type(self).__name__

    @classmethod
    def install_hint(cls) -> str:
        if cls.extra:
            return f'pip install "tracklink[{cls.extra}]"'
        if not cls.sdk:
            return "(nothing to install)"
        return f"pip install {cls.sdk if isinstance(cls.sdk, str) else cls.sdk[0]}"

    @classmethod
    def ready(cls, env: Mapping[str, str]) -> str | None:
        """``None`` when the tracker can run without interaction (credentials or an offline mode are
        present); otherwise the reason it is not ready. ``report_to="all"`` only picks ready trackers."""
        return None

    @classmethod
    def disabled_by(cls, env: Mapping[str, str]) -> str | None:
        """The reason an environment switch disables this tracker, or ``None``."""
        return None

    @classmethod
    def env_problems(cls, env: Mapping[str, str]) -> list[str]:
        """Invalid values among the declared environment variables (checked before training)."""
        return [p for p in (var.problem(env) for var in cls.env_vars) if p]

    @classmethod
    def connection_problems(cls, env: Mapping[str, str]) -> list[str]:
        """Optional: what only a quick connection attempt can tell (a server that does not answer).
        ``tracklink doctor`` reports it as a problem; it never stops training."""
        return []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declare_secret_names(v.name for v in cls.env_vars if getattr(v, "secret", False))

    @staticmethod
    def declared_secret_names() -> set[str]:
        """Names of every secret variable declared by any loaded tracker class."""
        return declared_secret_names()

    @classmethod
    def import_sdk(cls, module: str | None = None) -> Any:
        """Import the SDK (or one of its modules), turning a missing one into a clear error."""
        target = module or cls.sdk_module or (cls.sdk if isinstance(cls.sdk, str) else None)
        if target is None:
            raise TypeError(f"{cls.__name__} declares no SDK to import")
        try:
            return importlib.import_module(target)
        except ImportError as exc:
            raise TrackerUnavailableError(
                cls.name or cls.__name__, f"its SDK module {target!r} cannot be imported ({exc})",
                cls.install_hint(),
            ) from exc

    # -- the lifecycle subclasses implement -------------------------------------------------------

    def setup(self, run: RunInfo) -> None:
        """Import the SDK and start the run (or re-attach to ``run.resume``); log ``run.params``."""

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        """Send numeric metrics (names already rewritten and sanitised) at ``step``."""

    def log_metrics_batch(self, points: list[tuple[dict[str, float], int, float | None]]) -> None:
        """Send several ``(metrics, step, epoch)`` points at once, in order (the tracker fell behind and the
        hub hands it everything queued). Override it where the SDK has a faster way than one call per
        point (one request, one file write, one flush); the default calls :meth:`log_metrics` for each."""
        try:
            for index, (metrics, step, epoch) in enumerate(points):
                self._tl.offset = index  # logged_at() in log_metrics answers for this point
                self.log_metrics(metrics, step, epoch)
        finally:
            self._tl.offset = 0

    def logged_at(self, index: int = 0) -> float:
        """When point ``index`` of the current :meth:`log_metrics_batch` call (or the point of the current
        :meth:`log_metrics` call) was logged, in seconds since the epoch: the time of the ``run.log`` or
        ``on_log`` call, which the run journal keeps, so ``tracklink sync`` replays a point with the time it had
        live. A tracker whose backend keeps a point once per (key, step, time, value), like MLflow, stamps its
        points with it, and a point sent again after a crash is not stored twice. The hub hands the times to
        trackers with a batch path of their own (:meth:`log_metrics_batch` overridden, ``on_log`` not), for
        the metrics and the summary of a log; for other points (``on_predict``, a direct ``on_log`` call, a
        tracker without a batch path) it is now."""
        times = self._tl.times
        index += self._tl.offset
        return times[index] if times is not None and 0 <= index < len(times) else time.time()

    def log_text(self, texts: dict[str, str], step: int) -> None:
        """Send string values; the default skips them with one warning per key."""
        for key in texts:
            self._warn_once(key, f"tracker {self.name!r} skipped non-numeric value of {key!r}")

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        """Send the final training summary (runtime, throughput, mean loss, FLOs)."""
        self.log_metrics(metrics, step, None)

    def log_media(self, values: dict[str, Media], step: int) -> None:
        """Send media values at ``step``: backend name -> :class:`~tracklink.media.Image`, ``Histogram``,
        ``Table`` or ``Figure``, only of the kinds declared in :attr:`media` (the base converts the others
        through their fallback first). Read a value with its worker-side methods (``Image.png()``,
        ``Histogram.histogram()``, ``Table.rows``, ...): encoding happens once, shared by the trackers."""

    def log_artifact(self, path: str, name: str, step: int) -> None:
        """Upload the file at ``path`` as ``name`` (a relative path: ``<key>/<step>.png`` for a converted
        value, ``<key>/<file name>`` for a logged :class:`~tracklink.media.File`). The file exists until the
        call returns: upload or copy it before returning. Override it to take files and fallbacks."""

    @classmethod
    def media_support(cls) -> frozenset[str]:
        """The kinds this tracker renders natively: :attr:`media` (what ``log_media`` takes), ``"text"``
        when it overrides ``log_text``, ``"file"`` when it overrides ``log_artifact``. Read from the class
        alone (no SDK import), for the matrix of ``tracklink plugins`` and the docs."""
        support = set(cls.media) & NATIVE_KINDS
        if cls.log_text is not Tracker.log_text:
            support.add("text")
        if cls.log_artifact is not Tracker.log_artifact:
            support.add("file")
        return frozenset(support)

    def log_checkpoint(self, path: str, state: Any) -> None:
        """Upload a checkpoint directory the trainer wrote (only called when ``uploads_checkpoints``)."""

    def unsent_count(self) -> int:
        """Optional: how many points this tracker took but its backend has not (an in-memory spool of its own,
        kept while the backend is unreachable). The run journal's cursor for this tracker moves only while this
        is 0, so that ``tracklink sync`` re-sends what the spool still held when the process ended."""
        return 0

    def run_identity(self) -> dict[str, Any] | None:
        """What identifies the run, so a resumed training can re-attach (e.g. ``{"run_id": ...}``)."""
        return None

    def finish(self, end: RunEnd) -> None:
        """Close the run. ``end`` is the status (``success``, ``failed`` or ``killed``: a ``str``) with what a
        tracker needs at the end (:class:`RunEnd`: the exception, exit code, last and best checkpoint, final
        model, ...). Called once, on the tracker's worker thread, by whatever loop drives the run."""

    def check_args(self, args: Any) -> None:
        """Optional: validate the training arguments. Called on the training thread when the trainer is
        built (before ``on_init_end``); an exception here propagates and refuses the configuration
        before any training step (unlike exceptions in hooks, which the hub isolates)."""

    def final_metrics(self) -> dict[str, float] | None:
        """Optional: metrics to add to the final training summary that every tracker receives (called
        on the training thread after this tracker's queue is drained, before the summary ``on_log``)."""
        return None

    def sanitize_metric_name(self, name: str) -> str:
        """Make a metric name acceptable to the backend (identity by default)."""
        return name

    @property
    def uploads_checkpoints(self) -> bool:
        """Whether ``on_save`` uploads checkpoint directories (the trainer then waits for this tracker
        before rotation deletes a checkpoint)."""
        return type(self).log_checkpoint is not Tracker.log_checkpoint

    # -- state shared by the base ------------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        """Whether a run is open."""
        return self._tl.active

    @property
    def identity(self) -> dict[str, Any] | None:
        """The identity of the current (or last) run."""
        return self._tl.identity

    @property
    def setup_finished(self) -> bool:
        """Whether no setup is queued or running (so :attr:`identity` is final for now)."""
        return not self._tl.setup_pending

    def state(self) -> dict[str, Any]:
        """Exported into ``trainer_state.json``: the run identity and the last step logged.

        Called on the training thread at every save, and never waits for the tracker: while the run's
        setup is still going on on the worker thread (a slow SDK import, a server that does not answer),
        the identity is not known yet and the checkpoint is written without it. The identity goes in
        when it is known: the worker adds it to that checkpoint's ``trainer_state.json`` when it
        handles the checkpoint's ``on_save`` (which comes after the setup in its queue).
        """
        return {"args": {}, "attributes": {"run": self._tl.identity, "last_step": self._tl.last_step}}

    def _record_identity(self, checkpoint_dir: str, state: Any) -> None:
        """Add this tracker's run identity to a checkpoint saved before the identity was known."""
        identity = self._tl.identity
        if identity is None or saved_attributes(state, self.state_key).get("run") is not None:
            return
        path = os.path.join(checkpoint_dir, STATE_FILE)
        try:
            with directory_lock(checkpoint_dir):  # other trackers (threads, or processes of their own) add theirs
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                entry = data.get("stateful_callbacks", {}).get(self.state_key)
                if not isinstance(entry, dict) or not isinstance(entry.get("attributes"), dict) \
                        or entry["attributes"].get("run") == identity:
                    return
                entry["attributes"]["run"] = identity
                # a checkpoint that rotation deleted meanwhile is not brought back as a folder with this file only
                atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", make_parents=False)
        except (OSError, ValueError, AttributeError) as exc:
            logger.debug("tracklink: could not add %s's run identity to %s: %r", self.name, path, exc)

    def load_state(self, saved: Mapping[str, Any]) -> None:
        """Remember a run identity so the next ``on_train_begin`` re-attaches to it (for hubs whose
        state does not carry this tracker's entry, e.g. the transformers bridge; tracklink's trainer
        needs no call: the restored state of ``on_train_begin`` carries the identity)."""
        attributes = saved.get("attributes", {}) if isinstance(saved, Mapping) else {}
        run = attributes.get("run")
        self._tl.resume = dict(run) if isinstance(run, Mapping) else None

    def close(self, end: str = "success") -> None:
        """Close the run once with ``end`` (a :class:`RunEnd`, or a bare status); later calls do nothing."""
        if not isinstance(end, RunEnd):
            end = RunEnd(end, step=self._tl.last_step, last_checkpoint=self._tl.last_checkpoint)
        with self._tl.lock:
            if not self._tl.active:
                return
            self._tl.active = False
            _open_trackers.discard(self)
            self.finish(end)

    # -- event handlers ----------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        with self._tl.lock:
            if self._tl.active:
                self.close("success")
            resume, self._tl.resume = self._tl.resume, None
            if resume is None and int(getattr(state, "global_step", 0) or 0) > 0:
                resume = self._identity_in(state)
            self._start(args, state, model, resume)

    def _identity_in(self, state: Any) -> dict[str, Any] | None:
        """The run identity this tracker saved in a checkpoint's state (the event's snapshot carries the
        restored ``stateful_callbacks``, so no state is shared with the training thread)."""
        run = saved_attributes(state, self.state_key).get("run")
        return dict(run) if isinstance(run, Mapping) else None

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, model: Any = None,
               **kwargs: Any) -> None:
        if logs and self._ensure_started(args, state, model):
            self._send(logs, state)

    def on_predict(self, args: Any, state: Any, control: Any, metrics: Any = None, model: Any = None,
                   **kwargs: Any) -> None:
        if metrics and self._ensure_started(args, state, model):
            self._send(metrics, state)

    def on_save(self, args: Any, state: Any, control: Any, checkpoint_dir: Any = None, **kwargs: Any) -> None:
        if checkpoint_dir:
            self._tl.last_checkpoint = str(checkpoint_dir)
            self._record_identity(str(checkpoint_dir), state)
        if checkpoint_dir and self._tl.active and self.uploads_checkpoints:
            self.log_checkpoint(str(checkpoint_dir), state)

    def _tracklink_holds_checkpoint(self) -> bool:
        """Whether the checkpoint just saved must outlive rotation until this tracker handled its
        ``on_save`` (it uploads checkpoints, or its run identity is still to be added to it)."""
        try:
            return bool(self.uploads_checkpoints) or self._tl.setup_pending
        except Exception:  # runs on the training thread: a tracker's broken property must not stop training
            return True

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.close(RunEnd.of_training("success", args, state, model, last_checkpoint=self._tl.last_checkpoint))

    def on_exception(self, args: Any, state: Any, control: Any, exception: Any = None, model: Any = None,
                     **kwargs: Any) -> None:
        # interrupted, SIGTERM'd, stopped by a search backend (Ray exits the trial), or pruned (Optuna)
        status = "killed" if is_killed(exception) else "failed"
        self.close(RunEnd.of_training(status, args, state, model, exception=exception,
                                      last_checkpoint=self._tl.last_checkpoint))

    def _tracklink_on_disabled(self) -> None:
        self._tl.setup_pending = False
        self._tl.setup_done.set()
        self.close("failed")

    def _tracklink_submitted(self, event: str) -> None:
        """Called by the hub on the training thread when an event is queued for this tracker."""
        if event == "on_train_begin":
            self._tl.setup_done.clear()
            self._tl.setup_pending = True

    # -- internals ---------------------------------------------------------------------------

    def _ensure_started(self, args: Any, state: Any, model: Any) -> bool:
        if self._tl.active:
            return True
        with self._tl.lock:
            if not self._tl.active:
                # a standalone evaluate()/predict(), or one after train() closed the run: re-attach
                # to the last run when there was one (a checkpoint's identity is for on_train_begin)
                self._start(args, state, model, self._tl.identity, training=False)
        return self._tl.active

    def _start(self, args: Any, state: Any, model: Any, resume: dict[str, Any] | None, training: bool = True) -> None:
        saved = getattr(args, "_tracklink_hparams", None)  # a replay: the views the journal kept
        config, args_config, model_config = saved if saved is not None else hyperparameters(args, model)
        search = saved_attributes(state, SEARCH_STATE_KEY) or None
        trial_name = getattr(state, "trial_name", None)
        if search and trial_name:
            # a trial is its own run, named after the trial; its hyper-parameters are in the params
            config = {**config, "trial_params": dict(getattr(state, "trial_params", None) or {})}
        run = RunInfo(
            args=args,
            state=state,
            model=model,
            name=redacted_name(trial_name if search and trial_name else getattr(args, "run_name", None)),
            config=config,
            params=flatten(config),
            resume=resume,
            start_step=int(getattr(state, "global_step", 0) or 0),
            output_dir=getattr(args, "output_dir", None),
            trial_name=trial_name,
            trial_params=getattr(state, "trial_params", None),
            search=search,
            args_config=args_config,
            model_config=model_config,
            project=getattr(args, "project", None),
            extra=dict((getattr(args, "init_kwargs", None) or {}).get(self.name) or {}),
            training=training,
            replay=bool(getattr(args, "_tracklink_replay", False)),
        )
        if run.extra and self.init_kwargs_target is None:
            self._warn_once("init_kwargs", f"tracker {self.name!r} takes no init_kwargs; ignored: {sorted(run.extra)}")
        self._tl.setup_done.clear()
        try:
            self.setup(run)
            self._tl.active = True
            self._tl.identity = self.run_identity()
            _open_trackers.add(self)
        except Exception as exc:
            raise TrackerSetupError(self.name or type(self).__name__, exc) from exc
        finally:
            self._tl.setup_pending = False
            self._tl.setup_done.set()

    def metric_name(self, key: str) -> str:
        """The backend name of a logged key (style rewrite, then sanitising).

        Two keys must never merge into one backend name (``loss@1`` and ``loss#1`` both sanitise to
        ``loss_1`` for MLflow): the later key gets a short, stable suffix derived from it, with a warning.
        """
        cached = self._tl.names.get(key)
        if cached is not None:
            return cached
        name = next(iter(rewrite_logs({key: None}))) if self.metric_style == "hf" else key
        name = self.sanitize_metric_name(name)
        owner = self._tl.owners.get(name)
        if owner is not None and owner != key:
            import hashlib  # lazy: only when two keys collide (stdlib, slow to import)

            suffix = hashlib.sha1(key.encode()).hexdigest()[:6]
            unique = self.sanitize_metric_name(f"{name}_{suffix}")
            if not unique.endswith(suffix):  # cut to the backend's length limit
                unique = self.sanitize_metric_name(f"{name[: max(1, len(name) - 7)]}_{suffix}")
            self._warn_once(f"merge:{key}", f"tracker {self.name!r} logs {key!r} as {unique!r}: its name "
                                            f"{name!r} is already used by {owner!r}")
            name = unique
        self._tl.owners[name] = key
        self._tl.names[key] = name
        return name

    def _send(self, logs: Mapping[str, Any], state: Any) -> None:
        self._send_many([(logs, state, None)])

    def _tracklink_batch(self, event: str, namespaces: list[Any]) -> bool:
        """Called by the hub with the queued ``on_log`` events (one, or several when the tracker fell behind),
        each with the time it was logged: their metrics reach :meth:`log_metrics` or :meth:`log_metrics_batch`
        in one call, in order. Returns ``False`` (the hub then hands the events over one by one, each isolated)
        when this tracker has no batch path of its own or handles ``on_log`` itself."""
        if not self._tracklink_takes_batches():
            return False
        ready = [(ns["logs"], ns["state"], getattr(ns, "when", None)) for ns in namespaces
                 if ns.get("logs") and self._ensure_started(ns["args"], ns["state"], ns.get("model"))]
        if ready:
            self._send_many(ready)
        return True

    def _tracklink_takes_batches(self) -> bool:
        """Whether this tracker has a batch path of its own (and leaves ``on_log`` to the base)."""
        cls = type(self)
        return cls.on_log is Tracker.on_log and cls.log_metrics_batch is not Tracker.log_metrics_batch

    def _send_many(self, logged: list[tuple[Mapping[str, Any], Any, float | None]]) -> None:
        """Send ``(logs, state, when)`` events: their metrics in one call, then the rest in order."""
        points: list[tuple[dict[str, float], int, float | None]] = []
        times: list[float] = []
        # summaries, texts, media, in order, after the metrics
        later: list[tuple[str, dict[str, Any], int, float | None]] = []
        for logs, state, when in logged:
            step, metrics, summary, texts, media = self._shape(logs, state)
            if metrics:
                points.append((metrics, step, getattr(state, "epoch", None)))
                times.append(time.time() if when is None else when)
            if summary:
                later.append(("summary", summary, step, when))
            if texts:
                later.append(("text", texts, step, when))
            if media:
                later.append(("media", media, step, when))
            self._tl.last_step = max(self._tl.last_step, step)
        self._tl.times = times
        try:
            if len(points) == 1:
                self.log_metrics(*points[0])
            elif points:
                self.log_metrics_batch(points)
            for kind, values, step, when in later:
                self._tl.times = None if when is None else [when]  # a summary sent as metrics: its log's time
                if kind == "summary":
                    self.log_summary(values, step)
                elif kind == "text":
                    self.log_text(values, step)
                else:
                    self._send_media(values, step)
        finally:
            self._tl.times = None

    # -- media ----------------------------------------------------------------------------------

    def _send_media(self, values: dict[str, Media], step: int) -> None:
        """Route each media value (logged key -> snapshot): to :meth:`log_media` when this tracker renders
        its kind, else through its fallback (:func:`tracklink.media.outcome`), else left out. Problems with
        one value are warned about (once per key) and never stop the others."""
        support = self.media_support()
        native: dict[str, Media] = {}
        texts: dict[str, str] = {}
        for key, value in values.items():
            try:
                self._route_media(key, value, step, support, native, texts)
            except MediaError as exc:
                self._warn_once(f"media:{key}", f"tracker {self.name!r} left out {value.kind} {key!r}: {exc}")
        if native:
            self.log_media(native, step)
        if texts:
            self.log_text(texts, step)

    def _route_media(self, key: str, value: Media, step: int, support: frozenset[str],
                     native: dict[str, Media], texts: dict[str, str]) -> None:
        if value.problem is not None:
            raise MediaError(value.problem)
        name = self.metric_name(key)
        reserved = next((p for p in self.media_reserved if fnmatchcase(name, p)), None)
        if reserved is not None:
            raise MediaError(f"{name!r} is a key {self.name} reserves (pattern {reserved!r}); log the "
                             f"{value.kind} under another key")
        result = outcome(value.kind, support)
        if result == "dropped":
            self._warn_once(f"media:{key}", f"tracker {self.name!r} cannot show {value.kind} values in any form "
                            f"(it renders {', '.join(sorted(support)) or 'no media'}); {key!r} is left out. "
                            "`tracklink plugins` shows what each tracker renders")
            return
        if result != "native":
            self._note_once(f"fallback:{key}", f"tracker {self.name!r} has no native {value.kind}: {key!r} "
                            f"is logged as {result} (see docs/media.md)")
        if isinstance(value, Histogram):
            value.histogram(key)  # binned once (NaN/inf left out, with a warning naming the key), shared
            if result == "native":
                self._check_bins(key, value)
                native[name] = value
                return
            value = value.to_image(key)
        elif isinstance(value, Figure):
            if result == "native":
                native[name] = value
                return
            value = value.to_image(key)
        if isinstance(value, Image):
            self._check_image(key, value)
            if "image" in support:
                native[name] = value
            else:
                self._upload(value.png(), f"{safe_name(name)}/{step}.png", step)
        elif isinstance(value, Table):
            if result == "native":
                native[name] = value
            elif "file" in support:
                self._upload(value.csv().encode(), f"{safe_name(name)}/{step}.csv", step)
            else:
                texts[name] = value.markdown()
        elif isinstance(value, Text):
            if "text" in support:
                texts[name] = value.text
            else:
                self._upload(value.text.encode(), f"{safe_name(name)}/{step}.txt", step)
        elif isinstance(value, File):
            self.log_artifact(value.path, f"{safe_name(name)}/{value.name}", step)

    def _check_image(self, key: str, image: Image) -> None:
        limit = self.max_image_bytes
        if limit is not None and len(image.png()) > limit:
            raise MediaError(f"the image is {len(image.png()) / 2**20:.1f} MiB as PNG ({image.width}x{image.height}), "
                             f"more than {self.name}'s limit of {limit / 2**20:g} MiB; accepted: a smaller image "
                             "(resize it), or tracklink.File(path) to upload it as a file")

    def _check_bins(self, key: str, histogram: Histogram) -> None:
        limit = self.max_histogram_bins
        if limit is not None and histogram.bin_count > limit:
            raise MediaError(f"it has {histogram.bin_count} bins, more than {self.name}'s limit of {limit}; "
                             f"accepted: tracklink.Histogram(values, bins=<= {limit})")

    def _upload(self, data: bytes, name: str, step: int) -> None:
        """Hand ``data`` to :meth:`log_artifact` as a file named ``name`` (removed when the call returns)."""
        with TempFiles() as files:
            self.log_artifact(files.write(data, name), name, step)

    def _note_once(self, key: str, message: str) -> None:
        """An expected, documented change (a fallback): said once per key, at INFO level."""
        if key not in self._tl.warned:
            self._tl.warned.add(key)
            logger.info("tracklink: %s", message)

    def _shape(self, logs: Mapping[str, Any], state: Any) -> tuple[int, dict[str, float], dict[str, float],
                                                                     dict[str, str], dict[str, Media]]:
        """A log as ``(step, metrics, summary, texts, media)``: numbers and texts under the backend's names,
        media values under their logged keys (named when routed)."""
        step = int(getattr(state, "global_step", 0) or 0)
        # the trainer's final summary (train_runtime, train_loss, ...) goes to log_summary; the same keys in any
        # other log (a loop's per-step "train_loss") are ordinary metrics
        summary_keys = self.summary_keys if "train_runtime" in logs else frozenset()
        metrics: dict[str, float] = {}
        summary: dict[str, float] = {}
        texts: dict[str, str] = {}
        media: dict[str, Media] = {}
        for key, raw in logs.items():
            value = as_number(raw)
            if value is None:
                if isinstance(raw, str):
                    texts[self.metric_name(key)] = raw
                elif isinstance(raw, Media):
                    media[key] = raw
                else:
                    self._warn_once(
                        key, f"tracker {self.name!r} skipped {key!r}: {type(raw).__name__} is not a number"
                    )
                continue
            if isinstance(value, float) and not math.isfinite(value):
                logger.debug("tracker %r: %s is %s", self.name, key, value)
            target = summary if key in summary_keys else metrics
            target[self.metric_name(key)] = value
        return step, metrics, summary, texts, media

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._tl.warned:
            self._tl.warned.add(key)
            logger.warning("tracklink: %s (warned once per key)", message)


def declared_environment() -> dict[str, bool]:
    """Every environment variable a tracker declares, mapped to whether it is a secret.

    Covers the plugins registered in the ``tracklink.trackers`` entry-point group (built-in and
    third-party) and every loaded :class:`Tracker` subclass (e.g. one only passed in ``callbacks=``).
    Reads declarations only: plugin modules are loaded, tracker SDKs are not imported, and a plugin
    that fails to load declares nothing. A name several trackers declare is secret when any says so.
    """
    from .registry import discover  # lazy: entry points are package metadata, read only when asked

    declared: list[Any] = []
    for spec in discover().values():
        declared.extend(spec.env_vars)
    stack: list[type[Tracker]] = [Tracker]
    while stack:
        cls = stack.pop()
        declared.extend(cls.env_vars)
        stack.extend(cls.__subclasses__())
    names: dict[str, bool] = {}
    for var in declared:
        name = getattr(var, "name", None)
        if isinstance(name, str) and name:
            names[name] = names.get(name, False) or bool(getattr(var, "secret", False))
    return names


def close_open_trackers() -> None:
    """Close every run still open (interpreter exit, after the tracker queues were drained)."""
    for tracker in list(_open_trackers):
        if busy(tracker):  # its worker still delivers: it closes the run itself when it gets there
            logger.warning("tracklink: tracker %r is still delivering at exit; its run is not closed", tracker.name)
            continue
        try:
            tracker.close("success")
        except Exception as exc:  # pragma: no cover - best effort at shutdown
            logger.debug("tracklink: closing %r at exit failed: %r", tracker.name, exc)


on_exit("trackers", close_open_trackers)
