"""``TestRecorderTracker``: a ``tracklink.Tracker`` that writes every lifecycle call to a JSONL file."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import tracklink

from . import OUT_ENV, PROJECT_ENV, SECRET_ENV, record


class TestRecorderTracker(tracklink.Tracker):
    """Records every call of the tracker contract; it handles no training event itself (the contract is
    the same whichever loop drives the run)."""

    __test__ = False  # not a pytest test class

    name = "testrecorder"
    env_vars = (
        tracklink.EnvVar(OUT_ENV, None, "JSONL file the plugin appends its records to"),
        tracklink.EnvVar(SECRET_ENV, None, "a fake API key (declared secret; never printed)", secret=True),
        tracklink.EnvVar("TRACKLINK_TESTPLUGIN_MODE", "record", "record or off", choices=("record", "off")),
        tracklink.EnvVar(PROJECT_ENV, None, "a project name the plugin records at setup"),
    )

    @classmethod
    def ready(cls, env: Mapping[str, str]) -> str | None:
        return None if env.get(OUT_ENV) else f"{OUT_ENV} is not set"

    def setup(self, run: tracklink.RunInfo) -> None:
        # the secret's value is never recorded, only whether it is set
        record("tracker", call="setup", start_step=run.start_step, params=run.params,
               thread=threading.current_thread().name, project=run.project or os.environ.get(PROJECT_ENV),
               api_key_set=bool(os.environ.get(SECRET_ENV)))

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        record("tracker", call="log_metrics", metrics=metrics, step=step, epoch=epoch)

    def log_text(self, texts: dict[str, str], step: int) -> None:
        record("tracker", call="log_text", texts=texts, step=step)

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        record("tracker", call="log_summary", metrics=metrics, step=step)

    def log_checkpoint(self, path: str, state: Any) -> None:
        record("tracker", call="log_checkpoint", path=path, step=getattr(state, "global_step", None))

    def run_identity(self) -> dict[str, Any]:
        return {"run_id": "testrecorder-run"}

    def finish(self, end: tracklink.RunEnd) -> None:
        record("tracker", call="finish", status=end.status, exit_code=end.exit_code, step=end.step,
               last_checkpoint=end.last_checkpoint,
               exception=type(end.exception).__name__ if end.exception is not None else None)
