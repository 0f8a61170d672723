"""ClearML tracker (``report_to="clearml"``): one ClearML Task per training, scalars, hyper-parameters and
checkpoints as output models.

What is logged where (``<sfx>`` is ``""``, or ``_2``, ``_3``... when several trainings share one Task):

* scalars at ``iteration=global_step``: ``eval_<x>`` -> title ``eval<sfx>``, series ``<x>``; ``test_<x>`` ->
  title ``test<sfx>``; everything else (``loss``, ``learning_rate``, ``grad_norm``, ``epoch``) -> title
  ``train<sfx>``, series = the key; the final summary (``train_runtime``, ``train_loss``, ``total_flos``...)
  as single values ``<key><sfx>``; string logs as console text;
* media values at ``iteration=global_step``, title ``<key><sfx>``, series ``<key>``: ``tracklink.Image``
  as a debug sample (``report_image``), ``Histogram`` as a histogram plot (``report_histogram``, tracklink's
  bins, labelled by their lower edge), ``Table`` as a table plot (``report_table``; image cells as
  ``[image WxH]``), ``Text`` as console text, a figure as a debug sample; ``File`` values as Task
  artifacts named ``<key>/<file name>`` (``upload_artifact``);
* hyper-parameters: section ``Transformers<sfx>`` = the redacted training arguments (flattened);
  configuration object ``Model Configuration<sfx>`` = the redacted model config. Values edited in the
  ClearML UI never override the live arguments or config;
* checkpoints (``CLEARML_LOG_MODEL``): each ``checkpoint-N`` directory as an OutputModel
  ``checkpoint-N<sfx>`` (iteration N); beyond ``save_total_limit`` the oldest registered model (never the
  best one) is removed;
* the final status: user property ``tracklink_status<sfx>`` (success/failed/killed), and for a Task this
  plugin created: closed (completed), then marked failed or stopped when training failed or was killed.

Variables: ``CLEARML_PROJECT`` (default ``HuggingFace Transformers``), ``CLEARML_TASK`` (default: the run
name, else ``Trainer``), ``CLEARML_LOG_MODEL`` (default true when this plugin creates the Task, false when
it attaches to your ``Task.current_task()``), plus the SDK's own (``CLEARML_OFFLINE_MODE``, credentials).
A Task you started yourself is reused and left open. Resume continues the same Task
(``Task.init(reuse_last_task_id=<id>, continue_last_task=0)``: same id, no iteration offset), offline too.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

from tracklink.envvars import FALSE_VALUES, TRUE_VALUES, EnvVar, truthy
from tracklink.media import Histogram, Image, Media, Table
from tracklink.redact import redacted_upload
from tracklink.shaping import flatten, param_value
from tracklink.tracker import RunEnd, RunInfo, Tracker

__all__ = ["ClearMLCallback"]

logger = logging.getLogger("tracklink")

DEFAULT_PROJECT = "HuggingFace Transformers"
DEFAULT_TASK = "Trainer"
SECTION = "Transformers"
FRAMEWORKS = ("detect_repository", "hydra", "scikit", "joblib", "matplotlib", "tensorflow", "tensorboard",
              "tfdefines", "pytorch", "megengine", "xgboost", "catboost", "fastai", "lightgbm", "gradio")
# Nothing patched, no console/argv capture (may hold secrets), no repository scan (it also runs the SDK's
# update check against the internet).
INIT_SETTINGS: dict[str, Any] = {
    "auto_connect_frameworks": dict.fromkeys(FRAMEWORKS, False),
    "auto_connect_arg_parser": False,
    "auto_connect_streams": False,
    "auto_resource_monitoring": False,
}
BOOLEAN_CHOICES = tuple(sorted(TRUE_VALUES | (FALSE_VALUES - {""})))


class ClearMLCallback(Tracker):
    """Reports to a ClearML Task (a new one per training, or your ``Task.current_task()``)."""

    name = "clearml"
    init_kwargs_target = "Task.init() (e.g. tags, output_uri)"
    sdk = "clearml"
    sdk_min_version = "1.14"
    sdk_module = "clearml"
    extra = "clearml"
    metric_style = "raw"
    media = frozenset({"image", "histogram", "table"})
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("CLEARML_PROJECT", DEFAULT_PROJECT, "Project of the Task this plugin creates."),
        EnvVar("CLEARML_TASK", DEFAULT_TASK, "Name of the Task this plugin creates (default: the run name, "
               "else 'Trainer')."),
        EnvVar("CLEARML_LOG_MODEL", None, "Register checkpoints as output models (default: true when this "
               "plugin creates the Task, false when it reuses yours).", choices=BOOLEAN_CHOICES),
        EnvVar("CLEARML_OFFLINE_MODE", None, "1: record the session on disk (CLEARML_CACHE_DIR/offline/<task>) "
               "for a later Task.import_offline_session().", read_by="sdk", kind="bool"),
        EnvVar("CLEARML_CONFIG_FILE", "~/clearml.conf", "The SDK's configuration file.", read_by="sdk"),
        EnvVar("CLEARML_API_HOST", None, "URL of the ClearML API server.", read_by="sdk", kind="url"),
        EnvVar("CLEARML_API_ACCESS_KEY", None, "ClearML access key.", secret=True, read_by="sdk"),
        EnvVar("CLEARML_API_SECRET_KEY", None, "ClearML secret key.", secret=True, read_by="sdk"),
    )

    def __init__(self) -> None:
        self.task: Any = None
        self.suffix = ""
        self.created = False
        self.log_model = False
        self._models: list[tuple[int, Any]] = []
        self._prune = True
        self._limit: int | None = None

    @classmethod
    def ready(cls, env: Any) -> str | None:
        if truthy(env.get("CLEARML_OFFLINE_MODE")):
            return None
        if env.get("CLEARML_API_ACCESS_KEY") and env.get("CLEARML_API_SECRET_KEY"):
            return None
        config = env.get("CLEARML_CONFIG_FILE") or os.path.join(env.get("HOME", "~"), "clearml.conf")
        if os.path.isfile(os.path.expanduser(config)):
            return None
        return "no ClearML credentials (clearml.conf, CLEARML_API_ACCESS_KEY/SECRET_KEY) and CLEARML_OFFLINE_MODE unset"

    # -- lifecycle --------------------------------------------------------------------------------

    def setup(self, run: RunInfo) -> None:
        self._limit = getattr(run.args, "save_total_limit", None)
        with warnings.catch_warnings():  # the SDK's vendored pyhocon calls deprecated pyparsing names
            warnings.simplefilter("ignore", DeprecationWarning)
            self._setup(run)

    def _setup(self, run: RunInfo) -> None:
        from clearml import Task

        resume = run.resume or {}
        current = Task.current_task()
        continued = False
        task = None
        if current is not None:
            task, self.created = current, False
            if resume.get("task_id") and resume["task_id"] != task.id:
                logger.warning("tracklink: clearml: resuming a training of Task %s inside your current Task %s; "
                               "logging into the current one", resume["task_id"], task.id)
            continued = bool(resume) and resume.get("task_id") == task.id
        elif resume.get("task_id"):
            try:
                task = Task.init(project_name=self._project(run), task_name=self._task_name(run),
                                 reuse_last_task_id=str(resume["task_id"]), continue_last_task=0, **INIT_SETTINGS)
                self.created, continued = True, task.id == resume["task_id"]
            except Exception as exc:
                logger.warning("tracklink: clearml could not continue Task %s (%r); creating a new Task",
                               resume["task_id"], exc)
        if task is None:
            settings = {"output_uri": True, "tags": [run.group] if run.group else None, **INIT_SETTINGS, **run.extra}
            task = Task.init(project_name=self._project(run), task_name=self._task_name(run),
                             reuse_last_task_id=False, **settings)
            self.created = True
        self.task = task
        self.suffix = str(resume.get("suffix", "")) if continued else self._free_suffix(task)
        setting = os.environ.get("CLEARML_LOG_MODEL")
        self.log_model = truthy(setting) if setting is not None else self.created
        self._models, self._prune = [], True
        if continued:
            return
        params = {f"{SECTION}{self.suffix}/{k}": param_value(v, keep_none=True) for k, v in flatten(run.args_config).items()}
        task.update_parameters(params)
        if run.model_config:
            description = None if not self.suffix else "several trainings report into this Task"
            # the returned (possibly UI-edited) config is deliberately ignored
            task.connect_configuration(dict(run.model_config), name=f"Model Configuration{self.suffix}",
                                       description=description)

    @staticmethod
    def _project(run: RunInfo) -> str:
        return run.project or os.environ.get("CLEARML_PROJECT") or DEFAULT_PROJECT

    @staticmethod
    def _task_name(run: RunInfo) -> str:
        base = os.environ.get("CLEARML_TASK") or run.name or DEFAULT_TASK
        if run.group and run.trial_name and base != run.trial_name:
            return f"{base}-{run.trial_name}"  # one Task per trial, tagged with the search
        return base

    @staticmethod
    def _free_suffix(task: Any) -> str:
        """``""`` for a Task with no tracklink section yet, else ``_2``, ``_3``... (read from the Task
        itself, so two trainings in one process or one Task never share series)."""
        try:
            sections = set(task.get_parameters_as_dict())
        except Exception:
            sections = set()
        if SECTION not in sections:
            return ""
        number = 2
        while f"{SECTION}_{number}" in sections:
            number += 1
        return f"_{number}"

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        report = self.task.get_logger()
        for key, value in metrics.items():
            title, series = "train", key
            for prefix in ("eval", "test"):
                if key.startswith(prefix + "_"):
                    title, series = prefix, key[len(prefix) + 1:]
            report.report_scalar(title=title + self.suffix, series=series, value=value, iteration=step)

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        report = self.task.get_logger()
        for key, value in metrics.items():
            report.report_single_value(name=key + self.suffix, value=value)

    def log_text(self, texts: dict[str, str], step: int) -> None:
        report = self.task.get_logger()
        for key, value in texts.items():
            report.report_text(f"{key}{self.suffix} (step {step}): {value}")

    def log_media(self, values: dict[str, Media], step: int) -> None:
        report = self.task.get_logger()
        for name, value in values.items():
            title = f"{name}{self.suffix}"
            if isinstance(value, Image):
                # pixels, not a path: ClearML uploads debug samples in the background, after this returns
                pixels = value.pixels()
                if pixels.shape[2] == 4:  # ClearML stores debug samples as JPEG: alpha over white
                    alpha = pixels[:, :, 3:4] / 255.0
                    pixels = (pixels[:, :, :3] * alpha + 255 * (1 - alpha)).astype("uint8")
                report.report_image(title=title, series=name, iteration=step,
                                    image=pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
            elif isinstance(value, Histogram):
                counts, edges = value.histogram(name)
                report.report_histogram(title=title, series=name, values=[float(c) for c in counts],
                                        iteration=step, xlabels=[f"{e:.4g}" for e in edges[:-1]],
                                        xaxis="value", yaxis="count")
            elif isinstance(value, Table):
                report.report_table(title=title, series=name, iteration=step,
                                    table_plot=[value.columns, *value.text_rows()])

    def log_artifact(self, path: str, name: str, step: int) -> None:
        self.task.upload_artifact(f"{name}{self.suffix}", artifact_object=path, metadata={"step": step},
                                  wait_on_upload=True)

    @property
    def uploads_checkpoints(self) -> bool:
        return self.log_model or self.task is None

    def log_checkpoint(self, path: str, state: Any) -> None:
        if not self.log_model:
            return
        from clearml import Model, OutputModel

        if not self._can_register_models():
            self._warn_once("offline-models", "clearml: the SDK cannot register output models in offline mode; "
                            "checkpoints stay in output_dir only")
            return
        source, step = Path(path), int(getattr(state, "global_step", 0) or 0)
        name = f"{source.name}{self.suffix}"
        with redacted_upload(source) as package:  # secrets in its configs and text files masked
            model = OutputModel(task=self.task, name=name, framework="PyTorch")
            model.connect(task=self.task, name=name)
            model.update_weights_package(weights_path=str(package), target_filename=source.name, iteration=step,
                                         auto_delete_file=False, async_enable=False)
        self._models.append((step, model))
        limit = self._limit
        best = getattr(state, "best_global_step", None)
        while self._prune and limit and len(self._models) > limit:
            oldest = next((m for m in self._models if m[0] != best), None)
            if oldest is None:
                break
            try:
                Model.remove(oldest[1], delete_weights_file=True, force=True, raise_on_errors=True)
            except Exception as exc:
                self._prune = False
                logger.warning("tracklink: clearml could not remove model %s (%r); no more models are removed",
                               getattr(oldest[1], "name", oldest[0]), exc)
                break
            self._models.remove(oldest)

    @staticmethod
    def _can_register_models() -> bool:
        from clearml import Task

        return not Task.is_offline()  # clearml's offline OutputModel fails (DummyModel has no 'locked')

    def run_identity(self) -> dict[str, Any] | None:
        if self.task is None:
            return None
        return {"task_id": self.task.id, "suffix": self.suffix, "created": self.created}

    def finish(self, end: RunEnd) -> None:
        status = end.status
        task = self.task
        if task is None:
            return
        task.set_user_properties(**{f"tracklink_status{self.suffix}": status})
        if not self.created:
            task.flush(wait_for_uploads=True)  # your Task: left open, status untouched
            return
        task.close()  # completed
        if status == "failed":
            task.mark_failed(status_reason="training failed", force=True)
        elif status == "killed":
            task.mark_stopped(force=True, status_message="training interrupted")
        self.task = None
