"""Trackio tracker (``report_to="trackio"``): runs in Trackio's local SQLite database (or a Space).

`Trackio <https://github.com/gradio-app/trackio>`_ stores each project in one SQLite file,
``<TRACKIO_DIR>/<project>.db`` (``TRACKIO_DIR`` defaults to ``$HF_HOME/trackio``, i.e.
``~/.cache/huggingface/trackio``), and serves a dashboard for it with ``trackio show``. With
``TRACKIO_SPACE_ID`` (or ``init_kwargs={"trackio": {"space_id": ...}}``) it logs to a Hugging Face Space
instead, with ``TRACKIO_SERVER_URL`` to a self-hosted Trackio server.

Which run: the project is ``tracklink.init(project=...)``, else ``TRACKIO_PROJECT``, else ``huggingface``
(transformers' default); the run is named ``TrainingArguments.run_name`` (Trackio picks a name when it is
unset; a search trial is named after the trial, grouped by the search). A new training creates a new run
(``resume="never"``), even under a name used before; a training resumed from a checkpoint re-attaches to the
run recorded in the checkpoint (``resume="must"`` by its project and name), and steps that run already holds
after the restored step are not logged twice.

What is logged: the (redacted) hyper-parameters as the run's config (keys Trackio reserves, those starting
with ``_``, lose the underscore); metrics under transformers' names (``train/loss``, ``eval/loss``, the final
summary as ``train/train_runtime`` ...) at the trainer's ``global_step``. Media values go into the same
rows: ``tracklink.Image`` as ``trackio.Image`` (with its caption), ``Histogram`` as ``trackio.Histogram``
(tracklink's bins), ``Table`` as ``trackio.Table`` (image cells as images), text (strings and ``Text``) as
``trackio.Markdown``, a figure as an image; ``File`` values as run artifacts (``run.log_artifact``, type
``file``, named after the key). Trackio has no run status: a run
that fails or is killed gets an alert (level ``ERROR`` for a failure, ``WARN`` for an interruption or SIGTERM)
titled ``training failed``/``training killed`` with the (redacted) exception, shown in the dashboard.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from tracklink.envvars import EnvVar
from tracklink.media import Histogram, Image, Media, Table
from tracklink.redact import current_secrets, redact_text
from tracklink.tracker import RunEnd, RunInfo, Tracker

__all__ = ["TrackioCallback"]

logger = logging.getLogger("tracklink")

DEFAULT_PROJECT = "huggingface"


def trackio_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as Trackio accepts it: it refuses keys starting with ``_`` (its own), so they lose the
    underscore unless that name is taken."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = str(key)
        if name.startswith("_"):
            stripped = name.lstrip("_")
            if not stripped or stripped in config:
                continue
            name = stripped
        out[name] = value
    return out


def _hf_token_present(env: Mapping[str, str]) -> bool:
    if (env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or "").strip():
        return True
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(env.get("HF_TOKEN_PATH") or os.path.join(home, "token")).is_file()


def _error_text(end: RunEnd) -> str | None:
    if end.exception is None:
        return None
    text = f"{type(end.exception).__name__}: {end.exception}".rstrip(": ")
    return redact_text(text, current_secrets())[:2000]


class TrackioCallback(Tracker):
    """Logs to Trackio (see the module documentation). Takes no arguments, like transformers'."""

    name = "trackio"
    init_kwargs_target = "trackio.init() (e.g. space_id, group, auto_log_gpu)"
    sdk = "trackio"
    sdk_min_version = "0.18"
    sdk_module = "trackio"
    extra = "trackio"
    media = frozenset({"image", "histogram", "table"})
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("TRACKIO_PROJECT", DEFAULT_PROJECT, "Project of the run (tracklink.init(project=...) wins)."),
        EnvVar("TRACKIO_DIR", "$HF_HOME/trackio", "Directory of Trackio's local databases, one <project>.db per "
               "project (HF_HOME defaults to ~/.cache/huggingface); read when trackio is first imported.",
               read_by="sdk"),
        EnvVar("TRACKIO_SPACE_ID", None, "Log to this Hugging Face Space (user/space, created when missing) "
               "instead of the local database; needs a Hugging Face login (HF_TOKEN).", read_by="sdk"),
        EnvVar("TRACKIO_SERVER_URL", None, "Log to this self-hosted Trackio server instead of the local "
               "database (ignored when TRACKIO_SPACE_ID is set); needs TRACKIO_WRITE_TOKEN.", read_by="sdk",
               kind="url"),
        EnvVar("TRACKIO_WRITE_TOKEN", None, "Write token of TRACKIO_SERVER_URL.", secret=True, read_by="sdk"),
    )

    def __init__(self) -> None:
        self._run: Any = None
        self._project: str | None = None
        self._floor = -1
        self._start_step = 0

    # -- declarations -------------------------------------------------------------------------

    @classmethod
    def ready(cls, env: Mapping[str, str]) -> str | None:
        if (env.get("TRACKIO_SPACE_ID") or "").strip():
            if not _hf_token_present(env):
                return "TRACKIO_SPACE_ID is set but there is no Hugging Face token (HF_TOKEN or `hf auth login`)"
            return None
        url = (env.get("TRACKIO_SERVER_URL") or "").strip()
        if url and "write_token=" not in url and not (env.get("TRACKIO_WRITE_TOKEN") or "").strip():
            return "TRACKIO_SERVER_URL is set but TRACKIO_WRITE_TOKEN is not"
        return None  # the local database needs nothing

    # -- lifecycle ----------------------------------------------------------------------------

    def setup(self, run: RunInfo) -> None:
        trackio = self.import_sdk()
        resume = run.resume or {}
        project = str(resume.get("project") or run.project or os.environ.get("TRACKIO_PROJECT") or DEFAULT_PROJECT)
        name = resume.get("name") or run.name
        kwargs: dict[str, Any] = {"project": project, "name": name, "config": trackio_config(run.config),
                                  "resume": "must" if resume.get("name") else "never"}
        if run.group:
            kwargs["group"] = run.group
        if resume.get("space_id") and not os.environ.get("TRACKIO_SPACE_ID"):
            kwargs["space_id"] = resume["space_id"]
        kwargs.update(run.extra)
        self._run = trackio.init(**kwargs)
        self._project = project
        self._start_step = int(run.start_step or 0)
        self._floor = -1
        if resume:
            wanted = resume.get("run_id")
            if wanted and getattr(self._run, "id", wanted) != wanted:
                logger.warning("tracklink: Trackio run %r of project %r is not the run this checkpoint recorded "
                               "(another run took its name); logging into it", name, project)
            next_step = getattr(self._run, "_next_step", None)  # one past the last step the run holds
            if isinstance(next_step, int):
                self._floor = next_step - 1

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        if self._start_step < step <= self._floor:
            return  # the re-attached run already holds this step
        self._run.log(dict(metrics), step=int(step))

    def log_media(self, values: dict[str, Media], step: int) -> None:
        import trackio

        if self._start_step < step <= self._floor:
            return  # the re-attached run already holds this step

        def image(value: Image) -> Any:  # pixels: Trackio encodes them when its batch is written
            pixels = value.pixels()
            return trackio.Image(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, caption=value.caption)

        row: dict[str, Any] = {}
        for name, value in values.items():
            if isinstance(value, Image):
                row[name] = image(value)
            elif isinstance(value, Histogram):
                counts, edges = value.histogram(name)
                row[name] = trackio.Histogram(np_histogram=(counts, edges))
            elif isinstance(value, Table):
                rows = [[image(c) if isinstance(c, Image) else c for c in r] for r in value.rows]
                row[name] = trackio.Table(columns=value.columns, data=rows)
        if row:
            self._run.log(row, step=int(step))

    def log_text(self, texts: dict[str, str], step: int) -> None:
        import trackio

        if not self._start_step < step <= self._floor:
            self._run.log({k: trackio.Markdown(v) for k, v in texts.items()}, step=int(step))

    def log_artifact(self, path: str, name: str, step: int) -> None:
        key = name.rsplit("/", 1)[0] if "/" in name else name
        self._run.log_artifact(path, name="".join(c if c.isalnum() or c in "-_." else "-" for c in key),
                               type="file", aliases=[f"step_{step}"])

    def run_identity(self) -> dict[str, Any] | None:
        if self._run is None:
            return None
        identity = {"project": self._project, "name": getattr(self._run, "name", None),
                    "run_id": getattr(self._run, "id", None), "space_id": getattr(self._run, "_space_id", None)}
        return {k: v for k, v in identity.items() if v}

    def finish(self, end: RunEnd) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        try:
            if end != "success":
                self._alert(run, end)
        finally:
            run.finish()

    def _alert(self, run: Any, end: RunEnd) -> None:
        import trackio

        level_type = getattr(trackio, "AlertLevel", None)
        if level_type is None or not hasattr(run, "alert"):
            return
        level = level_type.ERROR if end == "failed" else level_type.WARN
        text = _error_text(end) or ("interrupted" if end == "killed" else None)
        run.alert(title=f"training {end}", text=text, level=level, step=end.step or None)
