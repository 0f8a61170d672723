"""``Run``: the trackers of one training run, whichever loop drives it.

A run owns what tracklink does for trackers: the ``report_to`` resolution, rank policies, one isolated
worker queue per tracker, redaction, the run identities a restarted job re-attaches to, and the run's
status at the end (also after an exception or SIGTERM). Loops drive it in one of two ways, through the
same hub and therefore the same snapshots, queues and isolation:

* **by events**: tracklink's ``Trainer`` and the transformers bridge fire the training events
  (``on_train_begin``, ``on_log``, ``on_save``, ``on_train_end``, ``on_exception``) into ``run.hub``;
* **by calls**: a hand-written loop (:func:`tracklink.init`), the Lightning logger and the Accelerate
  tracker call :meth:`Run.log`, :meth:`Run.log_checkpoint` and :meth:`Run.finish`, which the run turns
  into those same events.

Trackers implement only the tracker contract (:class:`tracklink.Tracker`: ``setup``, ``log_metrics``,
``log_text``, ``log_summary``, ``log_checkpoint``, ``finish``); they never see which loop drives them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .atomic import atomic_write_text, claim_directory
from .errors import ReportToError
from .followers import stays_in_process
from .handler import CallbackHandler
from .media import Media
from .process import ProcessInfo
from .resolve import NOT_GIVEN, Resolution, canonical_name, resolve_report_to
from .shutdown import on_exit, uncaught_exception
from .signals import SigtermGuard, ignoring_sigterm, restore_sigterm
from .state import TrainerControl, TrainerState, state_key
from .system import SystemSampler, system_metrics_interval, system_prefix
from .tracker import Tracker
from .values import as_number, plain_logs

logger = logging.getLogger("tracklink")

__all__ = ["RUN_FILE", "Run", "RunArgs", "check_init_kwargs", "init", "refuse_unknown_keywords"]

#: The file in a run's directory that keeps its trackers' run identities (for ``resume``).
RUN_FILE = "tracklink-run.json"
#: Seconds between two looks at the journal for the identities of trackers in processes of their own.
IDENTITY_LOOK_S = 1.0
RESUME_CHOICES = (None, False, True, "allow", "must", "never")
_open_runs: weakref.WeakSet[Run] = weakref.WeakSet()


class RunArgs:
    """What trackers see as ``args`` in a run without ``TrainingArguments``: the run's directory, name,
    project and per-tracker ``init_kwargs``; ``to_dict()`` is the run's config (the hyper-parameters a
    tracker logs, redacted by the tracker base like the trainer's arguments)."""

    def __init__(self, *, output_dir: str, run_name: str | None, project: str | None,
                 config: Mapping[str, Any], init_kwargs: Mapping[str, Mapping[str, Any]], report_to: list[str]):
        self.output_dir = output_dir
        self.run_name = run_name
        self.project = project
        self.config = dict(config)
        self.init_kwargs = {k: dict(v) for k, v in init_kwargs.items()}
        self.report_to = report_to
        self.logging_dir: str | None = None
        self.load_best_model_at_end = False
        self.metric_for_best_model: str | None = None
        self.save_total_limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.config)


def add_trackers(hub: CallbackHandler, resolution: Resolution, process: ProcessInfo,
                 skip: Iterable[str] = ()) -> None:
    """Create the selected trackers that this process's rank runs, and register them in ``hub``. Offline
    (``TRACKLINK_OFFLINE=1``) no tracker is built: the hub records their events in the run journal only,
    on the processes their rank policies name, for ``tracklink sync``."""
    skipped = set(skip)
    offline = hub.journal_settings.offline
    for spec in resolution.selected_specs():
        if spec.name in skipped or not process.allows(spec.rank_policy):
            continue  # never built on a rank its policy excludes
        if offline:
            hub.add_offline(spec.name, spec.rank_policy)
            continue
        tracker = spec.create()
        if hub.journal_settings.processes:
            reason = stays_in_process(tracker, spec.inline)
            if reason is None:
                hub.add_follower(spec.name, spec.rank_policy, state_key(tracker),
                                 identifies=type(tracker).run_identity is not Tracker.run_identity)
                continue
            logger.info("tracklink: TRACKLINK_DELIVERY=process: tracker %r stays in the training process (%s)",
                        spec.name, reason)
        hub.add_tracker(tracker, spec.name, rank_policy=spec.rank_policy, inline=spec.inline)


