"""Comet tracker (``report_to="comet_ml"``, ``CometCallback``).

What is logged where (transformers' names):

* parameters: the redacted hyper-parameters, flattened (``learning_rate``, ``model/num_parameters``,
  model-config keys, ...); the model's printed structure as the graph definition; the experiment is
  named ``TrainingArguments.run_name`` (the trial name during a hyper-parameter search);
* metrics: every numeric log as ``train/...``, ``eval/...``, ``test/...`` with ``step=global_step`` and
  ``epoch``; the end-of-training summary too (``train/train_runtime``, ``train/train_loss``, ...);
  strings as text samples (metadata ``name``);
* media values at their step: ``tracklink.Image`` with ``log_image`` (the PNG tracklink encoded; caption
  in the metadata), ``Histogram`` with ``log_histogram_3d`` (tracklink's bins, Comet's 3-D histogram
  chart), ``Table`` with ``log_table`` as ``<key>-<step>.csv`` (image cells as ``[image WxH]``), ``Text``
  as a text sample, a figure as an image, ``File`` values as assets (``<key>/<file name>``). An image
  over Comet's upload limit (200 MiB) is left out with a warning;
* assets (``COMET_LOG_ASSETS``, default TRUE): at the end of a successful training, every file under
  ``output_dir`` (checkpoints included) with its relative path as the file name, secrets in configs and
  text files masked;
* other ``status``: ``success``, ``failed`` or ``killed`` (Comet has no run-status field an SDK can
  set, offline in particular), then the experiment is ended.

Variables read by tracklink: ``COMET_MODE`` (``get_or_create`` default, ``create``, ``get`` which needs
``COMET_EXPERIMENT_KEY``; deprecated ``ONLINE``/``OFFLINE``/``DISABLED``) and ``COMET_LOG_ASSETS``.
The SDK reads ``COMET_API_KEY``, ``COMET_PROJECT_NAME``, ``COMET_WORKSPACE``, ``COMET_START_ONLINE``,
``COMET_EXPERIMENT_KEY``, ``COMET_OFFLINE_DIRECTORY``, ... The SDK is imported on first use only, with
``COMET_DISABLE_AUTO_LOGGING=1`` and ``COMET_ERROR_TRACKING_ENABLE=false`` unless set; environment,
host, CO2, git, code, command-line and console auto-logging are off unless their ``COMET_AUTO_LOG_*``
variable is set. A running experiment created by the user is used and not ended. A resumed training
re-attaches to its experiment key (``mode="get_or_create"``), online and offline.
"""

from __future__ import annotations

import configparser
import logging
import os
import secrets
import string
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from tracklink.envvars import EnvVar
from tracklink.media import Histogram, Image, Media, Table, TempFiles, safe_name
from tracklink.redact import redacted_upload
from tracklink.tracker import RunEnd, RunInfo, Tracker

__all__ = ["CometCallback"]

logger = logging.getLogger("tracklink")

MODES = ("get_or_create", "create", "get")
_DEPRECATED_MODES = ("online", "offline", "disabled")
_FALSE = ("0", "false", "no", "off")

#: ExperimentConfig flag -> the SDK variable that opts back in (tracklink turns these off by default:
#: they send host/environment details, source code or the command line, or probe the network).
_QUIET_FLAGS: dict[str, str] = {
    "log_env_details": "COMET_AUTO_LOG_ENV_DETAILS", "log_env_host": "COMET_AUTO_LOG_ENV_HOST",
    "log_env_gpu": "COMET_AUTO_LOG_ENV_GPU", "log_env_cpu": "COMET_AUTO_LOG_ENV_CPU",
    "log_env_network": "COMET_AUTO_LOG_ENV_NETWORK", "log_env_disk": "COMET_AUTO_LOG_ENV_DISK",
    "auto_log_co2": "COMET_AUTO_LOG_CO2", "log_git_metadata": "COMET_AUTO_LOG_GIT_METADATA",
    "log_git_patch": "COMET_AUTO_LOG_GIT_PATCH", "log_code": "COMET_AUTO_LOG_CODE",
    "parse_args": "COMET_AUTO_LOG_CLI_ARGUMENTS", "auto_output_logging": "COMET_AUTO_LOG_OUTPUT_LOGGER",
    "auto_metric_logging": "COMET_AUTO_LOG_METRICS", "auto_param_logging": "COMET_AUTO_LOG_PARAMETERS",
    "log_graph": "COMET_AUTO_LOG_GRAPH",
}
#: Flags whose "let the SDK decide" value is not None.
_SDK_DEFAULTS = {"auto_log_co2": True, "auto_metric_logging": True, "auto_param_logging": True,
                 "auto_output_logging": "default"}


