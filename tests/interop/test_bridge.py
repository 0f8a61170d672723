"""transformers' Trainer with tracklink's trackers through ``TracklinkBridge``: a small model trained by
transformers, read back from TensorBoard's and MLflow's own readers, with a tracker that raises (training
must complete), failure status, and resume re-attachment through transformers' checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import RegressionDataset, RegressionModel, assert_series
from tracker_doubles import FailingTracker, RecordingTracker, read_records

transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.interop, pytest.mark.sdk("tensorboard", "mlflow")]


def _hf_trainer(out: Path, bridge: Any, max_steps: int = 20, extra_callbacks: list[Any] | None = None) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(out), report_to="none", max_steps=max_steps, per_device_train_batch_size=8,
        logging_steps=5, eval_strategy="steps", eval_steps=10, save_steps=10, learning_rate=0.1,
        use_cpu=True, disable_tqdm=True,
    )
    return transformers.Trainer(
        model=RegressionModel(), args=args, train_dataset=RegressionDataset(),
        eval_dataset=RegressionDataset(length=16, seed=7), callbacks=[bridge, *(extra_callbacks or [])],
    )


def test_transformers_trainer_reports_through_tracklink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracklink.integrations.transformers import TracklinkBridge

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    failing = FailingTracker()
    bridge = TracklinkBridge(report_to=["tensorboard", "mlflow"], callbacks=[failing])
    assert list(bridge.trackers) == ["tensorboard", "mlflow", "failing"]
    trainer = _hf_trainer(tmp_path / "out", bridge)
    trainer.train()  # completes although a tracker raises on every call
    assert trainer.state.global_step == 20
    assert "failing" in bridge.hub.tracker_failures()
    history = trainer.state.log_history
    expected = [(h["step"], h["loss"]) for h in history if "loss" in h]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert_series([(e.step, e.value) for e in acc.Scalars("train/loss")], expected)

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(client.search_experiments()[0].experiment_id)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert_series([(m.step, m.value) for m in client.get_metric_history(run_id, "loss")], expected)
    assert runs[0].data.params["learning_rate"] == "0.1"


def test_bridge_resume_reattaches_and_failures_close_runs(tmp_path: Path) -> None:
    from tracklink.integrations.transformers import TracklinkBridge

    out = tmp_path / "out"
    first = RecordingTracker(tmp_path / "first.jsonl")

    class StopAt15(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 15:
                control.should_training_stop = True

    _hf_trainer(out, TracklinkBridge(report_to="none", callbacks=[first]), extra_callbacks=[StopAt15()]).train()
    run_id = read_records(first.path)[0]["run_id"]
    state = json.loads((out / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["TracklinkBridge"]["attributes"]["tracker_states"]["RecordingTracker"][
        "attributes"]["run"] == {"run_id": run_id}

    second = RecordingTracker(tmp_path / "second.jsonl")
    bridge = TracklinkBridge(report_to="none", callbacks=[second])
    _hf_trainer(out, bridge).train(resume_from_checkpoint=str(out / "checkpoint-10"))
    records = read_records(second.path)
    assert records[0]["run_id"] == run_id and records[0]["start_step"] == 10

    third = RecordingTracker(tmp_path / "third.jsonl")
    bridge = TracklinkBridge(report_to="none", callbacks=[third])

    class Boom(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("transformers training failed")

    trainer = _hf_trainer(tmp_path / "out3", bridge, extra_callbacks=[Boom()])
    with pytest.raises(RuntimeError), bridge.failures():
        trainer.train()
    assert read_records(third.path)[-1]["status"] == "failed"
