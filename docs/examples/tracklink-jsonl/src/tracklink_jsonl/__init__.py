"""A complete third-party tracker: every run becomes ``<TRACKLINK_JSONL_DIR>/<run id>.jsonl``.

Each line is one record: ``{"type": "params" | "metrics" | "summary" | "end", ...}``. Resuming from a
checkpoint appends to the same file, because the run id is stored in the checkpoint.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from tracklink import EnvVar, RunEnd, RunInfo, Tracker


class JsonlTracker(Tracker):
    name = "jsonl"                       # the report_to name; must match the entry point name
    env_vars = (
        EnvVar("TRACKLINK_JSONL_DIR", "jsonl-runs", "Directory the run files are written to."),
        EnvVar("TRACKLINK_JSONL_FLUSH", "every", "When to flush the file.", choices=("every", "end")),
    )
    # No SDK to declare: a tracker with an SDK sets sdk = "<distribution>", sdk_min_version and sdk_module,
    # and imports the SDK only inside setup().

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory
        self.path: Path | None = None
        self.run_id: str | None = None
        self._file: Any = None

    @classmethod
    def ready(cls, env):
        return None  # local files: always usable by report_to="all"

    def setup(self, run: RunInfo) -> None:
        self.run_id = (run.resume or {}).get("run_id") or uuid.uuid4().hex[:12]
        directory = Path(self.directory or os.environ.get("TRACKLINK_JSONL_DIR", "jsonl-runs"))
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{self.run_id}.jsonl"
        self._file = self.path.open("a")
        if run.resume is None:
            self._write({"type": "params", "name": run.name, "params": run.params})

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        if os.environ.get("TRACKLINK_JSONL_FLUSH", "every") == "every":
            self._file.flush()

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self._write({"type": "metrics", "step": step, "epoch": epoch, "metrics": metrics})

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        self._write({"type": "summary", "step": step, "metrics": metrics})

    def run_identity(self) -> dict[str, Any] | None:
        return {"run_id": self.run_id}

    def finish(self, end: RunEnd) -> None:
        self._write({"type": "end", "status": end.status, "exit_code": end.exit_code})
        self._file.close()
