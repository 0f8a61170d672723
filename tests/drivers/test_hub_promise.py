"""The hub promise: one stream of parameters and metrics, fed through every loop tracklink drives, reaches
the same keys, steps and values in real backends (an MLflow sqlite store and TensorBoard event files).

Each driver logs the stream through its own, natural logging call (``trainer.log`` from a callback for the
two trainers, ``run.log`` for a plain loop, ``fabric.log_dict`` with tracklink's Lightning logger,
``accelerator.log`` with tracklink's Accelerate tracker) into its own working directory; every backend is then read back with its own reader. Loops
add keys of their own (the trainers log ``epoch``), so the comparison is over the stream's keys.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tracklink
from helpers import RegressionDataset, RegressionModel

pytestmark = pytest.mark.sdk("mlflow", "tensorboard")

LEARNING_RATE = 0.1
#: step -> the values logged at that step
STREAM: dict[int, dict[str, float]] = {
    step: {"loss": round(1.0 / step, 6), **({"eval_loss": round(0.5 / step, 6)} if step % 2 == 0 else {})}
    for step in range(1, 7)
}
KEYS = ("loss", "eval_loss")
TB_KEYS = {"loss": "train/loss", "eval_loss": "eval/loss"}


def _expected() -> dict[str, list[tuple[int, float]]]:
    return {key: [(step, values[key]) for step, values in STREAM.items() if key in values] for key in KEYS}


def _read_mlflow(workdir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, str], str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    series = {key: sorted((m.step, round(m.value, 6)) for m in client.get_metric_history(run.info.run_id, key))
              for key in KEYS}
    return series, run.data.params, run.info.status


def _read_tensorboard(workdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(str(workdir / "**" / "events.out.tfevents.*"), recursive=True)
    series: dict[str, list[tuple[int, float]]] = {key: [] for key in KEYS}
    for path in files:
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        for key, tag in TB_KEYS.items():
            if tag in events.Tags()["scalars"]:
                series[key] += [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]
    return {key: sorted(points) for key, points in series.items()}


class LogStream:
    """A callback for the two trainers: at each step of the stream, ``trainer.log(values)``."""

    def __init__(self) -> None:
        self.trainer: Any = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step in STREAM:
            self.trainer.log(dict(STREAM[state.global_step]))


def drive_tracklink_trainer(workdir: Path) -> None:
    from tracklink.trainer import Trainer, TrainingArguments

    stream = type("TracklinkLogStream", (LogStream, tracklink.TrainerCallback), {})()
    args = TrainingArguments(output_dir=str(workdir / "out"), report_to=["tensorboard", "mlflow"],
                             max_steps=max(STREAM), learning_rate=LEARNING_RATE, logging_steps=1000,
                             save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=RegressionModel(), args=args, train_dataset=RegressionDataset(), callbacks=[stream])
    stream.trainer = trainer
    trainer.train()


def drive_transformers_bridge(workdir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from tracklink.integrations.transformers import TracklinkBridge

    stream = type("HFLogStream", (LogStream, transformers.TrainerCallback), {})()
    args = transformers.TrainingArguments(output_dir=str(workdir / "out"), report_to="none", max_steps=max(STREAM),
                                          learning_rate=LEARNING_RATE, logging_steps=1000, save_strategy="no",
                                          use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=RegressionModel(), args=args, train_dataset=RegressionDataset(),
                                   callbacks=[TracklinkBridge(report_to=["tensorboard", "mlflow"]), stream])
    stream.trainer = trainer
    trainer.train()


def drive_plain_loop(workdir: Path) -> None:
    with tracklink.init(config={"learning_rate": LEARNING_RATE}, report_to=["tensorboard", "mlflow"],
                        dir=workdir / "run") as run:
        for step, values in STREAM.items():
            run.log(values, step=step)


def drive_lightning_fabric(workdir: Path) -> None:
    lightning = pytest.importorskip("lightning")
    from tracklink.integrations.lightning import TracklinkLogger

    logger = TracklinkLogger(["tensorboard", "mlflow"], dir=workdir / "run")
    fabric = lightning.Fabric(accelerator="cpu", devices=1, loggers=[logger])
    fabric.logger.log_hyperparams({"learning_rate": LEARNING_RATE})
    for step, values in STREAM.items():
        fabric.log_dict(values, step=step)
    logger.finalize("success")


def drive_accelerate(workdir: Path) -> None:
    pytest.importorskip("accelerate")
    from accelerate.accelerator import Accelerator

    from tracklink.integrations.accelerate import TracklinkTracker

    accelerator = Accelerator(cpu=True, log_with=[TracklinkTracker(report_to=["tensorboard", "mlflow"],
                                                                   dir=workdir / "run")])
    accelerator.init_trackers("hub", config={"learning_rate": LEARNING_RATE})
    for step, values in STREAM.items():
        accelerator.log(values, step=step)
    accelerator.end_training()


DRIVERS: dict[str, Callable[[Path], None]] = {
    "tracklink-trainer": drive_tracklink_trainer,
    "transformers-bridge": drive_transformers_bridge,
    "plain-loop": drive_plain_loop,
    "lightning-fabric": drive_lightning_fabric,
    "accelerate": drive_accelerate,
}


@pytest.mark.parametrize("mode", ["live", "offline", "process"], ids=["live", "offline-then-synced", "processes"])
@pytest.mark.parametrize("driver", list(DRIVERS))
def test_every_loop_reaches_the_same_keys_steps_and_values(driver: str, mode: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Live, recorded with ``TRACKLINK_OFFLINE=1`` then sent with ``tracklink sync``, and delivered by trackers in
    processes of their own (``TRACKLINK_DELIVERY=process``) that follow the journal (the journal belongs to the
    run, so every loop gets it): the same read-back."""
    workdir = tmp_path / driver
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    offline = mode == "offline"
    if offline:
        monkeypatch.setenv("TRACKLINK_OFFLINE", "1")
    if mode == "process":
        monkeypatch.setenv("TRACKLINK_DELIVERY", "process")
    DRIVERS[driver](workdir)
    if mode == "process":
        from tracklink.followers import _followers

        assert [f.tracker for f in _followers] == [], "the end of the session waited for its followers"
    if offline:
        monkeypatch.delenv("TRACKLINK_OFFLINE")
        assert not glob.glob(str(workdir / "**" / "events.out.tfevents.*"), recursive=True), "nothing was sent"
        from tracklink import cli

        assert cli.main(["sync", "--quiet", str(workdir)]) == 0
    series, params, status = _read_mlflow(workdir)
    assert status == "FINISHED"
    assert series == _expected(), driver
    assert float(params["learning_rate"]) == LEARNING_RATE
    assert _read_tensorboard(workdir) == _expected(), driver
