"""A tracker's batch path writes exactly what its single-point path writes: the same keys, steps and values,
in order, read back from what the real SDK wrote (MLflow's sqlite store, TensorBoard's event files,
DVCLive's plot files). Trackers without a batch path of their own get ``log_metrics`` per point, so for them
the two paths are the same code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tracklink

POINTS = [({"loss": 1.0 / step, "epoch": step / 10, **({"eval_loss": 0.5} if step % 3 == 0 else {})}, step, step / 10)
          for step in range(1, 13)]
# the same key twice at one step (transformers' train and eval logs both carry epoch)
POINTS.append(({"epoch": 1.2}, 12, 1.2))


def _write(name: str, workdir: Path, sub: str, batched: bool) -> Any:
    run = tracklink.init(report_to=[name], dir=workdir / sub, name=sub)
    run.wait()
    tracker = run.trackers[name]
    if batched:
        tracker.log_metrics_batch([(dict(m), s, e) for m, s, e in POINTS])
    else:
        for metrics, step, epoch in POINTS:
            tracker.log_metrics(dict(metrics), step, epoch)
    identity = tracker.identity
    run.finish()
    return identity


@pytest.mark.sdk("mlflow")
def test_mlflow(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")

    def read(identity: Any) -> dict[str, list[tuple[int, float]]]:
        return {key: sorted((m.step, m.value) for m in client.get_metric_history(identity["run_id"], key))
                for key in ("loss", "epoch", "eval_loss")}

    one, many = read(_write("mlflow", workdir, "single", False)), read(_write("mlflow", workdir, "batch", True))
    assert one == many
    assert len(many["loss"]) == 12 and (12, 1.2) in many["epoch"] and len(many["eval_loss"]) == 4


@pytest.mark.sdk("tensorboard")
def test_tensorboard(workdir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def read(identity: Any) -> dict[str, list[tuple[int, float]]]:
        events = EventAccumulator(identity["log_dir"], size_guidance={"scalars": 0})
        events.Reload()
        return {tag: [(e.step, round(e.value, 6)) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    one, many = read(_write("tensorboard", workdir, "single", False)), read(_write("tensorboard", workdir, "batch", True))
    assert one == many and len(many["loss"]) == 12


@pytest.mark.sdk("dvclive")
def test_dvclive(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from readers.dvclive import series

    def read(identity: Any) -> dict[str, list[tuple[int, float]]]:
        return {name: series(Path(identity["dir"]), name) for name in ("loss", "epoch", "eval_loss")}

    monkeypatch.chdir(workdir)
    one = read(_write("dvclive", workdir, "single", False))
    (workdir / "dvclive").rename(workdir / "dvclive-single")
    many = read(_write("dvclive", workdir, "batch", True))
    assert one == many and len(many["loss"]) == 12
