"""Test trackers built on ``tracklink.Tracker``: they record what reaches them to a JSON-lines file, or
fail, or are slow. They are real plugins (the hub treats them like any tracker); they stand in for a
backend where the behaviour under test is the hub's, not an SDK's."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from tracklink.tracker import RunInfo, Tracker

_WRITE_LOCK = threading.Lock()


class RecordingTracker(Tracker):
    """Appends one JSON line per call (setup, metrics, summary, text, checkpoint, finish) to ``path``,
    flushing each line, so what was delivered survives a killed process."""

    name = "recording"

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        self.path = Path(path)
        if name:
            self.name = name  # type: ignore[misc]
        self.run_id: str | None = None

    def _write(self, kind: str, **data: Any) -> None:
        with _WRITE_LOCK, self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, "thread": threading.current_thread().name, **data}, default=str) + "\n")
            f.flush()

    def setup(self, run: RunInfo) -> None:
        self.run_id = (run.resume or {}).get("run_id") or f"run-{time.monotonic_ns()}"
        self._write(
            "setup", run_id=self.run_id, resumed=run.resume is not None, start_step=run.start_step,
            name=run.name, params=run.params, config=run.config,
        )

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self._write("metrics", metrics=metrics, step=step, epoch=epoch)

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        self._write("summary", metrics=metrics, step=step)

    def log_text(self, texts: dict[str, str], step: int) -> None:
        self._write("text", texts=texts, step=step)

    def run_identity(self) -> dict[str, Any] | None:
        return {"run_id": self.run_id}

    def finish(self, status: str) -> None:
        self._write("finish", status=status, run_id=self.run_id)


class ArgsDumpingTracker(RecordingTracker):
    """Also records the arguments object exactly as a transformers-style tracker would see it
    (``args.to_dict()`` inside ``on_train_begin``)."""

    name = "argsdump"

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._write("raw_args", args=args.to_dict(), run_name=getattr(args, "run_name", None))
        super().on_train_begin(args, state, control, model=model, **kwargs)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class FailingTracker(Tracker):
    """Raises in every lifecycle call (setup succeeds unless ``fail_setup``)."""

    name = "failing"
    calls: ClassVar[int] = 0

    def __init__(self, fail_setup: bool = False) -> None:
        self.fail_setup = fail_setup
        self.finished: list[str] = []
        self.exceptions: list[str] = []

    def setup(self, run: RunInfo) -> None:
        if self.fail_setup:
            raise ConnectionError("backend unreachable (planted)")

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        raise RuntimeError(f"planted failure at step {step}")

    def finish(self, status: str) -> None:
        self.finished.append(status)


class SlowTracker(RecordingTracker):
    """Blocks ``delay`` seconds in every metrics call, recording the trainer's step at that moment."""

    name = "slow"

    def __init__(self, path: str | Path, delay: float = 0.2, trainer_ref: list[Any] | None = None) -> None:
        super().__init__(path)
        self.delay = delay
        self.trainer_ref = trainer_ref if trainer_ref is not None else []

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        time.sleep(self.delay)
        live_step = self.trainer_ref[0].state.global_step if self.trainer_ref else None
        self._write("metrics", metrics=metrics, step=step, live_step=live_step)
