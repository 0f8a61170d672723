"""Use tracklink's trackers from Hugging Face Accelerate.

``TracklinkTracker`` is an Accelerate ``GeneralTracker`` backed by one tracklink :class:`~tracklink.run.Run`,
so an Accelerate script gets tracklink's trackers with isolation, non-blocking delivery, redaction, failure
status and resume::

    from accelerate import Accelerator
    from tracklink.integrations.accelerate import TracklinkTracker

    tracker = TracklinkTracker(report_to=["tensorboard", "mlflow"], run_name="lr-3e-4", dir="runs/lr-3e-4")
    accelerator = Accelerator(log_with=[tracker])
    accelerator.init_trackers("spirals", config={"lr": 3e-4})   # the run starts: project and config
    ...
    accelerator.log({"loss": loss.item()}, step=step)             # run.log(...)
    accelerator.end_training()                                    # run.finish()

Do not list Accelerate's own trackers for the same backend as well (``log_with=[tracker, "mlflow"]`` would
open two MLflow runs).

By name: importing this module registers the class with Accelerate's ``register_tracker_class`` (in the
versions that have it, such as 1.15), so ``Accelerator(log_with="tracklink")`` works and the settings go
through ``init_trackers(..., init_kwargs={"tracklink": {"report_to": [...], "dir": ...}})``; Accelerate
then builds the tracker itself and passes ``project_name`` as its first argument. In older versions pass
an instance.

Project and configuration: Accelerate hands an *instance* neither ``project_name`` nor ``init_kwargs``;
it calls ``start()`` and then, when ``config`` is given, ``store_init_configuration(config)``. The tracker
therefore starts its run as late as it can: in ``store_init_configuration`` when ``init_trackers`` has a
``config`` (so the configuration is what the trackers receive when their runs start), in ``start()``
otherwise, and at the first ``log``/``finish`` in versions that call neither. ``project_name`` is read
from the arguments of the ``Accelerator.init_trackers`` call that calls the tracker (its caller's frame;
read only, nothing of Accelerate is patched); ``TracklinkTracker(project=...)`` takes precedence. The
run's directory defaults to ``<Accelerator logging_dir>/<project_name>`` when the Accelerator has a
``project_dir``/``logging_dir``, else to tracklink's default (``tracklink-runs/<run_name>``).

Ranks: Accelerate calls trackers on the main process only (``init_trackers`` and ``log`` run there alone,
and ``main_process_only`` is set); there the run applies tracklink's rank policies as usual. A tracker
whose policy is ``local_main`` or ``all`` therefore acts on the main process only under Accelerate.

Failure status: an uncaught exception ends the run as ``failed`` at interpreter exit (tracklink's exit
hook); ``end_training()`` called while an exception propagates (``try: ... finally:
accelerator.end_training()``) ends it as ``failed`` (``killed`` after ``KeyboardInterrupt``). While the
run is open, SIGTERM raises :class:`tracklink.Terminated` in the main thread (unless the script installed a
SIGTERM handler of its own): the script stops, the runs end as ``killed`` after what was logged is
delivered, and the process exits with status 143.

This module imports accelerate (and therefore torch); ``import tracklink`` and ``import
tracklink.integrations`` do not.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from types import FrameType
from typing import Any

from accelerate import Accelerator
from accelerate import tracking as _accelerate_tracking
from accelerate.tracking import GeneralTracker, on_main_process

import tracklink
from tracklink.errors import Terminated
from tracklink.resolve import NOT_GIVEN, resolve_report_to
from tracklink.run import Run, refuse_unknown_keywords

logger = logging.getLogger("tracklink")

__all__ = ["TracklinkTracker", "register"]

_ACCEPTED = ("project", "run_name", "report_to", "dir", "resume", "init_kwargs", "callbacks", "model")


class TracklinkTracker(GeneralTracker):
    """An Accelerate tracker that drives a tracklink run (see the module documentation).

    Args:
        project: the project / experiment the trackers file the run under (W&B project, MLflow experiment,
            ...). Default: the ``project_name`` of ``accelerator.init_trackers(project_name, ...)``.
        run_name: the run's name (tracklink's ``name``).
        report_to: tracklink's ``report_to`` (``"all"``, ``"none"``, names; default
            ``TRACKLINK_REPORT_TO`` or ``"all"``), resolved now: unknown names and missing SDKs fail here.
        dir: the run's directory, where file-writing trackers put their files and the run identities are
            kept (default: ``<logging_dir>/<project_name>`` of the Accelerator when it has one, else
            ``tracklink-runs/<run_name>``).
        resume: as for :func:`tracklink.init`: ``True``/``"allow"`` re-attaches every tracker to the runs
            recorded in ``dir``, ``"must"`` requires them, ``"never"`` refuses an existing one.
        init_kwargs: settings per tracker (``{"wandb": {"entity": "team"}, "mlflow": {"tags": {...}}}``).
        callbacks: extra tracklink plugins (``Tracker`` instances, ``@tracklink.hookimpl`` objects).
        model: the model, for trackers that describe or upload it.
    """

    name = "tracklink"
    requires_logging_directory = False
    main_process_only = True

    def __init__(
        self,
        project: str | None = None,
        *,
        run_name: str | None = None,
        report_to: Any = NOT_GIVEN,
        dir: str | os.PathLike[str] | None = None,
        resume: bool | str | None = None,
        init_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        callbacks: Iterable[Any] = (),
        model: Any = None,
        **unknown: Any,
    ) -> None:
        refuse_unknown_keywords("TracklinkTracker()", unknown, _ACCEPTED)
        for label, value in (("project", project), ("run_name", run_name)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{label}={value!r} ({type(value).__name__}) is not accepted; pass a string")
        super().__init__()
        resolve_report_to(report_to)  # fail now on an unknown name or a missing SDK, not at init_trackers
        self.project = project
        self.run_name = run_name
        self.report_to = report_to
        self.dir = dir
        self.resume = resume
        self.init_kwargs = init_kwargs
        self.callbacks = list(callbacks)
        self.model = model
        self._run: Run | None = None
        self._config: Mapping[str, Any] | None = None
        self._default_dir: str | None = None
        self._finished = False
        self._warned: set[str] = set()

    # -- what Accelerate asks ----------------------------------------------------------------------

    @property
    def tracker(self) -> Run | None:
        """The tracklink run (``None`` until it started); ``accelerator.get_tracker("tracklink", unwrap=True)``."""
        return self._run

    @property
    def run(self) -> Run | None:
        """The tracklink run (``None`` until it started)."""
        return self._run

    @on_main_process
    def start(self) -> None:
        """Called by ``init_trackers``: start the run now, unless a configuration follows (it is started by
        ``store_init_configuration`` then, so its trackers receive the configuration)."""
        call = self._read_init_trackers()
        if call is not None and call.get("config") is None:
            self._start_run()

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        """The configuration of ``init_trackers(config=...)``: the run starts with it (redacted before any
        tracker sees it). A configuration given after the run started is not logged (with a warning)."""
        self._read_init_trackers()
        if not isinstance(values, Mapping):
            raise TypeError(f"config={values!r} ({type(values).__name__}) is not accepted; pass a dict of "
                            "hyper-parameters (an argparse.Namespace: vars(args))")
        if self._run is None and not self._finished:
            self._config = values
            self._start_run()
        else:
            self._warn_once("config", "tracklink: store_init_configuration() after the run started: trackers receive "
                            "the configuration when their runs start, so these values are not logged; pass "
                            "config= to accelerator.init_trackers()")

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """``accelerator.log(values, step=...)``: :meth:`tracklink.Run.log` (numbers, one-element tensors,
        text; a nested dict is flattened to ``outer/inner`` keys). Steps never go backwards."""
        if kwargs:
            raise TypeError(f"TracklinkTracker.log() takes no log_kwargs, got {sorted(kwargs)}; tracklink's "
                            "trackers take their settings from init_kwargs= and environment variables")
        if self._finished:
            raise RuntimeError("accelerator.log() after accelerator.end_training(): this run's trackers are "
                               "closed; a new TracklinkTracker (resume=True with the same dir continues the same runs)")
        if not isinstance(values, Mapping):
            raise TypeError(f"accelerator.log() takes a dict of values, got {type(values).__name__}")
        self._started().log(_flat(values), step=step)

    @on_main_process
    def log_checkpoint(self, path: str | os.PathLike[str], step: int | None = None) -> None:
        """Hand a checkpoint (e.g. the directory of ``accelerator.save_state(path)``) to the trackers that
        upload checkpoints: :meth:`tracklink.Run.log_checkpoint`."""
        self._started().log_checkpoint(path, step=step)

    @on_main_process
    def finish(self) -> None:
        """``accelerator.end_training()``: every tracker's run ends, ``success``, or ``failed``/``killed``
        when it is called while an exception propagates; what was logged is delivered first."""
        if self._finished:
            return
        exception = sys.exc_info()[1]
        if isinstance(exception, SystemExit) and not isinstance(exception, Terminated) and exception.code in (0, None):
            exception = None  # sys.exit() / sys.exit(0) is a success
        self._close(exception)

    # -- internals ---------------------------------------------------------------------------------

    def _read_init_trackers(self) -> dict[str, Any] | None:
        """The arguments of the ``Accelerator.init_trackers`` call on the stack, if one called this tracker:
        its ``project_name`` becomes the run's project (unless ``project=`` was given) and its Accelerator's
        ``logging_dir`` the default run directory."""
        call = _init_trackers_call()
        if call is None:
            return None
        project_name = call.get("project_name")
        if isinstance(project_name, str) and project_name:
            if self.project is None:
                self.project = project_name
            elif self.project != project_name:
                self._warn_once("project", f"tracklink: TracklinkTracker(project={self.project!r}) is used; "
                                f"init_trackers({project_name!r}) does not change it")
        if self.dir is None and self._default_dir is None:
            logging_dir = getattr(call.get("self"), "logging_dir", None)
            if logging_dir:
                self._default_dir = os.path.join(os.fspath(logging_dir), project_name or "tracklink")
        init_kwargs = call.get("init_kwargs")
        built_by_accelerate = not any(t is self for t in getattr(call.get("self"), "log_with", None) or ())
        if isinstance(init_kwargs, Mapping) and self.name in init_kwargs and not built_by_accelerate:
            self._warn_once("init_kwargs", "tracklink: init_trackers(init_kwargs={'tracklink': ...}) is not passed to "
                            "a TracklinkTracker instance (Accelerate passes init_kwargs only to trackers it builds "
                            "by name); pass the settings to TracklinkTracker(...)")
        return call

    def _start_run(self) -> Run:
        if self._run is not None:
            return self._run
        directory = self.dir if self.dir is not None else self._default_dir
        self._run = tracklink.init(
            self.project, name=self.run_name, config=self._config, report_to=self.report_to, dir=directory,
            resume=self.resume, init_kwargs=self.init_kwargs, callbacks=self.callbacks, model=self.model,
        )
        return self._run

    def _started(self) -> Run:
        return self._run if self._run is not None else self._start_run()

    def _close(self, exception: BaseException | None) -> None:
        run = self._started()
        self._finished = True
        run.finish(exception=exception)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)


def register() -> bool:
    """Register :class:`TracklinkTracker` under ``"tracklink"`` with Accelerate (``log_with="tracklink"``), in
    the versions that have ``accelerate.tracking.register_tracker_class``. Importing this module does it;
    returns whether this Accelerate can."""
    register_tracker_class = getattr(_accelerate_tracking, "register_tracker_class", None)
    if register_tracker_class is None:
        return False
    registered = getattr(_accelerate_tracking, "LOGGER_TYPE_TO_CLASS", {}).get(TracklinkTracker.name)
    if registered is not TracklinkTracker:
        with warnings.catch_warnings():
            if registered is not None and registered.__module__ == __name__:
                # this module imported again (importlib.reload): replacing our own class is expected
                warnings.simplefilter("ignore")
            register_tracker_class(TracklinkTracker)
    return True


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"train": 1.0}}`` -> ``{"loss/train": 1.0}`` (Accelerate's TensorBoard tracker takes a dict
    value as a group of scalars)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{name}/"))
        else:
            out[name] = value
    return out


def _init_trackers_call(depth: int = 8) -> dict[str, Any] | None:
    """The local variables of the ``Accelerator.init_trackers`` frame that (indirectly, through Accelerate's
    ``on_main_process`` wrappers) called the tracker method asking, or ``None``."""
    frame: FrameType | None = sys._getframe(2)
    try:
        for _ in range(depth):
            if frame is None:
                return None
            if frame.f_code.co_name == "init_trackers" and isinstance(frame.f_locals.get("self"), Accelerator):
                return dict(frame.f_locals)
            frame = frame.f_back
        return None
    finally:
        del frame


register()
