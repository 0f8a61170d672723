"""A real third-party plugin distribution (``tests/plugins/tracklink-testplugin``) is discovered through its
entry points and behaves exactly like a built-in tracker.

The distribution must be installed (``pip install -e tests/plugins/tracklink-testplugin --no-deps``; CI does
this); otherwise these tests are skipped with that instruction.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import tracklink
from tracklink import CallbackHandler, DefaultFlowCallback, TrainerControl, TrainerState, resolve_report_to
from tracklink.registry import discover

DIST = "tracklink-testplugin"
OUT_ENV = "TRACKLINK_TESTPLUGIN_OUT"
SECRET_ENV = "TRACKLINK_TESTPLUGIN_API_KEY"
SECRET = "tp-secret-5f1c2a9e77"


def _installed() -> bool:
    try:
        importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _installed(),
    reason=f"the test plugin distribution {DIST!r} is not installed; run "
    "`pip install -e tests/plugins/tracklink-testplugin --no-deps`",
)


def run_cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracklink.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_discovered_as_third_party() -> None:
    found = discover()
    for name in ("testrecorder", "testhooks"):
        spec = found[name]
        assert spec.source == "third-party"
        assert spec.distribution == DIST and spec.distribution_version == "0.1.0"
        assert spec.availability() is None
    assert found["testrecorder"].value == "tracklink_testplugin.recorder:TestRecorderTracker"
    assert found["testhooks"].is_module
    # third-party trackers come after every built-in one, by name
    names = list(found)
    builtin = [n for n in names if found[n].source == "builtin"]
    assert names[: len(builtin)] == builtin
    assert names.index("testhooks") < names.index("testrecorder")


def test_listed_by_cli() -> None:
    result = run_cli("plugins", "--json", "--report-to", "testrecorder")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["trackers"]}
    assert rows["testrecorder"]["source"] == "third-party"
    assert rows["testrecorder"]["selected"] is True
    assert rows["testhooks"]["selected"] is False and rows["testhooks"]["reason"] == "not named in report_to"
    assert rows["testrecorder"]["distribution"] == DIST


def test_included_by_all_when_ready(tmp_path: Path) -> None:
    ready = resolve_report_to("all", env={OUT_ENV: str(tmp_path / "out.jsonl")})
    assert "testrecorder" in ready.names and "testhooks" in ready.names
    not_ready = resolve_report_to("all", env={})
    assert "testrecorder" not in not_ready.names
    assert not_ready.skipped["testrecorder"] == f"{OUT_ENV} is not set"
    assert "testhooks" in not_ready.names  # a plain hookimpl module is always ready
    disabled = resolve_report_to("all", env={OUT_ENV: "x", "TRACKLINK_DISABLE": "testrecorder"})
    assert "testrecorder" not in disabled.names


def test_selectable_by_name() -> None:
    assert resolve_report_to("TestRecorder", env={}).names == ["testrecorder"]
    assert resolve_report_to(["testhooks", "testrecorder"], env={}).names == ["testhooks", "testrecorder"]
    with pytest.raises(ValueError, match="testrecorder"):
        resolve_report_to("testrecordr", env={})


def test_receives_events_through_the_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "events.jsonl"
    monkeypatch.setenv(OUT_ENV, str(out))
    monkeypatch.setenv(SECRET_ENV, SECRET)
    resolution = resolve_report_to("testrecorder,testhooks")
    handler = CallbackHandler([DefaultFlowCallback])
    for spec in resolution.selected_specs():
        assert handler.add_tracker(spec.create(), spec.name)
    assert list(handler.trackers) == ["testrecorder", "testhooks"]

    args = types.SimpleNamespace(
        logging_first_step=False, logging_strategy="steps", eval_strategy="no", eval_delay=0,
        save_strategy="no", learning_rate=0.1, run_name="demo", hub_token="hf_abcdefghijklmnop",
        note=f"the key is {SECRET}",
    )
    state, control = TrainerState(max_steps=3, logging_steps=3), TrainerControl()
    control = handler.on_train_begin(args, state, control)
    for step in (1, 2, 3):
        control = handler.on_step_begin(args, state, control)
        state.global_step = step
        state.epoch = step / 3
        control = handler.on_step_end(args, state, control)
    control = handler.on_log(args, state, control, logs={"loss": 0.25, "learning_rate": 0.1, "epoch": 1.0})
    control = handler.on_evaluate(args, state, control, metrics={"eval_loss": 0.5})
    control = handler.on_log(args, state, control, logs={"train_runtime": 1.5, "train_loss": 0.3})
    handler.on_train_end(args, state, control)

    records = read_jsonl(out)
    tracker = [r for r in records if r["source"] == "tracker"]
    hooks = [r for r in records if r["source"] == "hooks"]
    # the tracker implements only the contract: it sees the calls, never the training events
    assert [r["call"] for r in tracker] == ["setup", "log_metrics", "log_summary", "finish"]
    assert tracker[0]["thread"] == "tracklink-testrecorder"  # delivered on the tracker's worker thread
    assert tracker[1]["metrics"] == {"train/loss": 0.25, "train/learning_rate": 0.1, "train/epoch": 1.0}
    assert tracker[1]["step"] == 3
    assert tracker[2]["metrics"] == {"train/train_runtime": 1.5, "train/train_loss": 0.3}
    assert tracker[-1]["status"] == "success" and tracker[-1]["exit_code"] == 0 and tracker[-1]["step"] == 3
    params = tracker[0]["params"]
    assert params["learning_rate"] == 0.1 and params["hub_token"] == "<redacted>"
    assert [r["call"] for r in hooks] == ["on_train_begin", "on_step_end", "on_step_end", "on_step_end", "on_log",
                                          "on_log", "on_train_end"]
    assert hooks[0]["thread"] == "tracklink-testhooks"
    assert hooks[4]["logs"] == {"loss": 0.25, "learning_rate": 0.1, "epoch": 1.0}
    text = out.read_text()
    assert SECRET not in text and "hf_abcdefghijklmnop" not in text
    assert handler.tracker_failures() == {}


class LegacyTracker(tracklink.Tracker):
    """A tracker written against the earlier contract: it overrides training events and takes ``finish``'s
    argument as a bare status. It keeps working: the events still reach it, and the status it gets is a
    plain string for it (``RunEnd`` is a ``str``)."""

    name = "legacy"

    def __init__(self, out: Path) -> None:
        self.out = out

    def _record(self, **fields: Any) -> None:
        with self.out.open("a") as f:
            f.write(json.dumps(fields) + "\n")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record(call="on_step_end", step=state.global_step)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        self._record(call="on_evaluate", metrics=metrics)

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self._record(call="log_metrics", step=step)

    def finish(self, status: str) -> None:
        self._record(call="finish", status=status, is_str=isinstance(status, str), equal=status == "failed")


def test_a_tracker_written_for_the_earlier_contract_keeps_working(tmp_path: Path) -> None:
    from helpers import make_trainer, raise_at

    out = tmp_path / "legacy.jsonl"
    trainer = make_trainer(tmp_path / "run", callbacks=[LegacyTracker(out), raise_at(7, RuntimeError("boom"))], eval_strategy="steps",
                           eval_steps=5, logging_steps=5)
    with pytest.raises(RuntimeError):
        trainer.train()
    records = read_jsonl(out)
    assert [r["call"] for r in records] == ["on_step_end"] * 5 + ["log_metrics", "log_metrics", "on_evaluate"] + [
        "on_step_end"] * 2 + ["finish"]
    assert records[-1] == {"call": "finish", "status": "failed", "is_str": True, "equal": True}
