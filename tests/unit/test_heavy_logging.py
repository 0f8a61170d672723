"""Heavy logging: a tracker that falls behind gets batches, a queued event holds only what it needs, the queue
is bounded in bytes as well as events, a drain timeout reports what was left out and never closes a run
while its worker still delivers, and runs started in the same second never share a directory.

Bad inputs tried here: ``TRACKLINK_QUEUE_BYTES=lots`` and ``=10`` (ValueError naming the value and the minimum).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from helpers import make_trainer
from tracker_doubles import RecordingTracker, read_records
from tracklink import CallbackHandler, TrainerControl, TrainerState
from tracklink.delivery import DeliverySettings, HistoryView, snapshot

TESTS = Path(__file__).resolve().parent.parent


class BatchingRecorder(RecordingTracker):
    """Records each call, and how many points each batch carried; slow per call, so it falls behind."""

    name = "batching"

    def __init__(self, path: Path, delay: float = 0.0) -> None:
        super().__init__(path)
        self.delay = delay
        self.batches: list[int] = []

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        time.sleep(self.delay)
        self.batches.append(1)
        super().log_metrics(metrics, step, epoch)

    def log_metrics_batch(self, points: list[tuple[dict[str, float], int, float | None]]) -> None:
        time.sleep(self.delay)
        self.batches.append(len(points))
        for metrics, step, epoch in points:
            RecordingTracker.log_metrics(self, metrics, step, epoch)


def test_a_tracker_that_falls_behind_gets_batches_in_order(tmp_path: Path) -> None:
    tracker = BatchingRecorder(tmp_path / "rec.jsonl", delay=0.05)
    trainer = make_trainer(tmp_path / "out", callbacks=[tracker], max_steps=60, logging_steps=1, eval_strategy="no",
                           save_strategy="no")
    trainer.train()
    steps = [r["step"] for r in read_records(tracker.path) if r["kind"] == "metrics" and "train/loss" in r["metrics"]]
    expected = [h["step"] for h in trainer.state.log_history if "loss" in h]
    assert steps == expected == list(range(1, 61)), "every point, in order"
    assert max(tracker.batches) > 1 and len(tracker.batches) < 60, tracker.batches


def test_trackers_without_a_batch_path_get_every_event_alone(tmp_path: Path) -> None:
    tracker = RecordingTracker(tmp_path / "rec.jsonl")
    trainer = make_trainer(tmp_path / "out", callbacks=[tracker], max_steps=30, logging_steps=1, eval_strategy="no",
                           save_strategy="no")
    trainer.train()
    records = read_records(tracker.path)
    assert [r["step"] for r in records if r["kind"] == "metrics" and "train/loss" in r["metrics"]] == list(range(1, 31))


def test_a_queued_event_does_not_copy_the_history() -> None:
    history = [{"loss": float(i), "step": i} for i in range(10_000)]
    state = TrainerState(global_step=10_000, log_history=history)
    snap = snapshot({"args": None, "state": state, "control": TrainerControl(), "logs": {"loss": 1.0}})
    view = snap["state"].log_history
    assert isinstance(view, HistoryView) and view._items is history  # shared, not copied
    history.append({"loss": 2.0, "step": 10_001})
    assert len(view) == 10_000 and view[-1] == {"loss": 9999.0, "step": 9999}
    assert view[:2] == history[:2] and list(view)[-1]["step"] == 9999 and view == history[:10_000]
    with pytest.raises(IndexError):
        view[10_000]


def test_the_queue_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_QUEUE_BYTES", "4096")
    gate = threading.Event()
    seen: list[int] = []

    class Gated(RecordingTracker):
        name = "gated"

        def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
            gate.wait(10)
            seen.append(step)

    handler = CallbackHandler(require_flow=False)
    handler.add_tracker(Gated(Path("/dev/null")), "gated")
    channel = handler._entries[0].channel
    args, control = type("A", (), {"to_dict": lambda self: {}})(), TrainerControl()
    handler.on_train_begin(args, TrainerState(), control)
    wide = {f"k{i}": 1.0 for i in range(40)}  # ~7 KB by the estimate: one event fills the queue

    def produce() -> None:
        for step in range(1, 4):
            handler.on_log(args, TrainerState(global_step=step), control, logs=wide)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.3)
    assert producer.is_alive(), "the training thread waits while the queue holds its bytes"
    assert channel._bytes - channel._freed <= 4096 + 1024 + 160 * 40
    gate.set()
    producer.join(10)
    assert handler.wait_for_trackers(10)
    assert seen == [1, 2, 3], "nothing dropped"


@pytest.mark.parametrize("value", ["lots", "10"])
def test_bad_queue_bytes(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("TRACKLINK_QUEUE_BYTES", value)
    with pytest.raises(ValueError, match=f"TRACKLINK_QUEUE_BYTES='{value}'"):
        DeliverySettings.from_env()


def test_drain_timeout_reports_what_was_left_out_and_closes_after_the_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TRACKLINK_DRAIN_TIMEOUT", "0.5")
    caplog.set_level(logging.WARNING, logger="tracklink")

    class Slow(RecordingTracker):
        name = "slowpoke"

        def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
            time.sleep(0.05)
            super().log_metrics(metrics, step, epoch)

    tracker = Slow(tmp_path / "rec.jsonl")
    trainer = make_trainer(tmp_path / "out", callbacks=[tracker], max_steps=100, logging_steps=1, eval_strategy="no",
                           save_strategy="no")
    trainer.train()
    records = read_records(tracker.path)
    delivered = [r for r in records if r["kind"] == "metrics" and "train/loss" in r["metrics"]]
    assert records[-1]["kind"] == "finish", "the run is closed after the worker stopped delivering"
    assert 0 < len(delivered) < 100
    lost = 100 - len(delivered)
    warning = [r.getMessage() for r in caplog.records if "fell behind" in r.getMessage()]
    assert warning and "'slowpoke'" in warning[0] and "TRACKLINK_DRAIN_TIMEOUT=0.5" in warning[0]
    summary = trainer.callback_handler.tracker_failures()["slowpoke"]
    assert "not delivered" in summary
    left_out = int(summary.split("; ")[-1].split()[0])
    assert left_out >= lost - 2  # the summary event of the final log may be among them


@pytest.mark.slow
def test_the_drain_at_exit_uses_the_drain_timeout(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        from tracker_doubles import SlowTracker
        import tracklink
        run = tracklink.init(report_to="none", dir=sys.argv[1], callbacks=[SlowTracker(sys.argv[2], delay=0.2)])
        for step in range(200):
            run.log({{"loss": 1.0}}, step=step)
        print("LOGGED", flush=True)
    """))
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "rec.jsonl")],
                            capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "TRACKLINK_DRAIN_TIMEOUT": "1"})
    took = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert "fell behind" in result.stderr and "not delivered" in result.stderr
    records = read_records(tmp_path / "rec.jsonl")
    assert records[-1]["kind"] == "finish" and len([r for r in records if r["kind"] == "metrics"]) < 200
    assert took < 60, "the exit waited the drain timeout, not a fixed minute"


