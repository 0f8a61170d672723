"""TensorBoard tracker (``report_to="tensorboard"``): event files readable by TensorBoard.

What is logged, under transformers' names, at the trainer's ``global_step``:

* numeric logs as scalars: ``train/loss``, ``train/learning_rate``, ``train/grad_norm``, ``train/epoch``,
  ``eval/<metric>``, ``test/<metric>`` and the final summary (``train/train_runtime``, ...);
* string logs as text at the same step;
* media values (``tracklink.Image``, ``Histogram``): images in the Images tab (the PNG tracklink encoded,
  written as an image summary), histograms in the Histograms/Distributions tabs (the bins tracklink
  computed, as a raw histogram summary), ``Text`` as text; a table as Markdown text (TensorBoard renders
  Markdown tables), a figure as an image; files have no place in TensorBoard and are left out;
* the (redacted) training arguments as text ``args`` and the model config as text ``model_config``, and
  both together as TensorBoard hyper-parameters (HParams tab).

Directory: ``TrainingArguments.logging_dir``, else ``TENSORBOARD_LOGGING_DIR`` (``~`` expanded), else
``<output_dir>/runs/<Mon DD_HH-MM-SS>_<hostname>``; during a hyper-parameter search each trial writes to
a sub-directory named after the trial (by default ``<output_dir>/runs/<search name>/<trial>``, so
TensorBoard shows the trials of one search side by side). On resume the run writes into the same directory again and
events after the restored step are purged, so curves do not fork.

Variables: ``TENSORBOARD_LOGGING_DIR``. The SDK is torch's ``SummaryWriter`` (needs the ``tensorboard``
package), or ``tensorboardX`` when only that is installed.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
from datetime import datetime
from typing import Any, ClassVar

from tracklink.atomic import claim_directory
from tracklink.envvars import EnvVar
from tracklink.media import Histogram, Image, Media
from tracklink.shaping import param_value
from tracklink.tracker import RunEnd, RunInfo, Tracker

__all__ = ["TensorBoardCallback"]


def default_logging_dir(output_dir: str) -> str:
    """transformers' default: ``<output_dir>/runs/<Mon DD_HH-MM-SS>_<hostname>``."""
    stamp = datetime.now().strftime("%b%d_%H-%M-%S")
    return os.path.join(output_dir, "runs", f"{stamp}_{socket.gethostname()}")


