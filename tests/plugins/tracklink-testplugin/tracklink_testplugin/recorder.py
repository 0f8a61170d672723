"""``TestRecorderTracker``: a ``tracklink.Tracker`` that writes every lifecycle call to a JSONL file."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import tracklink

from . import DELAY_ENV, OUT_ENV, PROJECT_ENV, SECRET_ENV, record

CHECKPOINTS_ENV = "TRACKLINK_TESTPLUGIN_CHECKPOINTS"
FAIL_ENV = "TRACKLINK_TESTPLUGIN_FAIL_SETUP"


class TestRecorderTracker(tracklink.Tracker):
    """Records every call of the tracker contract; it handles no training event itself (the contract is
    the same whichever loop drives the run)."""

    __test__ = False  # not a pytest test class

    name = "testrecorder"
    media = frozenset({"image", "histogram", "table"})
    env_vars = (
        tracklink.EnvVar(OUT_ENV, None, "JSONL file the plugin appends its records to"),
        tracklink.EnvVar(SECRET_ENV, None, "a fake API key (declared secret; never printed)", secret=True),
        tracklink.EnvVar("TRACKLINK_TESTPLUGIN_MODE", "record", "record or off", choices=("record", "off")),
        tracklink.EnvVar(PROJECT_ENV, None, "a project name the plugin records at setup"),
        tracklink.EnvVar(DELAY_ENV, "0", "seconds each log_metrics call takes (a slow backend)", kind="number",
                         minimum=0),
        tracklink.EnvVar(CHECKPOINTS_ENV, "1", "0: do not take checkpoints (a tracker that uploads none)",
                         kind="bool"),
        tracklink.EnvVar(FAIL_ENV, "0", "1: setup fails (a backend that refuses the run)", kind="bool"),
    )

    @property
    def uploads_checkpoints(self) -> bool:
        return os.environ.get(CHECKPOINTS_ENV, "1").strip() != "0"

    @classmethod
    def ready(cls, env: Mapping[str, str]) -> str | None:
        return None if env.get(OUT_ENV) else f"{OUT_ENV} is not set"

    def setup(self, run: tracklink.RunInfo) -> None:
        if os.environ.get(FAIL_ENV, "0").strip() == "1":
            raise RuntimeError("the test backend refuses the run")
        # the secret's value is never recorded, only whether it is set
        record("tracker", call="setup", start_step=run.start_step, params=run.params, resume=run.resume,
               thread=threading.current_thread().name, project=run.project or os.environ.get(PROJECT_ENV),
               api_key_set=bool(os.environ.get(SECRET_ENV)))

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        delay = float(os.environ.get(DELAY_ENV) or 0)
        if delay:
            time.sleep(delay)
        record("tracker", call="log_metrics", metrics=metrics, step=step, epoch=epoch)

    def log_text(self, texts: dict[str, str], step: int) -> None:
        record("tracker", call="log_text", texts=texts, step=step)

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        record("tracker", call="log_summary", metrics=metrics, step=step)

    def log_media(self, values: dict[str, Any], step: int) -> None:
        record("tracker", call="log_media", step=step, media={key: _media_record(value) for key, value in values.items()})

    def log_artifact(self, path: str, name: str, step: int) -> None:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        record("tracker", call="log_artifact", name=name, step=step, sha256=digest)

    def log_checkpoint(self, path: str, state: Any) -> None:
        record("tracker", call="log_checkpoint", path=path, step=getattr(state, "global_step", None))

    def run_identity(self) -> dict[str, Any]:
        return {"run_id": "testrecorder-run"}

    def finish(self, end: tracklink.RunEnd) -> None:
        record("tracker", call="finish", status=end.status, exit_code=end.exit_code, step=end.step,
               last_checkpoint=end.last_checkpoint,
               exception=type(end.exception).__name__ if end.exception is not None else None)


def _media_record(value: Any) -> dict[str, Any]:
    """What a backend would keep of a media value: an image's PNG digest and caption, a histogram's bins and
    statistics, a table's cells (image cells by digest)."""
    if value.kind == "image":
        return {"kind": "image", "png": hashlib.sha256(value.png()).hexdigest(), "caption": value.caption}
    if value.kind == "histogram":
        counts, edges = value.histogram()
        return {"kind": "histogram", "counts": [float(c) for c in counts], "edges": [float(e) for e in edges],
                "stats": value.stats()}
    if value.kind == "table":
        rows = [[{"png": hashlib.sha256(cell.png()).hexdigest()} if getattr(cell, "kind", None) == "image" else cell
                 for cell in row] for row in value.rows]
        return {"kind": "table", "columns": value.columns, "rows": rows}
    return {"kind": value.kind}
