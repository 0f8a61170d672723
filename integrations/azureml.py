"""Azure ML tracker (``report_to="azure_ml"``), on the Azure ML SDK v1 (``azureml-core``).

Azure ML SDK v1 is deprecated (support ends in favour of SDK v2 and MLflow); Microsoft's recommended route
to an Azure ML workspace is MLflow: set ``MLFLOW_TRACKING_URI`` to the workspace's MLflow tracking URI and use
``report_to="mlflow"``. This plugin serves jobs still on SDK v1.

What is logged where, in the run of the current job (``Run.get_context()`` at train begin):

* every numeric log under its raw key (``loss``, ``learning_rate``, ``grad_norm``, ``epoch``, ``eval_loss``,
  ``train_runtime``...) with ``run.log(name, value, step=global_step)`` (no step where the SDK's run object
  has none, as in its offline run); string logs with ``run.log`` too;
* the redacted, flattened hyper-parameters (training arguments and model config) as run tags;
* media values, where SDK v1 has them: ``tracklink.Image`` with ``run.log_image(key, path=<png>)`` (a
  histogram or a figure as an image), ``Table`` with ``run.log_table(key, {column: [values]})`` (image
  cells as ``[image WxH]``), ``Text`` with ``run.log``; ``File`` values with
  ``run.upload_file("outputs/media/<key>/<name>", path)`` (the run's outputs);
* at the end: ``run.complete()``, or ``run.fail(error_details=...)`` when training failed or was killed.
  Inside a submitted job these flush the metrics and record the error; Azure ML sets the job status from
  the process exit. A run you pass in (``azureml_run=``) is yours: it is never completed or failed.

Outside an Azure ML job, ``Run.get_context()`` returns the SDK's offline run, which only prints
"Attempted to log ..." lines; ``report_to="all"`` therefore skips this tracker there, and also inside a job
when MLflow is installed (transformers adds it only when MLflow is unavailable).
Variables: ``AZUREML_RUN_ID`` (set by Azure ML inside a job).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import warnings
from typing import Any, ClassVar

from tracklink.envvars import EnvVar
from tracklink.media import Image, Media, Table, TempFiles
from tracklink.shaping import param_text
from tracklink.tracker import RunEnd, RunInfo, Tracker

__all__ = ["AzureMLCallback"]

logger = logging.getLogger("tracklink")

TAG_LIMIT = 1000  # characters kept of a tag value


class AzureMLCallback(Tracker):
    """Logs metrics and parameters to the Azure ML run of the current job (SDK v1).

    Args:
        azureml_run: an ``azureml.core.Run`` to log into instead of ``Run.get_context()``; it is left open.
    """

    name = "azure_ml"
    sdk = "azureml-core"
    sdk_min_version = "1.50"
    sdk_module = "azureml.core"
    extra = "azureml"
    metric_style = "raw"
    media = frozenset({"image", "table"})
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("AZUREML_RUN_ID", None, "Set by Azure ML inside a job (the run logged into); outside a job the "
               "SDK's offline run only prints what it would log.", read_by="sdk"),
    )

    def __init__(self, azureml_run: Any = None) -> None:
        if azureml_run is not None and not callable(getattr(azureml_run, "log", None)):
            raise TypeError(f"AzureMLCallback(azureml_run={azureml_run!r}): expected an azureml.core.Run (with a "
                            "log method) or None")
        self.azureml_run = azureml_run
        self._given = azureml_run is not None
        self._step_ok = False

    @classmethod
    def ready(cls, env: Any) -> str | None:
        if not env.get("AZUREML_RUN_ID"):
            return ("not inside an Azure ML run (AZUREML_RUN_ID is not set); use the MLflow route: "
                    "report_to='mlflow' with MLFLOW_TRACKING_URI set to the workspace's MLflow URI")
        if importlib.util.find_spec("mlflow") is not None:
            return ("MLflow is installed: 'all' reports to Azure ML through the mlflow tracker; name azure_ml in "
                    "report_to to use the SDK v1 run as well")
        return None

    @property
    def is_offline(self) -> bool:
        return type(self.azureml_run).__name__ == "_OfflineRun"

    def setup(self, run: RunInfo) -> None:
        if not self._given:
            with warnings.catch_warnings():  # azureml.core warns (DeprecationWarning) at import
                warnings.simplefilter("ignore", DeprecationWarning)
                from azureml.core.run import Run

                self.azureml_run = Run.get_context()
        handle = self.azureml_run
        if self.is_offline:
            logger.warning("tracklink: azure_ml: not inside an Azure ML job; the SDK's offline run only prints "
                           "what it would log")
        try:
            self._step_ok = "step" in inspect.signature(handle.log).parameters
        except (TypeError, ValueError):
            self._step_ok = False
        resume = run.resume or {}
        if resume.get("run_id") == handle.id:
            return  # the same run (a restarted job): its tags are there
        tags = {key: param_text(value)[:TAG_LIMIT] for key, value in run.params.items()}
        if run.group:
            tags.update(tracklink_search=run.group, tracklink_trial=str(run.trial_name))
        if resume.get("run_id"):
            logger.warning("tracklink: azure_ml: this job's run %s is not the run %s of the checkpoint; Azure ML "
                           "runs belong to their job, so the resumed training logs into this one", handle.id,
                           resume["run_id"])
            tags["tracklink_resumed_from"] = str(resume["run_id"])
            tags["tracklink_resumed_at_step"] = str(run.start_step)
        if tags:
            handle.set_tags(tags)

    def _log(self, key: str, value: Any, step: int) -> None:
        if self._step_ok:
            self.azureml_run.log(key, value, description=key, step=step)
        else:
            self.azureml_run.log(key, value, description=key)

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        for key, value in metrics.items():
            self._log(key, value, step)

    def log_text(self, texts: dict[str, str], step: int) -> None:
        for key, value in texts.items():
            self._log(key, value, step)

    def log_media(self, values: dict[str, Media], step: int) -> None:
        with TempFiles() as files:  # log_image uploads the file before it returns
            for name, value in values.items():
                if isinstance(value, Image):
                    self.azureml_run.log_image(name, path=files.write(value.png(), f"{name.rsplit('/', 1)[-1]}.png"),
                                               description=value.caption or "")
                elif isinstance(value, Table):
                    rows = value.text_rows()
                    self.azureml_run.log_table(name, {c: [row[i] for row in rows] for i, c in enumerate(value.columns)})

    def log_artifact(self, path: str, name: str, step: int) -> None:
        self.azureml_run.upload_file(f"outputs/media/{name}", path)

    def run_identity(self) -> dict[str, Any] | None:
        run_id = getattr(self.azureml_run, "id", None)
        return {"run_id": run_id} if run_id else None

    def finish(self, end: RunEnd) -> None:
        status = end.status
        handle = self.azureml_run
        if handle is None:
            return
        if self._given:
            flush = getattr(handle, "flush", None)
            if callable(flush):
                flush()
            return
        if status == "success":
            handle.complete()
        else:
            handle.fail(error_details=f"training {'was interrupted' if status == 'killed' else 'failed'} "
                        f"(tracklink status: {status})")
        self.azureml_run = None  # the next training asks Run.get_context() again