def _config_file_has_key(env: Mapping[str, str]) -> bool:
    """Whether a Comet config file (``COMET_CONFIG``, ``~/.comet.config``, ``./.comet.config``) has a key."""
    home = env.get("HOME") or os.path.expanduser("~")
    candidates = [Path(env["COMET_CONFIG"])] if env.get("COMET_CONFIG") else [Path(home), Path.cwd()]
    for candidate in candidates:
        path = candidate / ".comet.config" if candidate.is_dir() else candidate
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        if parser.get("comet", "api_key", fallback="").strip():
            return True
    return False


def _archive_suffix(length: int = 6) -> str:
    return "".join(secrets.choice(string.ascii_letters) for _ in range(length))


def _unique_archive_names() -> None:
    """Offline archives are named ``<key>-<suffix>.zip`` with a suffix the SDK draws from the global
    ``random``, which the trainer seeds and restores on resume: the resumed session of an experiment
    got the same name and its (empty) archive, created at start, overwrote the first session's. Draw
    the suffix from ``secrets`` instead (this also leaves the training's random stream alone)."""
    offline = sys.modules.get("comet_ml.offline")
    if offline is not None and callable(getattr(offline, "random_ascii_string", None)):
        offline.random_ascii_string = _archive_suffix


class CometCallback(Tracker):
    """Logs to Comet (see the module documentation for what goes where)."""

    name = "comet_ml"
    init_kwargs_target = "comet_ml.ExperimentConfig (e.g. tags, log_code)"
    sdk = "comet-ml"
    sdk_min_version = "3.43.2"
    sdk_module = "comet_ml"
    extra = "comet"
    media = frozenset({"image", "histogram", "table"})
    max_image_bytes = 200 * 2**20  # comet_ml's DEFAULT_UPLOAD_SIZE_LIMIT for images
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("COMET_MODE", "get_or_create", "How the experiment starts: get_or_create, create, or get (needs "
               "COMET_EXPERIMENT_KEY). Deprecated: ONLINE, OFFLINE, DISABLED (turns the tracker off).",
               choices=MODES + tuple(m.upper() for m in _DEPRECATED_MODES)),
        EnvVar("COMET_LOG_ASSETS", "TRUE", "TRUE/1: upload the files under output_dir (checkpoints included) "
               "at the end of training; FALSE/0: do not.", choices=("TRUE", "1", "FALSE", "0")),
        EnvVar("COMET_API_KEY", None, "API key (or api_key in ~/.comet.config).", secret=True, read_by="sdk"),
        EnvVar("COMET_PROJECT_NAME", None, "Project of the experiment (default: Uncategorized).", read_by="sdk"),
        EnvVar("COMET_WORKSPACE", None, "Workspace of the experiment.", read_by="sdk"),
        EnvVar("COMET_START_ONLINE", "true", "false/0: offline experiment, a zip in COMET_OFFLINE_DIRECTORY.",
               read_by="sdk", kind="bool"),
        EnvVar("COMET_EXPERIMENT_KEY", None, "Key of the experiment to create or continue (a resumed training "
               "uses the key stored in its checkpoint).", read_by="sdk"),
        EnvVar("COMET_OFFLINE_DIRECTORY", "./.cometml-runs", "Where offline experiments are archived.",
               read_by="sdk"),
        EnvVar("COMET_CONFIG", "~/.comet.config", "Comet configuration file.", read_by="sdk"),
        EnvVar("COMET_DISABLE_AUTO_LOGGING", "1 (set by tracklink)", "Comet's framework monkey-patching; "
               "tracklink logs explicitly.", read_by="sdk"),
        EnvVar("COMET_ERROR_TRACKING_ENABLE", "false (set by tracklink)", "Comet's Sentry reports of SDK "
               "errors.", read_by="sdk"),
        *(EnvVar(var, "off (tracklink)", f"Comet's {flag}: unset, tracklink turns it off; set (true or false), "
                 "the SDK reads it.", read_by="sdk") for flag, var in _QUIET_FLAGS.items()),
    )

    def __init__(self) -> None:
        raw = os.environ.get("COMET_MODE", "").strip()
        self._mode: str | None = raw.lower() or None
        self._online: bool | None = None
        if self._mode in _DEPRECATED_MODES:
            warnings.warn(f"COMET_MODE={raw!r} is deprecated; use COMET_START_ONLINE (online/offline) or "
                          "TRACKLINK_DISABLE=comet_ml", FutureWarning, stacklevel=2)
            self._online = {"online": True, "offline": False}.get(self._mode)
            self._mode = None
        problems = self.env_problems(os.environ)
        if problems:
            raise ValueError("; ".join(problems))
        self._disabled = raw.lower() == "disabled"
        self._log_assets = os.environ.get("COMET_LOG_ASSETS", "TRUE").strip().upper() in ("TRUE", "1")
        self._experiment: Any = None
        self._owns = False

    # -- declarations -------------------------------------------------------------------------

    @classmethod
    def ready(cls, env: Mapping[str, str]) -> str | None:
        if env.get("COMET_API_KEY") or _config_file_has_key(env):
            return None
        if env.get("COMET_START_ONLINE", "").strip().lower() in _FALSE:
            return None
        if env.get("COMET_MODE", "").strip().lower() == "offline":
            return None
        return ("no Comet API key (COMET_API_KEY or api_key in ~/.comet.config) and not offline "
                "(COMET_START_ONLINE=0)")

    @classmethod
    def disabled_by(cls, env: Mapping[str, str]) -> str | None:
        if env.get("COMET_MODE", "").strip().upper() == "DISABLED":
            return "disabled by COMET_MODE=DISABLED (deprecated; use TRACKLINK_DISABLE=comet_ml)"
        return None

    @classmethod
    def env_problems(cls, env: Mapping[str, str]) -> list[str]:
        problems = [p for var in cls.env_vars if env.get(var.name, "").strip() and (p := var.problem(env))]
        if env.get("COMET_MODE", "").strip().lower() == "get" and not env.get("COMET_EXPERIMENT_KEY"):
            problems.append("COMET_MODE='get' continues an existing experiment and needs COMET_EXPERIMENT_KEY "
                            "(use get_or_create or create to start a new one)")
        return problems

    # -- lifecycle ------------------------------------------------------------------------------

    def setup(self, run: RunInfo) -> None:
        if self._disabled:  # an explicit CometCallback() while COMET_MODE=DISABLED: log nothing
            logger.warning("tracklink: COMET_MODE=DISABLED: the Comet tracker logs nothing")
            return
        os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")  # read once, when comet_ml is imported
        os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
        comet_ml = self.import_sdk()
        _unique_archive_names()
        mode, key = self._mode, None
        name = str(run.trial_name) if run.is_hyper_param_search and run.trial_name else run.name
        if run.is_hyper_param_search:
            if mode not in (None, "create"):
                logger.warning("tracklink: COMET_MODE=%s ignored during a hyper-parameter search: each trial "
                               "is a new experiment (create)", mode)
            mode = "create"
        if run.resume and run.resume.get("experiment_key"):
            key, mode = str(run.resume["experiment_key"]), "get_or_create"
        running = comet_ml.get_running_experiment()
        if running is not None and not getattr(running, "ended", False) and mode != "create":
            self._experiment, self._owns = running, False  # the user's own experiment: never ended here
            if key and key != running.get_key():
                logger.warning("tracklink: Comet experiment %s is running; logging there instead of resuming %s",
                               running.get_key(), key)
        else:
            config = comet_ml.ExperimentConfig(name=name, **{**self._quiet_flags(), **run.extra})
            self._experiment = comet_ml.start(online=self._online, mode=mode, experiment_key=key,
                                              project_name=run.project, experiment_config=config)
            self._owns = True
        self._experiment.log_parameters(run.params)
        if run.model is not None and not run.resume:
            self._experiment.set_model_graph(str(run.model))
        if run.is_hyper_param_search and run.trial_name:
            self._experiment.log_optimization(optimization_id=str(run.group or run.trial_name),
                                              parameters=dict(run.trial_params or {}))
            if run.group:
                self._experiment.add_tag(str(run.group))

    @staticmethod
    def _quiet_flags() -> dict[str, Any]:
        flags: dict[str, Any] = {}
        for flag, var in _QUIET_FLAGS.items():
            if os.environ.get(var, "").strip():
                if flag in _SDK_DEFAULTS:  # the user opted in: the SDK reads the variable itself
                    flags[flag] = _SDK_DEFAULTS[flag]
            else:
                flags[flag] = False
        return flags

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        if self._experiment is not None:
            self._experiment.log_metrics(metrics, step=step, epoch=epoch)

    def log_text(self, texts: dict[str, str], step: int) -> None:
        for key, value in texts.items() if self._experiment is not None else ():
            self._experiment.log_text(value, step=step, metadata={"name": key})

    def log_media(self, values: dict[str, Media], step: int) -> None:
        if self._experiment is None:
            return
        with TempFiles() as files:  # Comet copies each file before log_* returns (copy_to_tmp)
            for name, value in values.items():
                if isinstance(value, Image):
                    metadata = {"caption": value.caption} if value.caption else None
                    self._experiment.log_image(files.write(value.png(), f"{name.rsplit('/', 1)[-1]}.png"),
                                               name=name, step=step, metadata=metadata)
                elif isinstance(value, Histogram):
                    from comet_ml.data_structure import Histogram as CometHistogram

                    counts, edges = value.histogram(name)
                    histogram = CometHistogram()
                    histogram.add((edges[:-1] + edges[1:]) / 2, counts=counts)
                    self._experiment.log_histogram_3d(histogram, name=name, step=step)
                elif isinstance(value, Table):
                    self._experiment.log_table(f"{safe_name(name).replace('/', '_')}-{step}.csv",
                                               tabular_data=value.text_rows(), headers=value.columns)

    def log_artifact(self, path: str, name: str, step: int) -> None:
        if self._experiment is not None:
            self._experiment.log_asset(path, file_name=name, step=step)  # copied before it returns

    def _log_assets_of(self, root: Path, step: int) -> None:
        offline = Path(os.environ.get("COMET_OFFLINE_DIRECTORY") or ".cometml-runs").resolve()
        with redacted_upload(root) as upload:  # secrets in configs and text files masked
            for path in sorted(p for p in upload.rglob("*") if p.is_file()):
                rel = path.relative_to(upload).as_posix()
                if offline in (root / rel).resolve().parents:
                    continue  # never archive Comet's own offline archives
                self._experiment.log_asset(str(path), file_name=rel, step=step)  # copied before it returns

    def run_identity(self) -> dict[str, Any] | None:
        return {"experiment_key": self._experiment.get_key()} if self._experiment is not None else None

    def finish(self, end: RunEnd) -> None:
        experiment = self._experiment
        if experiment is None or not self._owns:
            self._experiment = None
            return
        try:
            if end == "success" and self._log_assets and end.output_dir and Path(end.output_dir).is_dir():
                self._log_assets_of(Path(end.output_dir), end.step)
            experiment.log_other("status", end.status)
        finally:
            self._experiment = None
            experiment.end()