class Run:
    """The trackers of one run (see the module documentation).

    ``Run(resolution, hub=...)`` gathers the trackers into a hub for a driver that fires training events;
    :func:`tracklink.init` (``Run.start``) also starts the run for a loop that calls :meth:`log`.
    ``system_metrics`` (``None``: ``TRACKLINK_SYSTEM_METRICS`` decides) is checked here, before any tracker
    is built; see :meth:`start_system_metrics`.
    """

    def __init__(self, resolution: Resolution, *, hub: CallbackHandler | None = None,
                 process: ProcessInfo | None = None, callbacks: Iterable[Any] = (), skip: Iterable[str] = (),
                 system_metrics: Any = None):
        #: seconds between system-metrics samples, or None when they are off
        self.system_interval = system_metrics_interval(system_metrics)
        self.system: SystemSampler | None = None  #: this process's sampler, while one runs
        self._system_on = False
        self.process = process or ProcessInfo.from_env()
        self.resolution = resolution
        self.hub = hub if hub is not None else CallbackHandler(process=self.process, require_flow=False)
        add_trackers(self.hub, resolution, self.process, skip)
        for callback in callbacks:
            self.hub.add_callback(callback)
        self.args: Any = None
        self.state: TrainerState | None = None
        self.control = TrainerControl()
        self.dir: Path | None = None
        self.name: str | None = None
        self._step = 0
        self._logged = False
        self._finished = False
        self._identities_saved = False
        self._identity_look_at = 0.0
        self._saved_follower_identities: dict[str, Any] = {}
        self._warned: set[str] = set()
        self._guard = SigtermGuard()

    # -- what every driver can ask --------------------------------------------------------------

    @property
    def trackers(self) -> dict[str, Any]:
        """The active tracker plugins of this process, by ``report_to`` name."""
        return self.hub.trackers

    @property
    def identities(self) -> dict[str, dict[str, Any] | None]:
        """Each tracker's run identity (``None`` until its setup finished on its worker thread, or, for a tracker
        in a process of its own, until that process stored it in the run journal)."""
        identities = {name: plugin.identity for name, plugin in self.trackers.items() if isinstance(plugin, Tracker)}
        identities.update(self.hub.follower_identities())
        return identities

    def log_banner(self) -> None:
        """The start-of-training lines: the active trackers, and the ones skipped for a reason worth telling."""
        resolution = self.resolution
        active = list(self.trackers)
        if self.hub.offline:
            logger.info("tracklink: trackers: %s (offline: recorded in the run journal only, sent later by "
                        "`tracklink sync`)", ", ".join(self.hub.offline))
        elif self.hub.followed:
            logger.info("tracklink: trackers: %s (in processes of their own, following the run journal)%s",
                        ", ".join(self.hub.followed), f"; {', '.join(active)}" if active else "")
        else:
            logger.info("tracklink: trackers: %s", ", ".join(active) if active else "none")
        # a plugin that failed to load is always shown (it was meant to be used); one whose SDK is simply
        # not installed is not (every uninstalled tracker would be listed)
        broken = {name for name, spec in resolution.specs.items() if spec.load_error}
        skipped = [
            f"{name} ({reason})" for name, reason in resolution.skipped.items()
            if (name in broken or resolution.specs[name].availability() is None)
            and reason not in ("not named in report_to", "report_to is 'none'")
        ]
        if skipped:
            logger.log(logging.WARNING if broken & set(resolution.skipped) else logging.INFO,
                       "tracklink: skipped: %s", "; ".join(skipped))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every tracker handled what was logged so far (``False`` on timeout)."""
        return self.hub.wait_for_trackers(timeout)

    def failures(self) -> dict[str, str]:
        """One summary line per tracker that failed."""
        return self.hub.tracker_failures()

    # -- system metrics (tracklink.system) --------------------------------------------------------

    @property
    def system_metrics_on(self) -> bool:
        """Whether system metrics are being collected for this run (true on every process of it, also on
        those that do not sample: a driver that gathers the nodes' samples decides with this on every rank)."""
        return self._system_on

    def start_system_metrics(self, *, per_node: bool = False) -> None:
        """Start sampling system metrics when they are switched on: on the world main process only, or with
        ``per_node`` on each node's local main process (for a driver that brings the nodes' samples to the world
        main process itself, as the Trainer does at log time). Names: ``system/...``, ``system/node<N>/...``
        when the run has more than one process."""
        if self.system_interval is None or self._system_on:
            return
        self._system_on = True
        if self.process.is_local_main if per_node else self.process.is_world_main:
            sampler = SystemSampler(self.system_interval, system_prefix(self.process))
            self.system = sampler if sampler.start() else None

    def system_sample(self) -> dict[str, float] | None:
        """The newest system-metrics sample of this process not handed out yet (each sample once), else
        ``None``; a reference read, never a measurement (the dict must not be modified)."""
        return self.system.take() if self.system is not None else None

    def stop_system_metrics(self) -> None:
        """Stop the sampler (its thread ends); nothing when system metrics are off."""
        self._system_on = False
        sampler, self.system = self.system, None
        if sampler is not None:
            sampler.stop()

    # -- a run driven by calls --------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        report_to: Any = NOT_GIVEN,
        *,
        project: str | None = None,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        dir: str | os.PathLike[str] | None = None,
        resume: bool | str | None = None,
        init_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        callbacks: Iterable[Any] = (),
        model: Any = None,
        handle_sigterm: bool = True,
        step: int | None = None,
        system_metrics: Any = None,
    ) -> Run:
        """Resolve ``report_to``, build this rank's trackers and start their runs (see :func:`init`).

        ``handle_sigterm=False`` leaves SIGTERM alone (a driver whose framework stops on SIGTERM itself).
        ``step``: when re-attaching, continue at this step rather than the last one recorded (a resume from
        an older checkpoint): trackers drop or overwrite what they hold after it, as for the trainer."""
        if resume not in RESUME_CHOICES:
            raise ValueError(f"resume={resume!r} is not accepted; accepted: None, True, 'allow', 'must', 'never'")
        interval = system_metrics_interval(system_metrics)
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config={config!r} ({type(config).__name__}) is not accepted; pass a dict of "
                            "hyper-parameters (an argparse.Namespace: vars(args))")
        for label, value in (("project", project), ("name", name)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{label}={value!r} ({type(value).__name__}) is not accepted; pass a string")
        resolution = resolve_report_to(report_to)
        per_tracker = check_init_kwargs(init_kwargs, resolution)
        if resume not in (None, False) and dir is None and name is None:
            raise ValueError(f"resume={resume!r} needs dir= (or name=): the run directory is where the "
                             "identities of the runs to re-attach to are kept")
        if dir is not None:
            directory = Path(dir)
        elif name is not None:
            directory = Path("tracklink-runs") / name
        else:  # named by the second: claimed, so two runs started together never share one
            directory = Path(claim_directory(Path("tracklink-runs") / _default_name()))
        saved = _read_run_file(directory) if resume not in (None, False) else None
        if resume == "must" and saved is None:
            raise ValueError(f"resume='must', but {directory / RUN_FILE} does not exist: there is no run to "
                             "re-attach to (use resume=True to start one when there is none)")
        if resume == "never" and (directory / RUN_FILE).exists():
            raise ValueError(f"resume='never', but {directory} already holds a run ({RUN_FILE}); choose another "
                             "dir or name, or resume it with resume=True")

        run = cls(resolution, callbacks=callbacks, system_metrics=False if interval is None else interval)
        run.dir, run.name = directory, name
        run.args = RunArgs(output_dir=str(directory), run_name=name, project=project, config=config or {},
                           init_kwargs=per_tracker, report_to=list(resolution.names))
        run.state = TrainerState(is_local_process_zero=run.process.is_local_main,
                                 is_world_process_zero=run.process.is_world_main)
        run.hub.model = model
        if saved is not None:
            run._step = int(saved.get("step") or 0) if step is None else int(step)
            run._logged = bool(saved.get("logged")) and step is None
            run.state.global_step = run._step
            run.hub.restore_tracker_states(saved.get("trackers") or {})
        if run.process.is_world_main:
            directory.mkdir(parents=True, exist_ok=True)
        on_exit("runs", _finish_open_runs)
        _open_runs.add(run)
        # SIGTERM (a scheduler stopping the job) ends the runs as killed, also outside a ``with`` block;
        # a SIGTERM handler the program installed itself is left alone
        if handle_sigterm:
            run._guard.install(only_if_default=True)
        run.hub.on_init_end(run.args, run.state, run.control)
        if run.process.is_world_main:
            run.log_banner()
        run.hub.call_event("on_train_begin", run.args, run.state, run.control)
        run._save()
        run.start_system_metrics()  # world main only: the other nodes' local mains cannot reach its trackers
        return run

    def log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        """Log ``values`` (numbers, one-element tensors or arrays, strings, media values such as
        ``tracklink.Image``: see :mod:`tracklink.media`) at ``step``.

        Without ``step`` the run counts on from the last step (0 first). Steps may repeat but never go
        backwards (a backend such as W&B would drop such points silently): a smaller step is an error.
        Keys follow transformers' naming per tracker (``loss`` is ``train/loss`` in TensorBoard and W&B,
        ``eval_loss`` is ``eval/loss``; MLflow keeps the keys as they are).
        """
        state = self._started("log")
        if not isinstance(values, Mapping):
            raise TypeError(f"run.log() takes a dict of values, got {type(values).__name__}")
        logs = {}
        for key, value in plain_logs(values, "run.log()").items():
            if isinstance(value, (str, Media)) or as_number(value) is not None:
                logs[key] = value
            elif key not in self._warned:
                self._warned.add(key)
                logger.warning("tracklink: run.log() left out %r: %s is neither a number nor text",
                               key, type(value).__name__)
        state.global_step = self._next_step(step)
        if "epoch" in logs and as_number(logs["epoch"]) is not None:
            state.epoch = float(logs["epoch"])
        for key, value in (self.system_sample() or {}).items():  # a new sample, once; the caller's keys win
            logs.setdefault(key, value)
        self.hub.call_event("on_log", self.args, state, self.control, logs=logs)
        if not self._identities_saved:
            self._save_when_identified()

    def log_checkpoint(self, path: str | os.PathLike[str], step: int | None = None) -> None:
        """Hand a checkpoint directory (or file) to the trackers that upload checkpoints, at ``step``
        (default: the last step logged). Trackers upload directories: a file is handed over inside
        ``<dir>/tracklink-checkpoints/<name>-<step>/`` (a hard link to it, or a copy across file systems)."""
        state = self._started("log_checkpoint")
        if not os.path.exists(path):
            raise FileNotFoundError(f"run.log_checkpoint({str(path)!r}): no such file or directory")
        if step is not None:
            state.global_step = self._next_step(step)
        folder = Path(path)
        if folder.is_file():
            folder = self._checkpoint_folder(folder, state.global_step)
        self.hub.call_event("on_save", self.args, state, self.control, checkpoint_dir=str(folder))
        self._save()

    def finish(self, status: str | None = None, exception: BaseException | None = None) -> None:
        """Close every tracker's run: as ``failed`` or ``killed`` when ``exception`` is given (``killed`` for
        an interrupt or SIGTERM) or ``status`` says so, else as ``success``. Everything logged is delivered
        first (within ``TRACKLINK_DRAIN_TIMEOUT``). A second call does nothing."""
        if self.state is None or self._finished:
            return
        if status not in (None, "success", "failed", "killed"):
            raise ValueError(f"status={status!r} is not accepted; accepted: 'success', 'failed', 'killed'")
        self._finished = True
        _open_runs.discard(self)
        self.stop_system_metrics()
        if exception is None and status == "failed":
            exception = RuntimeError("run.finish(status='failed')")
        elif exception is None and status == "killed":
            exception = KeyboardInterrupt()
        previous = ignoring_sigterm() if exception is not None else None
        try:
            if exception is None:
                self.hub.on_train_end(self.args, self.state, self.control)
            else:
                self.hub.on_exception(self.args, self.state, self.control, exception=exception)
        finally:
            restore_sigterm(previous)
            self._guard.restore()
            self._save()
            if self.hub.journal is not None:  # nothing can be logged after finish(): the journal is complete
                self.hub.journal.close()

    def __enter__(self) -> Run:
        """``with tracklink.init(...) as run:`` — SIGTERM inside the block ends the runs as ``killed``, an
        exception as ``failed``; leaving the block normally ends them as ``success``."""
        self._guard.install()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.finish(exception=value)

    # -- internals --------------------------------------------------------------------------------

    def _started(self, what: str) -> TrainerState:
        if self.state is None:
            raise RuntimeError(f"run.{what}() needs a started run; create it with tracklink.init(...)")
        if self._finished:
            raise RuntimeError(f"run.{what}() after run.finish(): this run's trackers are closed; start a new "
                               "run with tracklink.init(...) (resume=True continues the same runs)")
        return self.state

    def _next_step(self, step: Any) -> int:
        if step is None:
            step = self._step + 1 if self._logged else self._step
        elif isinstance(step, bool) or as_number(step) is None or float(as_number(step) or 0) != int(as_number(step) or 0):
            raise TypeError(f"step={step!r} is not accepted; pass a whole number >= 0, or leave it out")
        step = int(as_number(step) or 0)
        if step < 0:
            raise ValueError(f"step={step} is not accepted; steps are whole numbers >= 0")
        if self._logged and step < self._step:
            raise ValueError(f"step={step} goes backwards: this run already logged step {self._step}. Steps must not "
                             "decrease (W&B would drop such points silently); log at step >= "
                             f"{self._step}, or leave step out")
        self._step, self._logged = step, True
        return step

    def _checkpoint_folder(self, file: Path, step: int) -> Path:
        folder = (self.dir or file.parent) / "tracklink-checkpoints" / f"{file.stem}-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / file.name
        if target.exists():
            target.unlink()
        try:
            os.link(file, target)
        except OSError:  # another file system, or no hard links there
            shutil.copy2(file, target)
        return folder

    def _save_when_identified(self) -> None:
        if self.dir is None or not self.process.is_world_main:
            self._identities_saved = True  # this process writes no run file
            return
        if not all(t.setup_finished for t in self.trackers.values() if isinstance(t, Tracker)):
            return
        if self.hub.followed:  # their identities are in the journal: looked at once a second, not at every log
            now = time.monotonic()
            if now < self._identity_look_at:
                return
            self._identity_look_at = now + IDENTITY_LOOK_S
            if self.hub.follower_identities() == self._saved_follower_identities:
                return
        self._save()

    def _save(self) -> None:
        """Write the run file: the trackers' identities and the last step (world main process only)."""
        if self.dir is None or not self.process.is_world_main:
            return
        trackers = self.hub.tracker_states()
        self._saved_follower_identities = self.hub.follower_identities()
        self._identities_saved = all(t.setup_finished for t in self.trackers.values() if isinstance(t, Tracker)) \
            and self.hub.followers_identified()
        data = {"format": 1, "name": self.name, "project": getattr(self.args, "project", None),
                "report_to": list(self.resolution.names), "step": self._step, "logged": self._logged,
                "finished": self._finished, "trackers": trackers}
        try:
            atomic_write_text(self.dir / RUN_FILE, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        except OSError as exc:
            logger.warning("tracklink: could not write %s (a restarted job cannot resume its runs): %s",
                           self.dir / RUN_FILE, exc)


def init(
    project: str | None = None,
    *,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    report_to: Any = NOT_GIVEN,
    dir: str | os.PathLike[str] | None = None,
    resume: bool | str | None = None,
    init_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    callbacks: Iterable[Any] = (),
    model: Any = None,
    system_metrics: Any = None,
    **unknown: Any,
) -> Run:
    """Start a run for a hand-written training loop, in the spirit of ``wandb.init``::

        with tracklink.init(project="spirals", config={"lr": 3e-4}, report_to=["tensorboard", "mlflow"]) as run:
            for step, batch in enumerate(loader):
                ...
                run.log({"loss": loss.item()}, step=step)

    ``project``: the project / experiment the trackers file the run under (W&B project, MLflow experiment,
    Comet project, ...; default: each tracker's own variable such as ``WANDB_PROJECT``). ``name``: the run's
    name. ``config``: the hyper-parameters (redacted before any tracker sees them). ``report_to``: as for the
    trainer (default ``TRACKLINK_REPORT_TO`` or ``"all"``). ``dir``: the run's directory (default
    ``tracklink-runs/<name>``), where trackers that write files put them and where the run identities are
    kept. ``resume``: ``True``/``"allow"`` re-attaches every tracker to the runs recorded in ``dir`` when
    there are any, ``"must"`` requires them, ``"never"`` refuses an existing one. ``init_kwargs``: extra
    settings per tracker (``{"wandb": {"entity": "team"}, "mlflow": {"tags": {...}}}``). ``callbacks``:
    extra tracklink plugins. ``model``: the model, for trackers that describe or upload it.
    ``system_metrics``: CPU, memory and GPU metrics sampled on a background thread and logged with the next
    ``run.log`` under ``system/`` (``None``: ``TRACKLINK_SYSTEM_METRICS`` decides; ``True``: every 10 s; a
    number: every that many seconds; ``False``: off).

    Under ``torchrun`` call it on every process: each tracker acts on the ranks its rank policy names (the
    main process by default), the other processes get a run that logs nothing. System metrics are sampled on
    the world main process only (its node, ``system/node0/...``).
    """
    refuse_unknown_keywords("tracklink.init()", unknown, (
        "project", "name", "config", "report_to", "dir", "resume", "init_kwargs", "callbacks", "model", "system_metrics"))
    return Run.start(report_to, project=project, name=name, config=config, dir=dir, resume=resume,
                     init_kwargs=init_kwargs, callbacks=callbacks, model=model, system_metrics=system_metrics)


def refuse_unknown_keywords(caller: str, unknown: Iterable[str], accepted: Sequence[str]) -> None:
    """A ``TypeError`` naming each unknown keyword argument of ``caller`` (with the accepted name it most
    resembles) and every accepted one; nothing when ``unknown`` is empty. For drivers that take ``**unknown``."""
    unknown = list(unknown)
    if not unknown:
        return
    import difflib  # lazy: only for a mistake

    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), list(accepted), n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(f"{caller} got unknown keyword argument(s) {', '.join(hints)}; accepted: {', '.join(accepted)}")


def check_init_kwargs(init_kwargs: Mapping[str, Any] | None, resolution: Resolution) -> dict[str, dict[str, Any]]:
    """``init_kwargs`` by canonical tracker name; a key that names no tracker is an error, one that names a
    tracker this run does not use is warned about."""
    if init_kwargs is None:
        return {}
    if not isinstance(init_kwargs, Mapping):
        raise TypeError(f"init_kwargs={init_kwargs!r} is not accepted; pass a dict of per-tracker dicts, e.g. "
                        '{"wandb": {"entity": "team"}}')
    out: dict[str, dict[str, Any]] = {}
    for key, settings in init_kwargs.items():
        name = canonical_name(str(key), resolution.specs)
        if name not in resolution.specs:
            import difflib  # lazy: only for a mistake

            close = difflib.get_close_matches(str(key), list(resolution.specs), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ReportToError(f"init_kwargs names {key!r}, which is not a tracker.{hint} Known trackers: "
                                f"{', '.join(resolution.specs)}")
        if not isinstance(settings, Mapping):
            raise TypeError(f"init_kwargs[{key!r}]={settings!r} is not accepted; pass a dict of settings")
        if name not in resolution.names:
            logger.warning("tracklink: init_kwargs for %r are ignored: %r is not among this run's trackers (%s)",
                           key, name, ", ".join(resolution.names) or "none")
        out[name] = dict(settings)
    return out


def _default_name() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S") + f"-{os.getpid()}"


def _read_run_file(directory: Path) -> dict[str, Any] | None:
    path = directory / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read ({exc}); it does not describe a run to resume") from None
    if not isinstance(data, dict) or not isinstance(data.get("trackers", {}), dict):
        raise ValueError(f"{path} does not describe a run to resume (expected a JSON object with 'trackers')")
    return data


def _finish_open_runs() -> None:
    """At interpreter exit: a run nobody finished ends as failed after an uncaught exception, else as success."""
    exception = uncaught_exception()
    for run in list(_open_runs):
        try:
            run.finish(exception=exception)
        except Exception as exc:  # pragma: no cover - best effort at shutdown
            logger.debug("tracklink: closing run %s at exit failed: %r", run.name, exc)