def test_runs_started_in_the_same_second_never_share_a_directory(tmp_path: Path) -> None:
    from tracklink.atomic import claim_directory

    paths = [claim_directory(tmp_path / "runs" / "Dec04_10-00-00_host") for _ in range(3)]
    assert len(set(paths)) == 3 and all(Path(p).is_dir() for p in paths)
    assert [Path(p).name for p in paths] == ["Dec04_10-00-00_host", "Dec04_10-00-00_host-1", "Dec04_10-00-00_host-2"]


def test_plain_runs_without_a_name_never_share_a_directory(workdir: Path) -> None:
    import tracklink

    dirs = set()
    for _ in range(5):
        run = tracklink.init(report_to="none")
        dirs.add(run.dir)
        run.finish()
    assert len(dirs) == 5


@pytest.mark.sdk("tensorboard")
def test_tensorboard_runs_started_together_get_their_own_directory(tmp_path: Path) -> None:
    from tracklink.integrations.tensorboard import TensorBoardCallback

    dirs = []
    for _ in range(4):
        tracker = TensorBoardCallback()
        trainer = make_trainer(tmp_path / "out", report_to="none", callbacks=[tracker], max_steps=1,
                               eval_strategy="no", save_strategy="no")
        trainer.train()
        dirs.append(tracker.log_dir)
    assert len(set(dirs)) == 4, dirs
