"""SwanLab tracker (``report_to="swanlab"``): experiments in SwanLab's cloud, or its local/offline files.

Where: ``SWANLAB_MODE`` chooses, as in transformers: ``online`` (SwanLab's default; ``cloud`` is its older
name) syncs to the cloud or to a private deployment (``SWANLAB_API_HOST``/``SWANLAB_WEB_HOST``) and needs
an API key (``SWANLAB_API_KEY`` or ``swanlab login``); ``offline`` writes the run to
``SWANLAB_LOG_DIR`` (default ``./swanlog``) for ``swanlab sync`` later; ``local`` writes there too and feeds
SwanLab's local dashboard (``swanlab watch``, which needs ``swanlab[dashboard]``); ``disabled`` switches the
tracker off. The mode's case does not matter (SwanLab itself takes lower case only).

Which experiment: project = ``tracklink.init(project=...)``, else ``SWANLAB_PROJECT``, else the working
directory's name (SwanLab's default); experiment name = ``TrainingArguments.run_name`` (a search trial is
named after the trial and grouped by the search). ``SWANLAB_RUN_ID`` continues that experiment (with
``SWANLAB_RESUME``, default ``allow``); a training resumed from a checkpoint continues the experiment
recorded in it (``resume="allow"``, as transformers does on ``resume_from_checkpoint``). A SwanLab run
already open in the process (``swanlab.init()`` before training) is used and left open.

What is logged: the (redacted) hyper-parameters as the experiment's config; metrics under transformers'
names (``train/loss``, ``eval/loss``, ...) with ``train/global_step``, at the trainer's ``global_step``; the
final summary as transformers names it, ``single_value/train_runtime``, ``single_value/train_loss``, ...;
string values as SwanLab text. Media values: ``tracklink.Image`` as ``swanlab.Image`` (with its caption;
a histogram or a figure as an image), ``Text`` as SwanLab text, a table as Markdown text; files have no
place in SwanLab's offline record and are left out. The experiment ends ``success``, ``crashed`` (training raised; the
redacted exception is its error) or ``aborted`` (interrupted, SIGTERM).

``SWANLAB_LOG_MODEL`` behaves as in transformers, where SwanLab cannot save models yet: when set, a warning
says so and nothing is uploaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from tracklink.envvars import EnvVar
from tracklink.media import Image, Media
from tracklink.redact import current_secrets, redact_text
from tracklink.tracker import RunEnd, RunInfo, Tracker

__all__ = ["SwanLabCallback"]

logger = logging.getLogger("tracklink")

MODES = ("online", "cloud", "local", "offline", "disabled")
RESUME_CHOICES = ("must", "allow", "never", "true", "false", "yes", "no")
STATES = {"success": "success", "failed": "crashed", "killed": "aborted"}
_ENV_LOCK = threading.Lock()


def _mode(env: Mapping[str, str]) -> str:
    mode = (env.get("SWANLAB_MODE") or "").strip().lower() or "online"
    return "online" if mode == "cloud" else mode


def _netrc_files(env: Mapping[str, str]) -> list[Path]:
    """Where ``swanlab login`` keeps the key: ``./.swanlab/.netrc``, then the user's SwanLab folder."""
    home = env.get("HOME") or os.path.expanduser("~")
    root = env.get("SWANLAB_ROOT") or env.get("SWANLAB_SAVE_DIR") or os.path.join(home, ".swanlab")
    return [Path.cwd() / ".swanlab" / ".netrc", Path(root) / ".netrc"]


@contextlib.contextmanager
def _environment_for_swanlab() -> Iterator[str | None]:
    """SwanLab 0.10 reads every ``SWANLAB_*`` variable into its settings when a run starts, where
    ``SWANLAB_PROJECT`` must be a JSON object and ``SWANLAB_MODE`` lower case: the plain project name
    transformers documents, or ``Offline``, would make ``swanlab.init`` fail. While SwanLab reads them, the
    project variable is out of the environment (its name is passed as an argument instead, and yielded here)
    and the mode is in lower case; both are put back afterwards."""
    with _ENV_LOCK:
        saved = {name: os.environ.get(name) for name in ("SWANLAB_PROJECT", "SWANLAB_MODE")}
        project = saved["SWANLAB_PROJECT"]
        hide = project is not None and not project.strip().startswith("{")
        if hide:
            del os.environ["SWANLAB_PROJECT"]
        if saved["SWANLAB_MODE"] is not None:
            os.environ["SWANLAB_MODE"] = saved["SWANLAB_MODE"].strip().lower()
        try:
            yield project.strip() if hide and project else None
        finally:
            for name, value in saved.items():
                if value is not None:
                    os.environ[name] = value


