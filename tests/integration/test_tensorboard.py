"""TensorBoard: train through tracklink's Trainer, read the event files back with TensorBoard's own
reader (EventAccumulator) and through TensorBoard's HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import SECRET_ENV, SECRET_ENV_VAR, SECRETS, assert_series, files_containing, make_trainer

pytestmark = pytest.mark.sdk("tensorboard")


def _accumulator(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in acc.Scalars(tag)]


def _only_run_dir(root: Path) -> Path:
    dirs = [p.parent for p in root.rglob("events.out.tfevents.*")]
    assert dirs, f"no event file under {root}"
    assert len(set(dirs)) == 1, set(dirs)
    return dirs[0]


def test_scalars_text_and_hparams_read_back(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", ["tensorboard"], logging_dir=str(tmp_path / "tb"))
    trainer.train()
    acc = _accumulator(tmp_path / "tb")
    history = trainer.state.log_history
    train_logs = [h for h in history if "loss" in h]
    assert_series(_scalars(acc, "train/loss"), [(h["step"], h["loss"]) for h in train_logs])
    assert [s for s, _ in _scalars(acc, "train/learning_rate")] == [5, 10, 15, 20]
    eval_logs = [h for h in history if "eval_loss" in h]
    assert_series(_scalars(acc, "eval/loss"), [(h["step"], h["eval_loss"]) for h in eval_logs])
    assert [s for s, _ in _scalars(acc, "train/train_loss")] == [20]
    assert "train/epoch" in acc.Tags()["scalars"]

    args_text = acc.Tensors("args/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(args_text)["learning_rate"] == 0.1
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = acc.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["learning_rate"].number_value == pytest.approx(0.1)
    assert start.hparams["max_steps"].number_value == 20


class _Proxy:
    """A writer of another make: forwards everything to torch's writer, so the tracker must use its add_scalar."""

    def __init__(self, inner) -> None:
        self.inner, self.add_scalar_calls = inner, 0

    def add_scalar(self, *args, **kwargs):
        self.add_scalar_calls += 1
        return self.inner.add_scalar(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _records(log_dir: Path) -> list:
    """The raw events of the run's event files, as written (no migration by the reader)."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    return [event for path in sorted(log_dir.glob("events.out.tfevents.*"))
            for event in LegacyEventFileLoader(str(path)).Load()]


@pytest.mark.parametrize("make", ["torch subclass", "tensorboardX", "proxy"])
def test_supplied_writer_and_one_record_per_step(tmp_path: Path, make: str) -> None:
    """A writer passed as ``TensorBoardCallback(tb_writer)`` gets every scalar; torch's and tensorboardX's
    writers get one record per step holding all of the step's scalars, a writer of another make goes through
    its own ``add_scalar``, and TensorBoard's reader sees the same series either way."""
    from tracklink.integrations import TensorBoardCallback

    log_dir = tmp_path / "tb"
    if make == "tensorboardX":
        from tensorboardX import SummaryWriter as XWriter

        writer = XWriter(logdir=str(log_dir))
    else:
        from torch.utils.tensorboard import SummaryWriter

        class MyWriter(SummaryWriter):
            pass

        writer = MyWriter(log_dir=str(log_dir))
        writer = _Proxy(writer) if make == "proxy" else writer
    trainer = make_trainer(tmp_path / "out", "none", callbacks=[TensorBoardCallback(tb_writer=writer)])
    trainer.train()
    writer.flush()
    acc = _accumulator(log_dir)
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert_series(_scalars(acc, "train/loss"), [(h["step"], h["loss"]) for h in train_logs])
    assert [s for s, _ in _scalars(acc, "train/learning_rate")] == [5, 10, 15, 20]
    assert [s for s, _ in _scalars(acc, "eval/loss")] == [10, 20]

    with_loss = [e for e in _records(log_dir) if any(v.tag == "train/loss" for v in e.summary.value)]
    assert [e.step for e in with_loss] == [5, 10, 15, 20]
    tags = [{v.tag for v in e.summary.value} for e in with_loss]
    if make == "proxy":
        assert writer.add_scalar_calls > 0 and all(t == {"train/loss"} for t in tags)
    else:
        assert all({"train/loss", "train/learning_rate", "train/grad_norm", "train/epoch"} <= t for t in tags), tags


def test_default_directory_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = make_trainer(tmp_path / "out", "tensorboard", max_steps=5, eval_strategy="no", save_strategy="no")
    trainer.train()
    run_dir = _only_run_dir(tmp_path / "out" / "runs")
    assert run_dir.parent == tmp_path / "out" / "runs"
    assert socket.gethostname() in run_dir.name

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "from-env"))
    make_trainer(tmp_path / "out2", "tensorboard", max_steps=5, eval_strategy="no", save_strategy="no").train()
    assert _scalars(_accumulator(tmp_path / "from-env"), "train/loss")


def test_string_logs_become_text(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", "tensorboard", logging_dir=str(tmp_path / "tb"), max_steps=5,
                           eval_strategy="no", save_strategy="no")
    trainer.train()
    trainer.log({"note": "hello tensorboard", "value": 3.5})
    trainer.callback_handler.wait_for_trackers()
    acc = _accumulator(tmp_path / "tb")
    assert acc.Tensors("train/note/text_summary")[0].tensor_proto.string_val[0] == b"hello tensorboard"
    assert _scalars(acc, "train/value") == [(5, 3.5)]


def test_resume_purges_events_after_restored_step(tmp_path: Path) -> None:
    out = tmp_path / "out"

    class StopAt15:
        from tracklink import hookimpl

        @hookimpl
        def on_step_end(self, state, control):
            if state.global_step == 15:
                control.should_training_stop = True

    first = make_trainer(out, "tensorboard", callbacks=[StopAt15()])
    first.train()  # logs train/loss at 5, 10, 15 and checkpoints 10 and 15... then stops
    run_dir = _only_run_dir(out / "runs")
    assert [s for s, _ in _scalars(_accumulator(run_dir), "train/loss")] == [5, 10, 15]

    resumed = make_trainer(out, "tensorboard")
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    assert _only_run_dir(out / "runs") == run_dir, "resume must write into the same run directory"
    steps = [s for s, _ in _scalars(_accumulator(run_dir), "train/loss")]
    assert steps == [5, 10, 15, 20], steps  # the old step-15 point was purged, not duplicated


def test_no_secret_in_event_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    trainer = make_trainer(tmp_path / "out", "tensorboard", logging_dir=str(tmp_path / "tb"), secrets=True)
    trainer.train()
    assert files_containing(tmp_path / "tb", SECRETS) == []
    text = _accumulator(tmp_path / "tb").Tensors("args/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text)["learning_rate"] == 0.1
    assert json.loads(text)["hub_token"] == "<redacted>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_tensorboard_server_serves_the_scalars(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", "tensorboard", logging_dir=str(tmp_path / "tb" / "run1"))
    trainer.train()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path / "tb"), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=run1&tag=train%2Floss"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    points = json.loads(response.read())
                if points:
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read().decode()
            assert time.monotonic() < deadline, "TensorBoard server did not serve the scalars"
            time.sleep(0.5)
        expected = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
        assert_series([(p[1], p[2]) for p in points], expected)
    finally:
        server.terminate()
        server.wait(10)
