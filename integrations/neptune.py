"""Neptune tracker (``report_to="neptune"``), on the neptune 1.x client (``neptune.init_run``).

Neptune's hosted service (neptune.ai) has been shut down; this plugin serves self-hosted Neptune servers
(``mode="async"``/``"sync"``) and the client's ``offline`` and ``debug`` modes.

What is logged where (``<ns>`` is ``base_namespace``, default ``finetuning``):

* ``<ns>/train/loss``, ``<ns>/train/learning_rate``, ``<ns>/train/grad_norm``, ``<ns>/train/epoch``,
  ``<ns>/eval/<metric>``, ``<ns>/test/<metric>``: float series appended with ``step=global_step``
  (``train/epoch`` is a series too, where transformers assigned a single value);
* the final summary (``<ns>/train/train_runtime``, ``.../train_loss``, ...): single float fields;
* string logs: string series at the same step;
* media values: ``tracklink.Image`` appended to a file series ``<ns>/<key>`` (the PNG tracklink encoded,
  with its caption as the description; Neptune takes images under 32 MiB, larger ones are left out with a
  warning), ``Text`` to a string series; ``File`` values and fallbacks uploaded as ``<ns>/<key>/<name>``
  (a histogram or a figure becomes an image, a table a CSV file). Offline, the file's bytes are kept in
  Neptune's own queue (``File.from_content``), so they survive until ``neptune sync``;
* ``<ns>/trainer_parameters`` and ``<ns>/model_parameters``: the redacted training arguments and model
  config (``log_parameters=True``); ``source_code/integrations/tracklink``: tracklink's version;
* checkpoints (``log_checkpoints``): each file of ``checkpoint-N/`` as a file field
  ``<ns>/checkpoints/checkpoint-N/<file>``; ``same`` keeps every checkpoint, ``last`` only the newest,
  ``best`` only the best one (needs ``load_best_model_at_end``, else refused when the Trainer is built);
* ``<ns>/status``: ``success``, ``failed`` or ``killed`` at the end; ``sys/failed`` = True unless success.

Variables: ``NEPTUNE_API_TOKEN`` (secret), ``NEPTUNE_PROJECT``, ``NEPTUNE_MODE`` (read by the SDK).
Resume: the run id is stored in the checkpoint and the run is re-opened with ``init_run(with_id=...)``;
offline and debug runs cannot be re-opened (the client has no store to find them in), so a resumed
offline run is a new run with ``<ns>/resumed_from`` naming the earlier one.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar

from tracklink import __version__
from tracklink.envvars import EnvVar
from tracklink.media import Image, Media
from tracklink.redact import redacted_upload
from tracklink.shaping import param_value
from tracklink.tracker import RunEnd, RunInfo, Tracker

__all__ = ["NeptuneCallback"]

logger = logging.getLogger("tracklink")

CHECKPOINT_POLICIES = ("same", "last", "best")
MODES = ("async", "sync", "offline", "debug")
REOPENABLE_MODES = ("async", "sync", "read-only")  # modes whose backend can find an existing run
# Keyword arguments of neptune.init_run (1.x) besides project/api_token/name.
RUN_KWARGS = frozenset({
    "with_id", "custom_run_id", "mode", "description", "tags", "source_files", "capture_stdout",
    "capture_stderr", "capture_hardware_metrics", "fail_on_exception", "monitoring_namespace",
    "flush_period", "proxies", "capture_traceback", "git_ref", "dependencies", "async_lag_callback",
    "async_lag_threshold", "async_no_progress_callback", "async_no_progress_threshold",
})
# Nothing that could carry a secret (source files, git remotes, console output) unless asked for.
SAFE_DEFAULTS: dict[str, Any] = {
    "source_files": [], "git_ref": False, "capture_stdout": False, "capture_stderr": False,
}
QUIET = {"capture_hardware_metrics": False, "capture_stdout": False, "capture_stderr": False,
         "capture_traceback": False}


def _import_neptune() -> Any:
    with warnings.catch_warnings():  # neptune 1.x imports jsonschema.RefResolver (DeprecationWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return NeptuneCallback.import_sdk()


def _neptune_value(value: Any) -> Any:
    """A value Neptune can assign: mappings nested (Neptune namespaces), numbers/strings/bools as is, the
    rest as text."""
    if isinstance(value, dict):
        return {str(k): _neptune_value(v) for k, v in value.items() if str(k)}
    return param_value(value)


class NeptuneCallback(Tracker):
    """Logs metrics, parameters and checkpoints to a Neptune run.

    Args:
        api_token: Neptune API token (default: ``NEPTUNE_API_TOKEN``); never logged.
        project: ``workspace/project`` (default: ``NEPTUNE_PROJECT``).
        name: the run's name (default: ``TrainingArguments.run_name``).
        base_namespace: namespace of everything this plugin logs (default ``finetuning``).
        run: an existing ``neptune.Run`` to log into (used for the first training; it is flushed,
            never stopped, at the end: it is yours).
        log_parameters: log the training arguments and model config.
        log_checkpoints: ``None`` (default), ``"same"``, ``"last"`` or ``"best"``.
        **neptune_run_kwargs: passed to ``neptune.init_run`` (``mode``, ``tags``, ``capture_*``, ...).
    """

    name = "neptune"
    sdk = ("neptune", "neptune-client")  # neptune-client >= 1.0 is the same SDK under its former name
    sdk_min_version = "1.0"
    sdk_module = "neptune"
    extra = "neptune"
    media = frozenset({"image"})
    max_image_bytes = 32 * 2**20  # neptune.internal.utils.limits: images smaller than 32 MB
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("NEPTUNE_API_TOKEN", None, "API token of your Neptune server (not needed offline).",
               secret=True, read_by="sdk"),
        EnvVar("NEPTUNE_PROJECT", None, "Project as workspace/project (not needed offline).", read_by="sdk"),
        EnvVar("NEPTUNE_MODE", "async", "Connection mode: async, sync (a server), offline (queue on disk "
               "under ./.neptune, upload later with `neptune sync`) or debug (in memory).",
               choices=MODES, read_by="sdk"),
    )

    def __init__(self, *, api_token: str | None = None, project: str | None = None, name: str | None = None,
                 base_namespace: str = "finetuning", run: Any = None, log_parameters: bool = True,
                 log_checkpoints: str | None = None, **neptune_run_kwargs: Any) -> None:
        for arg, value, types, accepted in (
            ("api_token", api_token, (str, type(None)), "a string or None"),
            ("project", project, (str, type(None)), "'workspace/project' or None"),
            ("name", name, (str, type(None)), "a string or None"),
            ("base_namespace", base_namespace, (str,), "a non-empty string"),
            ("log_parameters", log_parameters, (bool,), "True or False"),
        ):
            if not isinstance(value, types):
                raise TypeError(f"NeptuneCallback({arg}={value!r}): expected {accepted}, got {type(value).__name__}")
        if not base_namespace.strip("/"):
            raise ValueError(f"NeptuneCallback(base_namespace={base_namespace!r}): expected a non-empty namespace")
        if log_checkpoints is not None and log_checkpoints not in CHECKPOINT_POLICIES:
            raise ValueError(
                f"NeptuneCallback(log_checkpoints={log_checkpoints!r}) is not accepted; accepted values: "
                f"{', '.join(map(repr, CHECKPOINT_POLICIES))} or None"
            )
        unknown = sorted(set(neptune_run_kwargs) - RUN_KWARGS)
        if unknown:
            raise TypeError(f"NeptuneCallback got unknown neptune.init_run argument(s) {', '.join(unknown)}; "
                            f"accepted: {', '.join(sorted(RUN_KWARGS))}")
        mode = neptune_run_kwargs.get("mode")
        if mode is not None and mode not in MODES:
            raise ValueError(f"NeptuneCallback(mode={mode!r}) is not accepted; accepted values: {', '.join(MODES)}")
        self._api_token = api_token
        self._project = project
        self._run_name = name
        self.base_namespace = base_namespace.strip("/")
        self.log_parameters = log_parameters
        self.log_checkpoints = log_checkpoints
        self._run_kwargs = neptune_run_kwargs
        self._given_run = run
        self._run: Any = None
        self._owns_run = False
        self._mode = "async"
        self._lock = threading.RLock()
        self._last_upload: tuple[str, Path | None] | None = None
        self._series_steps: dict[str, int] = {}
        self._trained = False

    # -- declarations -----------------------------------------------------------------------------

    @classmethod
    def ready(cls, env: Any) -> str | None:
        mode = (env.get("NEPTUNE_MODE") or "async").strip().lower()
        if mode in ("offline", "debug"):
            return None
        missing = [v for v in ("NEPTUNE_PROJECT", "NEPTUNE_API_TOKEN") if not env.get(v)]
        if missing:
            return f"{' and '.join(missing)} not set (or set NEPTUNE_MODE=offline)"
        return None

    @property
    def uploads_checkpoints(self) -> bool:
        return self.log_checkpoints is not None

    # -- the run handle ---------------------------------------------------------------------------

    @classmethod
    def get_run(cls, trainer: Any) -> Any:
        """The Neptune run of ``trainer``'s NeptuneCallback; usable after training (re-opened with the
        same id, without monitoring, when training stopped it)."""
        handler = getattr(trainer, "callback_handler", None)
        for callback in getattr(handler, "callbacks", ()):
            if isinstance(callback, cls):
                handler.wait_for_trackers()
                return callback.run
        raise ValueError("The trainer has no NeptuneCallback; add report_to='neptune' or "
                         "callbacks=[NeptuneCallback(...)]")

    @property
    def run(self) -> Any:
        with self._lock:
            if self._run is None:  # before training (transformers creates one lazily, too)
                self._run, self._owns_run, self._trained = self._init_run(**QUIET), True, False
            elif not self._alive(self._run) and self._owns_run and self._mode in REOPENABLE_MODES:
                self._run = self._init_run(with_id=getattr(self._run, "_sys_id", None), **QUIET)
            return self._run

    @staticmethod
    def _alive(run: Any) -> bool:
        try:
            return run.get_state() == "started"
        except Exception:
            return True

    def _resolved_mode(self) -> str:
        return str(self._run_kwargs.get("mode") or os.environ.get("NEPTUNE_MODE") or "async").strip().lower()

    def _init_run(self, **extra: Any) -> Any:
        neptune = _import_neptune()
        kwargs: dict[str, Any] = {**SAFE_DEFAULTS, **self._run_kwargs}
        kwargs.update(extra)
        if kwargs.get("with_id"):
            kwargs.pop("custom_run_id", None)
        self._mode = self._resolved_mode()
        return neptune.init_run(project=self._project, api_token=self._api_token, **kwargs)

    # -- lifecycle --------------------------------------------------------------------------------

    def check_args(self, args: Any) -> None:
        if self.log_checkpoints == "best" and not getattr(args, "load_best_model_at_end", False):
            raise ValueError("NeptuneCallback(log_checkpoints='best') needs TrainingArguments(load_best_model_at_end="
                             "True) so the best checkpoint is known. Accepted with load_best_model_at_end=False: "
                             "log_checkpoints='same', 'last' or None")

    def setup(self, run: RunInfo) -> None:
        resume = run.resume or {}
        with self._lock:
            handle, reattached = self._open_for_training(run, resume)
            self._run, self._trained = handle, True
            self._mode = self._resolved_mode() if self._owns_run else self._run_mode(handle)
        self._last_upload, self._series_steps = None, {}
        ns = self.base_namespace
        if resume and not reattached:
            handle[f"{ns}/resumed_from"] = str(resume.get("run_id"))
            handle[f"{ns}/resumed_from_container"] = str(resume.get("container_id"))
            handle[f"{ns}/resumed_at_step"] = run.start_step
        if reattached:
            return  # parameters are already there
        handle["source_code/integrations/tracklink"] = __version__
        if self.log_parameters and run.args_config:
            handle[f"{ns}/trainer_parameters"] = _neptune_value(run.args_config)
        if self.log_parameters and run.model_config:
            handle[f"{ns}/model_parameters"] = _neptune_value(run.model_config)
        if run.trial_name:
            handle[f"{ns}/trial"] = str(run.trial_name)
            handle[f"{ns}/trial_params"] = _neptune_value(dict(run.trial_params or {}))
        if run.group:
            handle[f"{ns}/search"] = run.group
            handle["sys/tags"].add(run.group)

    def _open_for_training(self, run: RunInfo, resume: dict[str, Any]) -> tuple[Any, bool]:
        if self._run is not None and self._trained and self._owns_run and self._alive(self._run):
            self._run.stop()  # an offline/debug run kept open after the previous training
        if self._given_run is not None:  # a run passed in is used for one training
            handle, self._given_run, self._owns_run = self._given_run, None, False
            return handle, False
        if self._run is not None and not self._trained and self._alive(self._run):
            return self._run, False  # created by get_run() before training
        if resume.get("run_id") and "with_id" not in self._run_kwargs:
            if self._resolved_mode() in REOPENABLE_MODES:
                try:
                    handle = self._init_run(with_id=str(resume["run_id"]))
                    self._owns_run = True
                    return handle, True
                except Exception as exc:
                    logger.warning("tracklink: neptune could not re-open run %s (%r); starting a new run",
                                   resume["run_id"], exc)
            else:
                logger.warning("tracklink: neptune %s runs cannot be re-opened; the resumed training logs into "
                               "a new run (%s/resumed_from names the earlier one)", self._resolved_mode(),
                               self.base_namespace)
        self._owns_run = True
        return self._init_run(name=self._run_name or run.name), False

    @staticmethod
    def _run_mode(handle: Any) -> str:
        mode = getattr(handle, "_mode", None)
        return str(getattr(mode, "value", mode) or "async")

    def _append(self, key: str, value: Any, step: int) -> None:
        """Append to a series; Neptune series need increasing steps, so a repeated step (``epoch`` comes
        with every log call) is skipped."""
        last = self._series_steps.get(key)
        if last is not None and step <= last:
            if key != "train/epoch":
                self._warn_once(f"step:{key}", f"neptune: {key!r} logged again at step {step}; kept the first value")
            return
        self._series_steps[key] = step
        self._run[f"{self.base_namespace}/{key}"].append(value, step=step)

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        for key, value in metrics.items():
            self._append(key, float(value), step)

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self._run[f"{self.base_namespace}/{key}"] = float(value)

    def log_text(self, texts: dict[str, str], step: int) -> None:
        for key, value in texts.items():
            self._append(key, value, step)

    def log_media(self, values: dict[str, Media], step: int) -> None:
        from neptune.types import File

        for name, value in values.items():
            if not isinstance(value, Image):
                continue
            last = self._series_steps.get(name)
            if last is not None and step <= last:
                self._warn_once(f"step:{name}", f"neptune: {name!r} logged again at step {step}; kept the first image")
                continue
            self._series_steps[name] = step
            self._run[f"{self.base_namespace}/{name}"].append(
                File.from_content(value.png(), extension="png"), step=step, description=value.caption or "")

    def log_artifact(self, path: str, name: str, step: int) -> None:
        from neptune.types import File

        extension = Path(name).suffix.lstrip(".") or None
        with open(path, "rb") as handle:  # the bytes go into Neptune's queue: the file may go away after
            content = handle.read()
        self._run[f"{self.base_namespace}/{name.rsplit('.', 1)[0] if extension else name}"].upload(
            File.from_content(content, extension=extension))

    def log_checkpoint(self, path: str, state: Any) -> None:
        step = int(getattr(state, "global_step", 0) or 0)
        if self.log_checkpoints == "best" and getattr(state, "best_global_step", None) != step:
            return  # not an improvement: keep the uploaded best
        name, root = Path(path).name, f"{self.base_namespace}/checkpoints"
        with redacted_upload(path) as upload:  # secrets in its configs and text files masked
            copy: Path | None = None
            if self._mode == "offline":
                # offline runs record only the file paths; `neptune sync` reads the bytes later, possibly
                # after checkpoint rotation deleted the directory: upload a copy that stays
                copy = Path.cwd() / ".neptune" / "tracklink-checkpoints" / str(getattr(self._run, "_id", "run")) / name
                shutil.rmtree(copy, ignore_errors=True)
                upload = Path(shutil.copytree(upload, copy))
            if self.log_checkpoints in ("last", "best") and self._last_upload is not None:
                previous, previous_copy = self._last_upload
                if previous != name:
                    del self._run[f"{root}/{previous}"]
                if previous_copy is not None and previous_copy != copy:
                    shutil.rmtree(previous_copy, ignore_errors=True)
            for file in sorted(p for p in upload.rglob("*") if p.is_file()):
                self._run[f"{root}/{name}/{file.relative_to(upload).as_posix()}"].upload(str(file))
            self._last_upload = (name, copy)
            self._run.wait()  # read before the redacted copy is removed and rotation deletes the checkpoint

    def run_identity(self) -> dict[str, Any] | None:
        if self._run is None:
            return None
        return {"run_id": getattr(self._run, "_sys_id", None), "container_id": getattr(self._run, "_id", None),
                "mode": self._mode}

    def finish(self, end: RunEnd) -> None:
        status = end.status
        handle = self._run
        if handle is None:
            return
        handle[f"{self.base_namespace}/status"] = status
        if status != "success":
            handle["sys/failed"] = True
        handle.wait()
        if self._owns_run and self._mode in REOPENABLE_MODES:
            handle.stop()  # `get_run` re-opens it with the same id when asked
        # offline/debug runs cannot be re-opened: they stay open (flushed) for `get_run`, and are
        # stopped by the next training's setup or by the client at interpreter exit