class SwanLabCallback(Tracker):
    """Logs to SwanLab (see the module documentation). Takes no arguments, like transformers'."""

    name = "swanlab"
    init_kwargs_target = "swanlab.init() (e.g. workspace, tags, description, group)"
    sdk = "swanlab"
    sdk_min_version = "0.10"
    sdk_module = "swanlab"
    extra = "swanlab"
    media = frozenset({"image"})
    media_reserved = ("train/global_step",)
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("SWANLAB_PROJECT", None, "Project of the experiment (tracklink.init(project=...) wins; default: "
               "the working directory's name)."),
        EnvVar("SWANLAB_MODE", "online", "online (also: cloud) syncs to SwanLab; offline writes the run to "
               "SWANLAB_LOG_DIR for `swanlab sync`; local writes there for `swanlab watch`; disabled switches "
               "the tracker off.", choices=MODES),
        EnvVar("SWANLAB_LOG_DIR", "./swanlog", "Directory of the run files in offline and local mode.",
               read_by="sdk"),
        EnvVar("SWANLAB_API_KEY", None, "API key for online mode (or `swanlab login`).", secret=True,
               read_by="sdk"),
        EnvVar("SWANLAB_API_HOST", None, "API address of a private SwanLab deployment.", read_by="sdk"),
        EnvVar("SWANLAB_WEB_HOST", None, "Web address of a private SwanLab deployment.", read_by="sdk"),
        EnvVar("SWANLAB_RUN_ID", None, "Continue this experiment (a resumed training continues the one "
               "recorded in its checkpoint when this is unset)."),
        EnvVar("SWANLAB_RESUME", None, "Resume policy for SWANLAB_RUN_ID (default: allow).",
               choices=RESUME_CHOICES),
        EnvVar("SWANLAB_LOG_MODEL", None, "As in transformers: SwanLab cannot save models yet; when set, a "
               "warning says so and nothing is uploaded."),
    )

    def __init__(self) -> None:
        self._run: Any = None
        self._owns_run = False
        self._project: str | None = None

    # -- declarations -------------------------------------------------------------------------

    @classmethod
    def ready(cls, env: Mapping[str, str]) -> str | None:
        if _mode(env) != "online":
            return None
        if (env.get("SWANLAB_API_KEY") or "").strip() or any(p.is_file() for p in _netrc_files(env)):
            return None
        return ("no SwanLab API key (SWANLAB_API_KEY, or `swanlab login`) and SWANLAB_MODE is not offline or "
                "local")

    @classmethod
    def disabled_by(cls, env: Mapping[str, str]) -> str | None:
        return "disabled by SWANLAB_MODE=disabled" if _mode(env) == "disabled" else None

    # -- lifecycle ----------------------------------------------------------------------------

    def setup(self, run: RunInfo) -> None:
        swanlab = self.import_sdk()
        if os.environ.get("SWANLAB_LOG_MODEL") is not None:
            self._warn_once("log_model", "SWANLAB_LOG_MODEL is set, but SwanLab cannot save models yet (as in "
                                         "transformers); no model is uploaded")
        if swanlab.has_run():  # the user's own run: used, never finished here
            self._run, self._owns_run = swanlab.get_run(), False
            self._run.config.update(run.config)
            return
        with _environment_for_swanlab() as env_project:
            self._run = swanlab.init(**self._init_args(run, env_project))
        self._owns_run = True

    def _init_args(self, run: RunInfo, env_project: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {"config": dict(run.config)}
        if os.environ.get("SWANLAB_MODE", "").strip():
            args["mode"] = _mode(os.environ)
        resume = run.resume or {}
        project = resume.get("project") or run.project or env_project
        if project:
            args["project"] = str(project)
        if run.name:
            args["name"] = run.name
        if run.group:
            args["group"] = run.group
        env_id = (os.environ.get("SWANLAB_RUN_ID") or "").strip()
        if env_id or resume.get("run_id"):
            args["id"] = env_id or resume["run_id"]
            args["resume"] = (os.environ.get("SWANLAB_RESUME") or "").strip().lower() or "allow"
        self._project = args.get("project")
        return {**args, **run.extra}

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self._run.log({**metrics, "train/global_step": step}, step=int(step))

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        # transformers' names: single_value/train_runtime, single_value/total_flos, ...
        self._run.log({f"single_value/{k.removeprefix('train/')}": v for k, v in metrics.items()}, step=int(step))

    def log_media(self, values: dict[str, Media], step: int) -> None:
        import swanlab

        row = {}
        for name, value in values.items():
            if isinstance(value, Image):
                pixels = value.pixels()
                row[name] = swanlab.Image(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, caption=value.caption)
        if row:
            self._run.log(row, step=int(step))

    def log_text(self, texts: dict[str, str], step: int) -> None:
        import swanlab

        self._run.log({k: swanlab.Text(v) for k, v in texts.items()}, step=int(step))

    def run_identity(self) -> dict[str, Any] | None:
        if self._run is None:
            return None
        identity = {"run_id": getattr(self._run, "id", None), "project": self._project}
        return {k: v for k, v in identity.items() if v}

    def finish(self, end: RunEnd) -> None:
        run, self._run = self._run, None
        if run is None or not self._owns_run:
            return
        error = None
        if end == "failed":
            error = "unknown"
            if end.exception is not None:
                text = f"{type(end.exception).__name__}: {end.exception}".rstrip(": ")
                error = redact_text(text, current_secrets())[:2000]
        run.finish(state=STATES[end.status], error=error)
