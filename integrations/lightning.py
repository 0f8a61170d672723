"""Use tracklink's trackers from PyTorch Lightning and Lightning Fabric.

``TracklinkLogger`` is a ``lightning.pytorch`` logger backed by one tracklink :class:`~tracklink.run.Run`,
so a Lightning user gets tracklink's trackers with isolation (a tracker that raises never stops ``fit``),
non-blocking delivery, redaction, failed/killed status and resume::

    import lightning.pytorch as pl
    from tracklink.integrations.lightning import TracklinkLogger

    logger = TracklinkLogger(report_to=["tensorboard", "mlflow"], project="spirals", name="lr-3e-4",
                             dir="runs/lr-3e-4")
    trainer = pl.Trainer(logger=logger, max_epochs=3)
    trainer.fit(model, datamodule)

and in Fabric (a Fabric logger is the same class)::

    fabric = lightning.fabric.Fabric(loggers=[logger])
    logger.log_hyperparams({"lr": 3e-4})
    fabric.log_dict({"loss": loss}, step=step)
    logger.finalize("success")

What Lightning calls, and what the run does:

``log_hyperparams(params)``   merged into the run's config (a dict or an ``argparse.Namespace``; later calls
                              win key by key). The run starts with this config, redacted before any tracker
                              sees it. Values that arrive once the run has started are kept and reach the
                              trackers when the run next starts (the next ``fit``/``validate``/``test`` with
                              this logger, which re-attaches to the same runs), with one warning.
``log_graph(model)``          remembers the model (trackers that describe it: parameter count, W&B watch).
``save()``                    starts the run once Lightning has logged the hyper-parameters and the model
                              at the start of ``fit``/``validate``/``test``, so the runs exist (and end as
                              failed) even when a stage fails before its first metrics.
``log_metrics(metrics, step)``  :meth:`Run.log` at Lightning's step (the run starts here if it has not).
``after_save_checkpoint(cb)``  the checkpoint files ``ModelCheckpoint`` just wrote go to the trackers that
                              upload checkpoints (:meth:`Run.log_checkpoint`), see *Checkpoints* below.
``finalize(status)``          :meth:`Run.finish`. ``"success"`` and ``"finished"`` end the runs as
                              ``success``. ``"failed"`` (which Lightning passes for every exception,
                              ``KeyboardInterrupt`` and SIGTERM alike) ends them as ``killed`` when the
                              exception being handled is an interrupt or Lightning's ``SIGTERMException``,
                              else as ``failed``; ``"killed"``, ``"interrupted"`` and ``"aborted"`` end them
                              as ``killed``. Another status is an error.

A logger outlives ``finalize``: Lightning finalizes its loggers at the end of every ``fit``, ``validate``,
``test`` and ``predict``. The next call that logs re-opens the same runs (``resume=True`` on the run's
directory), so ``trainer.fit(model); trainer.test(model)`` gives one run per tracker.

Steps: metrics go to the trackers at the step Lightning passes (the trainer's
``_batches_that_stepped``, or a ``step`` the module logged; in Fabric the ``step`` of ``log_dict``, or the
last step + 1 when there is none). Several calls at one step are normal. tracklink's steps never go
backwards (a backend such as W&B would drop such points silently), and Lightning sends smaller steps in
normal use: step-level validation metrics (``self.log(..., on_step=True)`` in ``validation_step``) count
from 0 in every validation, a new ``Trainer`` reusing the logger starts again at 0, and a job resumed from
a checkpoint older than the last step logged replays steps. Such values are logged at the last step the
run has logged (nothing is dropped), with one warning per logger.

Checkpoints: Lightning saves checkpoints as files (``epoch=0-step=8.ckpt``, ``last.ckpt``) while tracklink's
trackers upload checkpoint directories. The files that ``ModelCheckpoint`` saved since the last hand-off are
hard-linked (no copy; a symbolic link when the run directory is on another file system) into
``<dir>/tracklink-checkpoints/checkpoint-<step>/`` and that directory is handed to
:meth:`Run.log_checkpoint`, only when a tracker of the run uploads checkpoints (MLflow with
``HF_MLFLOW_LOG_ARTIFACTS``, W&B with ``WANDB_LOG_MODEL=checkpoint``, ...). A hand-off directory is removed
once its checkpoint files were deleted by Lightning (``save_top_k``) and no tracker still needs it, and
at ``finalize``. A checkpoint that is a directory (sharded strategies) is handed over as it is.

Where files go: the logger's ``save_dir``, ``root_dir`` and ``log_dir`` are the run's directory ``dir``
(default ``tracklink-runs/<name>``), and ``name`` and ``version`` are empty, so Lightning's default
checkpoint directory is ``<dir>/checkpoints`` and ``trainer.log_dir`` is ``<dir>``.

Ranks: Lightning builds the logger on every process but calls it on global rank 0 only (``rank_zero_only``);
the run, and therefore each tracker's run, exists on that process alone. Under DDP every tracker opens one
run. A tracker whose rank policy is ``local_main`` (CodeCarbon) or ``all`` acts on rank 0 only.

Failure status and SIGTERM: in a ``Trainer``, Lightning handles SIGTERM itself (it stops at the end of the
batch and finalizes the loggers with ``"failed"`` while its ``SIGTERMException`` propagates): the runs end
as ``killed`` after what was logged is delivered. In Fabric nothing calls ``finalize`` on an error: an
uncaught exception ends the runs as ``failed`` at interpreter exit (tracklink's exit hook), and from the
start of the run to ``finalize`` SIGTERM raises :class:`tracklink.Terminated` in the main thread (tracklink's
run arms its SIGTERM guard while SIGTERM has its default action): the script stops, the runs end as
``killed``, and the process exits with status 143. In a ``Trainer`` the logger disarms that guard when it
starts the run, so that Lightning's own SIGTERM handling (the end of the batch, all ranks) applies.

Resume: ``TracklinkLogger(dir=..., resume=True)`` in a restarted job re-attaches every tracker to the runs
recorded in ``<dir>/tracklink-run.json`` (``"must"`` requires them, ``"never"`` refuses an existing one), so
``trainer.fit(model, ckpt_path="last")`` continues the same W&B/MLflow/... runs.

This module imports lightning (and therefore torch); ``import tracklink`` and ``import
tracklink.integrations`` do not.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from tracklink.resolve import NOT_GIVEN, resolve_report_to
from tracklink.run import RESUME_CHOICES, RUN_FILE, Run, check_init_kwargs, refuse_unknown_keywords
from tracklink.values import as_number

logger = logging.getLogger("tracklink")

__all__ = ["STATUSES", "TracklinkLogger"]

#: Lightning's ``finalize`` statuses (and tracklink's own) -> the status the run ends with.
STATUSES: dict[str, str] = {
    "success": "success",
    "finished": "success",
    "failed": "failed",
    "killed": "killed",
    "interrupted": "killed",
    "aborted": "killed",
}
#: The folder of the run directory that holds the checkpoint hand-off directories.
HANDOFF_DIR = "tracklink-checkpoints"
_ACCEPTED = ("report_to", "project", "name", "config", "dir", "resume", "init_kwargs", "callbacks")


class TracklinkLogger(Logger):
    """A Lightning logger that drives a tracklink run (see the module documentation).

    Args:
        report_to: tracklink's ``report_to`` (``"all"``, ``"none"``, names; default ``TRACKLINK_REPORT_TO``
            or ``"all"``), resolved now: unknown names and missing SDKs fail here, not during ``fit``.
        project: the project / experiment the trackers file the run under (W&B project, MLflow experiment,
            Comet project, ...; default: each tracker's own variable such as ``MLFLOW_EXPERIMENT_NAME``).
        name: the run's name.
        config: initial hyper-parameters (``log_hyperparams`` adds to them).
        dir: the run's directory: where file-writing trackers and Lightning's checkpoints go and where the
            run identities are kept (default ``tracklink-runs/<name>``, or a name made of the time and the
            process id).
        resume: as for :func:`tracklink.init`: ``True``/``"allow"`` re-attaches every tracker to the runs
            recorded in ``dir`` when there are any, ``"must"`` requires them, ``"never"`` refuses an
            existing one. Needs ``dir`` or ``name``.
        init_kwargs: settings per tracker (``{"wandb": {"entity": "team"}, "mlflow": {"tags": {...}}}``).
        callbacks: extra tracklink plugins (``Tracker`` instances, ``@tracklink.hookimpl`` objects).
    """

    def __init__(
        self,
        report_to: Any = NOT_GIVEN,
        *,
        project: str | None = None,
        name: str | None = None,
        config: Mapping[str, Any] | argparse.Namespace | None = None,
        dir: str | os.PathLike[str] | None = None,
        resume: bool | str | None = None,
        init_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        callbacks: Iterable[Any] = (),
        **unknown: Any,
    ) -> None:
        refuse_unknown_keywords("TracklinkLogger()", unknown, _ACCEPTED)
        for label, value in (("project", project), ("name", name)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{label}={value!r} ({type(value).__name__}) is not accepted; pass a string")
        if resume not in RESUME_CHOICES:
            raise ValueError(f"resume={resume!r} is not accepted; accepted: None, True, 'allow', 'must', 'never'")
        if resume not in (None, False) and dir is None and name is None:
            raise ValueError(f"resume={resume!r} needs dir= (or name=): the run directory is where the identities "
                             "of the runs to re-attach to are kept")
        super().__init__()
        resolution = resolve_report_to(report_to)  # fail now on an unknown name or a missing SDK
        check_init_kwargs(init_kwargs, resolution)  # and on init_kwargs that name no tracker
        self._directory = Path(dir) if dir is not None else Path("tracklink-runs") / (name or _default_name())
        if rank_zero_only.rank == 0:
            if resume == "must" and not (self._directory / RUN_FILE).exists():
                raise ValueError(f"resume='must', but {self._directory / RUN_FILE} does not exist: there is no run "
                                 "to re-attach to (use resume=True to start one when there is none)")
            if resume == "never" and (self._directory / RUN_FILE).exists():
                raise ValueError(f"resume='never', but {self._directory} already holds a run ({RUN_FILE}); choose "
                                 "another dir or name, or resume it with resume=True")
        self.report_to = report_to
        self.project = project
        self.run_name = name
        self.resume = resume
        self.init_kwargs = init_kwargs
        self.callbacks = list(callbacks)
        self._config: dict[str, Any] = _params(config, "config") if config is not None else {}
        self._model: Any = None
        self._run: Run | None = None
        self._last_run: Run | None = None
        self._starts = 0
        self._pending = False  # Lightning began a stage (hyper-parameters/model logged) since the last finalize
        self._trainer = False  # driven by a Trainer (it handles SIGTERM itself)
        self._floor = 0  # the last step the run logged: smaller steps are logged here
        self._handed: dict[str, int] = {}  # checkpoint path -> mtime (ns) when handed over
        self._warned: set[str] = set()

    # -- what Lightning asks -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Empty: Lightning's directories (``<save_dir>/<name>/<version>/checkpoints``) are the run's own."""
        return ""

    @property
    def version(self) -> str:
        """Empty (see :attr:`name`)."""
        return ""

    @property
    def save_dir(self) -> str:
        """The run's directory (``dir``)."""
        return str(self._directory)

    @property
    def root_dir(self) -> str:
        """The run's directory (``dir``)."""
        return str(self._directory)

    @property
    def log_dir(self) -> str:
        """The run's directory (``dir``)."""
        return str(self._directory)

    @property
    def run(self) -> Run | None:
        """The tracklink run: the open one, else the last one (``None`` before the first start and on the
        processes other than global rank 0)."""
        return self._run if self._run is not None else self._last_run

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | argparse.Namespace, *args: Any, **kwargs: Any) -> None:
        """Merge ``params`` into the run's config (see the module documentation)."""
        if args or kwargs:
            raise TypeError(f"TracklinkLogger.log_hyperparams() takes only params, got "
                            f"{len(args)} more positional and {sorted(kwargs)} keyword argument(s)")
        values = _params(params, "params")
        changed = sorted(key for key, value in values.items()
                         if key not in self._config or not _same(self._config[key], value))
        self._config.update(values)
        self._pending = True
        if self._run is not None and changed:
            self._warn_once("late-params", "tracklink: hyper-parameters logged after the run started (%s) reach the "
                            "trackers when the run next starts (the next fit/validate/test with this logger); "
                            "log them before the first metrics to have them from the start",
                            ", ".join(changed[:10]) + (", ..." if len(changed) > 10 else ""))

    @rank_zero_only
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Remember the model, for trackers that describe it (Lightning calls this at the start of a stage)."""
        self._model = model
        self._trainer = True
        self._pending = True

    @rank_zero_only
    def save(self) -> None:
        """Start the run once a stage began (Lightning calls this after logging the hyper-parameters)."""
        if self._run is None and self._pending:
            self._start()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """:meth:`tracklink.Run.log` at ``step``; a step smaller than the last one logged is logged at the
        last one (see the module documentation)."""
        if not isinstance(metrics, Mapping):
            raise TypeError(f"log_metrics() takes a dict of metrics, got {type(metrics).__name__}")
        if not metrics:
            return
        run = self._start()
        number = as_number(step) if step is not None and not isinstance(step, bool) else None
        if number is not None and 0 <= number < self._floor:
            self._warn_once("step", "tracklink: %s logged at step %s after step %s; tracklink's steps never go "
                            "backwards, so values logged at a smaller step are logged at the last step logged "
                            "(warned once)", ", ".join(sorted(map(str, metrics))[:5]), step, self._floor)
            step = self._floor
        run.log(metrics, step=step)
        self._floor = max(self._floor, int(run.state.global_step if run.state is not None else 0))

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Hand the checkpoints ``checkpoint_callback`` saved since the last call to the trackers that upload
        checkpoints (see the module documentation)."""
        self._trainer = True
        new = self._new_checkpoints(checkpoint_callback)
        if not new:
            return
        run = self._start()
        if not run.hub.trackers_uploading():
            return
        step = getattr(checkpoint_callback, "_last_global_step_saved", None)
        step = int(step) if isinstance(step, int) and not isinstance(step, bool) else self._floor
        files = [path for path in new if os.path.isfile(path)]
        handoffs = [path for path in new if os.path.isdir(path)]
        if files:
            staged = self._stage(files, step)
            if staged is not None:
                handoffs.insert(0, str(staged))
        for path in handoffs:
            # at the run's current step: a checkpoint's global step can run ahead of Lightning's logging step
            # (several optimizers), and the run's steps must not move past steps Lightning will still log
            run.log_checkpoint(path)
        self._prune(run)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """End the run (see the module documentation for the statuses); the next call that logs re-opens it."""
        if status not in STATUSES:
            raise ValueError(f"finalize(status={status!r}): the status is not accepted; accepted: "
                             f"{', '.join(STATUSES)}")
        if self._run is None:
            if not self._pending:
                return  # nothing began since the last finalize: no run to end
            self._start()  # a stage that failed before its first metrics still ends its runs
        run = self._run
        assert run is not None
        self._run, self._pending = None, False
        end = STATUSES[status]
        exception = sys.exc_info()[1] if end != "success" else None
        if end == "killed" and not isinstance(exception, (KeyboardInterrupt, SystemExit)):
            exception = None
        try:
            if end == "success":
                run.finish()
            elif exception is not None:
                run.finish(exception=exception)  # killed for an interrupt or SIGTERM, else failed
            else:
                run.finish(status=end)
        finally:
            self._prune(run, final=True)

    # -- pickling (ddp_spawn sends the logger to the new processes) --------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_run=None, _last_run=None, _model=None)
        return state

    # -- internals ---------------------------------------------------------------------------------

    def _start(self) -> Run:
        if self._run is not None:
            return self._run
        run = Run.start(
            self.report_to, project=self.project, name=self.run_name, config=dict(self._config),
            dir=self._directory, resume=self.resume if self._starts == 0 else True,
            init_kwargs=self.init_kwargs, callbacks=self.callbacks, model=self._model,
            # a Trainer registers its own SIGTERM handler (it stops every rank at the end of a batch and
            # finalizes the loggers with "failed"); the run's guard would raise in mid-step instead
            handle_sigterm=not self._trainer,
        )
        self._run = self._last_run = run
        self._starts += 1
        self._floor = int(run.state.global_step if run.state is not None else 0)
        return run

    def _new_checkpoints(self, callback: Any) -> list[str]:
        """The checkpoints ``callback`` knows (last, best, top k) that are new or rewritten since handed over."""
        candidates = [getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")]
        candidates += list(getattr(callback, "best_k_models", None) or {})
        new = []
        for path in dict.fromkeys(str(p) for p in candidates if p):
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                continue  # gone already, or not a local path
            if self._handed.get(path) != mtime:
                self._handed[path] = mtime
                new.append(path)
        return new

    def _stage(self, files: list[str], step: int) -> Path | None:
        """Hard-link ``files`` into a new ``checkpoint-<step>`` hand-off directory (see the module docs)."""
        root = self._directory / HANDOFF_DIR
        target = root / f"checkpoint-{step}"
        hub = self._run.hub if self._run is not None else None
        suffix = 1
        while target.exists() and hub is not None and hub.checkpoint_in_use(str(target)):
            suffix += 1
            target = root / f"checkpoint-{step}-{suffix}"
        shutil.rmtree(target, ignore_errors=True)
        try:
            target.mkdir(parents=True)
            seen: set[tuple[int, int]] = set()
            for path in files:
                source = os.path.realpath(path)
                info = os.stat(source)
                if (info.st_dev, info.st_ino) in seen:
                    continue  # last.ckpt linked to a top-k checkpoint: the same file
                seen.add((info.st_dev, info.st_ino))
                destination = target / os.path.basename(path)
                try:
                    os.link(source, destination)
                except OSError:
                    os.symlink(source, destination)
        except OSError as exc:
            self._warn_once("stage", "tracklink: could not prepare the checkpoints %s for the trackers (%s); they are "
                            "not uploaded", ", ".join(files), exc)
            shutil.rmtree(target, ignore_errors=True)
            return None
        return target

    def _prune(self, run: Run, final: bool = False) -> None:
        """Remove the hand-off directories no tracker needs any more: at the end of the run all of them, else
        those whose checkpoint files Lightning deleted."""
        root = self._directory / HANDOFF_DIR
        if not root.is_dir():
            return
        for staged in root.iterdir():
            if run.hub.checkpoint_in_use(str(staged)):
                continue
            if final or all(_orphaned(file) for file in staged.iterdir()):
                shutil.rmtree(staged, ignore_errors=True)
        if final:
            try:
                root.rmdir()
            except OSError:
                pass  # a tracker still uploads from it (the drain timed out)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)


def _params(params: Any, label: str) -> dict[str, Any]:
    if isinstance(params, argparse.Namespace):
        params = vars(params)
    if not isinstance(params, Mapping):
        raise TypeError(f"{label}={params!r} ({type(params).__name__}) is not accepted; pass a dict of "
                        "hyper-parameters or an argparse.Namespace")
    return {str(key): value for key, value in params.items()}


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # tensors, arrays: no single truth value
        return False


def _orphaned(file: Path) -> bool:
    """Whether a hand-off link is all that is left of its checkpoint file."""
    try:
        if file.is_symlink():
            return not file.exists()
        return file.stat().st_nlink <= 1
    except OSError:
        return True


def _default_name() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S") + f"-{os.getpid()}"
