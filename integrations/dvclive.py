"""DVCLive tracker (``report_to="dvclive"``): metrics, params and model artifacts in DVCLive's files.

What is logged where (inside the ``Live`` directory, ``dvclive/`` in the working directory by default,
as with DVCLive itself; pass ``DVCLiveCallback(dir=...)`` or your own ``Live`` to change it):

* metrics at the trainer's ``global_step`` (``live.step = global_step``: a train log and an eval log at
  the same step share one DVCLive step) in ``plots/metrics/<name>.tsv`` (columns ``step`` and the
  value) and the latest values in ``metrics.json``. Names follow DVCLive's Hugging Face rule, applied
  to the prefix only: ``eval_x`` -> ``eval/x``, ``train_x`` -> ``train/x``, ``test_x`` -> ``test/x``,
  everything else as logged (``loss``, ``learning_rate``, ``grad_norm``, ``epoch``);
* the final training summary (``train/runtime``, ``train/loss``, ``total_flos``, ...) in
  ``metrics.json`` only (no one-point plots);
* the redacted training arguments and model config in ``params.yaml`` (``live.log_params``);
* media values: ``tracklink.Image`` with ``live.log_image`` as ``plots/images/<key>/<step>.png`` (DVCLive's
  pattern for an image slider), ``Histogram`` with ``live.log_plot`` as a custom bar plot
  ``plots/custom/<key>.json`` (columns ``bin`` and ``count``; DVCLive's custom plots keep the latest one),
  a figure as an image; ``File`` values and the other fallbacks (a table as CSV, ``Text`` as a ``.txt``)
  copied into ``<dir>/artifacts/<key>/`` and, inside a DVC repository, tracked with ``live.log_artifact``;
* models (``log_model``, or ``HF_DVCLIVE_LOG_MODEL``: ``true``/``all``/false): ``"all"`` tracks every
  checkpoint directory the trainer writes (``live.log_artifact(<checkpoint dir>)``); ``True`` tracks
  the best checkpoint (``load_best_model_at_end``) or the last one at the end of a successful training,
  copied into ``<dir>/artifacts/`` as artifact ``best``/``last`` of type ``model``. Artifacts need a
  DVC repository: DVCLive runs ``dvc init`` at the git root when it starts inside a git repository
  without one; outside git it skips them with a warning.

Resume: the ``Live`` directory is recorded in the checkpoint; a resumed training reopens it with
``Live(dir, resume=True)``, drops the rows logged after the restored step and continues from there.
``live.end()`` is called at the end of every training, also when it fails or is interrupted.

Variables: ``HF_DVCLIVE_LOG_MODEL``; DVCLive's own ``DVCLIVE_LOGLEVEL``, ``DVC_STUDIO_TOKEN`` (secret:
live updates to DVC Studio), ``DVC_STUDIO_OFFLINE``.
"""

from __future__ import annotations

import csv
import inspect
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, ClassVar

from tracklink.envvars import EnvVar, truthy
from tracklink.media import Histogram, Image, Media, TempFiles
from tracklink.tracker import RunEnd, RunInfo, Tracker

__all__ = ["DVCLiveCallback", "dvclive_metric_name"]

logger = logging.getLogger("tracklink")

ENV_LOG_MODEL = "HF_DVCLIVE_LOG_MODEL"
_LOG_MODEL_CHOICES = ("true", "1", "yes", "on", "all", "false", "0", "no", "off")
_UNSAFE = re.compile(r"[^\w.\-/@]")