class TensorBoardCallback(Tracker):
    """Writes scalars, text and hyper-parameters to TensorBoard event files.

    Args:
        tb_writer: an existing ``SummaryWriter`` to use instead of creating one (it is flushed, not
            closed, at the end of training).
    """

    name = "tensorboard"
    init_kwargs_target = "the SummaryWriter (e.g. flush_secs, max_queue)"
    # torch's SummaryWriter needs tensorboard (or its nightly build); tensorboardX alone is the fallback
    sdk = ("tensorboard", "tb-nightly", "tensorboardX")
    sdk_min_version: ClassVar[dict[str, str]] = {"tensorboard": "2.10", "tb-nightly": "2.10", "tensorboardX": "2.2"}
    sdk_module = "tensorboard"
    extra = "tensorboard"
    media = frozenset({"image", "histogram"})
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("TENSORBOARD_LOGGING_DIR", None,
               "Directory for the event files when TrainingArguments.logging_dir is not set "
               "(default: <output_dir>/runs/<date>_<host>)."),
    )

    def __init__(self, tb_writer: Any = None) -> None:
        self.tb_writer = tb_writer
        self._own_writer = tb_writer is None
        self.log_dir: str | None = None
        self._summary: Any = None
        self._package: str | bool | None = False  # not looked up yet (see _writer_package)

    def _writer_class(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter
        except ImportError:
            try:
                from tensorboardX import SummaryWriter  # type: ignore[no-redef]

                return SummaryWriter
            except ImportError:
                self.import_sdk("torch.utils.tensorboard")  # raises the install hint
                raise

    def _resolve_dir(self, run: RunInfo) -> str:
        if run.resume and run.resume.get("log_dir"):
            return str(run.resume["log_dir"])
        base = getattr(run.args, "logging_dir", None) or os.environ.get("TENSORBOARD_LOGGING_DIR")
        by_time = False
        if base:
            base = os.path.expanduser(base)
        elif run.group:  # all trials of a search side by side: <output_dir>/runs/<search>/<trial>
            base = os.path.join(run.output_dir or ".", "runs", run.group)
        else:
            base, by_time = default_logging_dir(run.output_dir or "."), True
        if run.is_hyper_param_search and run.trial_name:
            base = os.path.join(base, str(run.trial_name))
        # a directory named by the second (transformers' default) is claimed, so two runs never share one
        return claim_directory(base) if by_time else base

    def setup(self, run: RunInfo) -> None:
        if self.tb_writer is None or not self._own_writer:
            self.log_dir = self._resolve_dir(run)
        if self.tb_writer is None:
            writer_class = self._writer_class()
            # purge_step drops events at or after it: the run continues from the restored step
            purge = run.start_step + 1 if run.resume else None
            self.tb_writer = writer_class(log_dir=self.log_dir, purge_step=purge, **run.extra)
            self._package, self._summary = False, None  # looked up again for this writer
            self._own_writer = True
        else:
            self.log_dir = getattr(self.tb_writer, "log_dir", None) or getattr(self.tb_writer, "logdir", None)
        if run.resume:
            return
        self.tb_writer.add_text("args", json.dumps(run.args_config, indent=2, sort_keys=True), run.start_step)
        if run.model_config:
            self.tb_writer.add_text(
                "model_config", json.dumps(run.model_config, indent=2, sort_keys=True), run.start_step
            )
        self._write_hparams(run.params)
        self.tb_writer.flush()

    def _write_hparams(self, params: dict[str, Any]) -> None:
        hparams = self._from_writer_package("torch.utils.tensorboard.summary", "tensorboardX.summary", "hparams")
        clean = {k: param_value(v) for k, v in params.items()}
        experiment, start, end = hparams(clean, {})
        file_writer = self.tb_writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self._add_scalars(metrics, step)
        self.tb_writer.flush()

    def log_metrics_batch(self, points: list[tuple[dict[str, float], int, float | None]]) -> None:
        """Every point, then one flush (a flush per point made a backlog slow to catch up)."""
        for metrics, step, _epoch in points:
            self._add_scalars(metrics, step)
        self.tb_writer.flush()

    def _add_scalars(self, metrics: dict[str, float], step: int) -> None:
        """One event per call holding every scalar of the step, as TensorFlow's merged summaries do.

        TensorBoard reads each value of an event as its own scalar; one record instead of one per key cuts the
        writer's per-record work (checksums, a file append, a hand-off to its thread) by the number of keys."""
        if not metrics:
            return
        if self._writer_package() is None:  # a writer of another make: its own add_scalar
            for key, value in metrics.items():
                self.tb_writer.add_scalar(key, value, step)
            return
        summary_class = self._summary_class()
        values = [summary_class.Value(tag=key, simple_value=float(value)) for key, value in metrics.items()]
        self.tb_writer._get_file_writer().add_summary(summary_class(value=values), step)

    def _writer_package(self) -> str | None:
        """``torch`` or ``tensorboardX`` when the writer is (a subclass of) one of their SummaryWriters."""
        if self._package is False:
            self._package = next((cls.__module__.partition(".")[0] for cls in type(self.tb_writer).__mro__
                                  if cls.__module__.partition(".")[0] in ("torch", "tensorboardX")
                                  and hasattr(cls, "_get_file_writer")), None)
        return self._package  # type: ignore[return-value]

    def _summary_class(self) -> Any:
        """The ``Summary`` protobuf class the writer's package expects (torch's writer uses tensorboard's)."""
        if self._summary is None:
            self._summary = self._from_writer_package(
                "tensorboard.compat.proto.summary_pb2", "tensorboardX.proto.summary_pb2", "Summary")
        return self._summary

    def _from_writer_package(self, torch_module: str, x_module: str, name: str) -> Any:
        """``name`` from the module of the writer's own package (its protobuf classes must match the writer's),
        else from the other one (tensorboardX alone)."""
        modules = [torch_module, x_module]
        if self._writer_package() == "tensorboardX":
            modules.reverse()
        try:
            return getattr(importlib.import_module(modules[0]), name)
        except ImportError:
            return getattr(importlib.import_module(modules[1]), name)

    def log_text(self, texts: dict[str, str], step: int) -> None:
        for key, value in texts.items():
            self.tb_writer.add_text(key, value, step)
        self.tb_writer.flush()

    def log_media(self, values: dict[str, Media], step: int) -> None:
        for name, value in values.items():
            if isinstance(value, Image):
                self._add_image(name, value, step)
            elif isinstance(value, Histogram):
                counts, edges = value.histogram(name)
                stats = value.stats(name)
                self.tb_writer.add_histogram_raw(
                    name, min=stats["min"], max=stats["max"], num=stats["num"], sum=stats["sum"],
                    sum_squares=stats["sum_squares"], bucket_limits=[float(e) for e in edges[1:]],
                    bucket_counts=[float(c) for c in counts], global_step=step,
                )
        self.tb_writer.flush()

    def _add_image(self, name: str, image: Image, step: int) -> None:
        """An image summary holding the PNG as it is (no decoding and re-encoding by the writer)."""
        summary_class = self._summary_class()
        png = image.png()
        colorspace = {0: 1, 2: 3, 4: 2, 6: 4}.get(png[25], 3)  # PNG colour type -> channels
        proto = summary_class.Image(height=image.height, width=image.width, colorspace=colorspace,
                              encoded_image_string=png)
        summary = summary_class(value=[summary_class.Value(tag=name, image=proto)])
        self.tb_writer._get_file_writer().add_summary(summary, step)

    def run_identity(self) -> dict[str, Any] | None:
        return {"log_dir": self.log_dir} if self.log_dir else None

    def finish(self, end: RunEnd) -> None:
        if self.tb_writer is None:
            return
        if self._own_writer:
            self.tb_writer.close()
            self.tb_writer = None
        else:
            self.tb_writer.flush()