def dvclive_metric_name(key: str) -> str:
    """DVCLive's split naming on the prefix only (``eval_loss`` -> ``eval/loss``), made path-safe."""
    for split in ("train", "eval", "test"):
        if key.startswith(split + "_") and len(key) > len(split) + 1:
            key = f"{split}/{key[len(split) + 1:]}"
            break
    parts = [p for p in _UNSAFE.sub("_", key).split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


def _parse_log_model(value: Any, origin: str) -> bool | str | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _LOG_MODEL_CHOICES:
        text = value.strip().lower()
        return "all" if text == "all" else True if truthy(text) else None
    raise ValueError(
        f"{origin}={value!r} is not accepted; accepted values: True, False, None or 'all' "
        f"(environment: {', '.join(_LOG_MODEL_CHOICES)})"
    )


class DVCLiveCallback(Tracker):
    """Logs metrics, parameters and models with DVCLive.

    Args:
        live: an existing ``dvclive.Live`` to log into (it is ended, not discarded, at the end of
            training). ``None`` (default) creates one per training from ``kwargs``.
        log_model: ``"all"`` (every checkpoint), ``True`` (the final best/last checkpoint) or
            ``None``/``False`` (no model); ``None`` reads ``HF_DVCLIVE_LOG_MODEL``.
        **kwargs: arguments of ``dvclive.Live`` (``dir``, ``save_dvc_exp``, ``dvcyaml``, ``report``, ...)
            used to create the ``Live``; not accepted together with ``live``.
    """

    name = "dvclive"
    sdk = "dvclive"
    sdk_min_version = "3.0"
    sdk_module = "dvclive"
    extra = "dvclive"
    metric_style = "raw"
    media = frozenset({"image", "histogram"})
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar(ENV_LOG_MODEL, None,
               "Log models as DVC artifacts: 'all' (every checkpoint), true (the best/last checkpoint at "
               "the end) or false (default).", choices=_LOG_MODEL_CHOICES),
        EnvVar("DVCLIVE_LOGLEVEL", "WARNING", "DVCLive's log level.", read_by="sdk", kind="log_level"),
        EnvVar("DVC_STUDIO_TOKEN", None, "DVC Studio token; when set DVCLive sends live updates to Studio.",
               secret=True, read_by="sdk"),
        EnvVar("DVC_STUDIO_OFFLINE", None, "true: never contact DVC Studio.", read_by="sdk", kind="bool"),
    )

    def __init__(self, live: Any = None, log_model: bool | str | None = None, **kwargs: Any) -> None:
        if live is not None:
            if kwargs:
                raise TypeError(
                    f"DVCLiveCallback got live=... and Live arguments {sorted(kwargs)}; pass either an "
                    "existing Live or the arguments to create one, not both"
                )
            live_class = self.import_sdk().Live
            if not isinstance(live, live_class):
                raise TypeError(
                    f"DVCLiveCallback(live=...) must be a dvclive.Live or None, got {type(live).__name__}"
                )
        elif kwargs:
            self._check_live_kwargs(kwargs)
        if log_model is None:
            log_model = _parse_log_model(os.environ.get(ENV_LOG_MODEL), ENV_LOG_MODEL)
        else:
            log_model = _parse_log_model(log_model, "DVCLiveCallback(log_model)")
        self.log_model: bool | str | None = log_model
        self._given_live = live
        self._live_kwargs = dict(kwargs)
        # where the Live will write (Live resolves a relative dir against the working directory)
        self._planned_dir = os.path.abspath(str(live.dir if live is not None else kwargs.get("dir", "dvclive")))
        self.live: Any = live
        self._last_point: dict[str, tuple[int, float]] = {}

    def _check_live_kwargs(self, kwargs: dict[str, Any]) -> None:
        accepted = [p for p in inspect.signature(self.import_sdk().Live.__init__).parameters if p != "self"]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"DVCLiveCallback got unknown dvclive.Live argument(s) {unknown}; accepted: {', '.join(accepted)}"
            )

    @property
    def uploads_checkpoints(self) -> bool:
        return self.log_model == "all"

    def sanitize_metric_name(self, name: str) -> str:
        return dvclive_metric_name(name)

    # -- lifecycle ---------------------------------------------------------------------------------

    def setup(self, run: RunInfo) -> None:
        resume_dir = (run.resume or {}).get("dir")
        if self._given_live is not None:
            self.live = self._given_live
        else:
            kwargs = dict(self._live_kwargs)
            if resume_dir:
                kwargs.update(dir=str(resume_dir), resume=True)
            elif run.group and run.trial_name:  # a search trial: <dir>/<search>/<trial>
                kwargs["dir"] = os.path.join(str(kwargs.get("dir", "dvclive")), run.group, str(run.trial_name))
            self.live = self.import_sdk().Live(**kwargs)
        self._last_point.clear()
        if run.resume:
            _drop_rows_after(Path(self.live.dir), run.start_step)
            if "step" in self.live.summary:
                self.live.summary["step"] = run.start_step
        self.live.log_params(run.config)

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self._log(metrics, step, plot=True)
        self.live.next_step()  # writes metrics.json / dvc.yaml; the next log sets the step again

    def log_metrics_batch(self, points: list[tuple[dict[str, float], int, float | None]]) -> None:
        """Every point's rows into the plot files, then DVCLive's step files (``metrics.json``, ``dvc.yaml``,
        the report) written once for the batch rather than once per point."""
        for metrics, step, _epoch in points:
            self._log(metrics, step, plot=True)
        self.live.next_step()  # writes metrics.json / dvc.yaml; the next log sets the step again

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        self._log(metrics, step, plot=False)
        self.live.next_step()

    def _log(self, metrics: dict[str, float], step: int, plot: bool) -> None:
        live = self.live
        live.step = step
        for key, value in metrics.items():
            if plot and self._last_point.get(key) == (step, value):
                continue  # e.g. ``epoch`` in the train and the eval log of one step
            if plot:
                live.log_metric(key, value)
                self._last_point[key] = (step, value)
            else:
                live.log_metric(key, value, plot=False)  # metrics.json only

    def log_media(self, values: dict[str, Media], step: int) -> None:
        live = self.live
        live.step = step
        with TempFiles() as files:  # DVCLive writes the image into its plots directory before returning
            for name, value in values.items():
                if isinstance(value, Image):
                    live.log_image(f"{name}/{step}.png", files.write(value.png(), "image.png"))
                elif isinstance(value, Histogram):
                    counts, edges = value.histogram(name)
                    points = [{"bin": f"{low:.4g}", "count": int(count)} for low, count in zip(edges[:-1], counts)]
                    live.log_plot(name, points, x="bin", y="count", template="bar_horizontal", title=name)
        live.make_dvcyaml()

    def log_artifact(self, path: str, name: str, step: int) -> None:
        target = Path(self.live.dir, "artifacts", name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        if getattr(self.live, "_dvc_repo", None) is not None:  # DVCLive tracks artifacts in a DVC repository only
            self.live.log_artifact(str(target))

    def log_checkpoint(self, path: str, state: Any) -> None:
        self.live.log_artifact(path)

    def _final_model(self, end: RunEnd) -> tuple[str, str] | None:
        """The checkpoint logged as the model at the end of a successful run (``log_model=True``): the best
        one when the trainer loaded it at the end, else the last one saved."""
        best = end.best_checkpoint
        if end.load_best_model_at_end and best and os.path.isdir(best):
            return ("best", best)
        last = end.last_checkpoint
        if last and os.path.isdir(last):
            last_step = _checkpoint_step(last)
            if last_step is not None and last_step != end.step:
                logger.warning(
                    "tracklink: dvclive logs the last checkpoint (step %s) as the model; training ended at "
                    "step %s without a save", last_step, end.step,
                )
            return ("last", last)
        logger.warning(
            "tracklink: dvclive log_model=True, but the trainer wrote no checkpoint in this training; "
            "no model logged (set save_strategy to save one)"
        )
        return None

    def run_identity(self) -> dict[str, Any] | None:
        return {"dir": os.path.abspath(self.live.dir)} if self.live is not None else None

    def state(self) -> dict[str, Any]:
        saved = super().state()
        attributes = saved["attributes"]
        if attributes.get("run") is None and not self.is_active:
            # a checkpoint written before the worker thread ran setup (a slow first import of dvclive):
            # record the directory the run is about to use, so a resume still finds it
            pending = self._tl.resume or {}
            attributes["run"] = {"dir": str(pending.get("dir") or self._planned_dir)}
        return saved

    def finish(self, end: RunEnd) -> None:
        live = self.live
        if live is None:
            return
        try:
            final = self._final_model(end) if end == "success" and self.log_model is True else None
            if final is not None:
                name, path = final
                live.log_artifact(path, name=name, type="model", copy=True)
        finally:
            live.end()
            if self._given_live is None:
                self.live = None


def _checkpoint_step(path: str) -> int | None:
    match = re.search(r"-(\d+)$", os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def _drop_rows_after(live_dir: Path, step: int) -> None:
    """Remove metric rows logged after ``step`` (a resumed training logs them again)."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        with open(tsv, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            fields = reader.fieldnames or []
            rows = list(reader)
        kept = [r for r in rows if _row_step(r) <= step]
        if len(kept) == len(rows):
            continue
        if not kept:
            tsv.unlink()
            continue
        with open(tsv, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fields, delimiter="\t", lineterminator=os.linesep)
            writer.writeheader()
            writer.writerows(kept)


def _row_step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0
