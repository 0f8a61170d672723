"""Hyper-parameter search with Ray Tune on a local 2-CPU Ray instance: each trial trains in a Ray worker
process where its trackers run as that process's main rank; one TensorBoard and one MLflow run per trial
(read back), the best trial reported correctly, and trials stopped by the scheduler marked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from helpers import RegressionDataset, RegressionModel, assert_series

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.sdk("ray", "tensorboard", "mlflow"), pytest.mark.slow]
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # workers import the test helpers; the short temp dir keeps Ray's socket paths under the OS limit
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    temp = Path("/tmp") / f"tlray-{os.getpid()}"
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp), _node_ip_address="127.0.0.1",
             log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_search_with_tensorboard_and_mlflow(local_ray: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import tune

    from tracklink.trainer import Trainer, TrainingArguments

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # passed on to the trial workers by the search
    import mlflow

    # create the SQLite schema once, here: concurrent trial workers would race on the migration
    mlflow.MlflowClient(uri).search_experiments()
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), report_to=["tensorboard", "mlflow"], max_steps=20,
        per_device_train_batch_size=8, logging_steps=5, eval_strategy="steps", eval_steps=5, save_steps=10,
        disable_tqdm=True,
    )
    trainer = Trainer(model_init=lambda trial=None: RegressionModel(), args=args, train_dataset=RegressionDataset(),
                      eval_dataset=RegressionDataset(length=16, seed=7))
    rates = [0.2, 0.01, 0.05]
    best = trainer.hyperparameter_search(
        hp_space=lambda _: {"learning_rate": tune.grid_search(rates)}, n_trials=1, backend="ray",
        name="ray-search", hp_name=lambda config: f"lr-{config['learning_rate']}",
        resources_per_trial={"cpu": 1},
    )

    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`tracklink.search` = 'ray-search'")
    assert sorted(r.info.run_name for r in runs) == sorted(f"lr-{lr}" for lr in rates), "one MLflow run per trial"
    final = {}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert float(run.data.params["learning_rate"]) == float(run.info.run_name.split("-", 1)[1])
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval_loss")]
        assert [step for step, _ in history] == [5, 10, 15, 20]
        final[run.info.run_name] = history[-1][1]
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "out" / "runs" / "ray-search" / run.info.run_name),
                               size_guidance={"scalars": 0})
        acc.Reload()
        assert_series([(e.step, e.value) for e in acc.Scalars("eval/loss")], history)
    winner = min(final, key=final.__getitem__)
    assert best.hyperparameters == {"learning_rate": float(winner.split("-", 1)[1])}
    assert best.objective == pytest.approx(final[winner], rel=1e-6)
    assert (tmp_path / "out" / winner / "checkpoint-20").is_dir()


def test_trials_stopped_by_the_scheduler_are_marked(local_ray: Any, tmp_path: Path) -> None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from tracker_doubles import RecordingTracker, read_records
    from tracklink.trainer import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), report_to="none", max_steps=30, per_device_train_batch_size=8,
        logging_steps=5, eval_strategy="steps", eval_steps=5, save_strategy="no", disable_tqdm=True,
    )
    trainer = Trainer(model_init=lambda trial=None: RegressionModel(), args=args, train_dataset=RegressionDataset(),
                      eval_dataset=RegressionDataset(length=16, seed=7),
                      callbacks=[RecordingTracker(tmp_path / "trials.jsonl")])
    scheduler = ASHAScheduler(time_attr="step", max_t=30, grace_period=5, reduction_factor=3)
    trainer.hyperparameter_search(
        hp_space=lambda _: {"learning_rate": tune.grid_search([0.3, 0.0001, 0.0002, 0.2])}, n_trials=1,
        backend="ray", name="asha", scheduler=scheduler, resources_per_trial={"cpu": 1},
    )
    records = read_records(tmp_path / "trials.jsonl")
    statuses = [r["status"] for r in records if r["kind"] == "finish"]
    assert len(statuses) == 4 and "success" in statuses
    stopped = [r for r in records if r["kind"] == "metrics" and "train/trial_pruned" in r["metrics"]]
    assert len(stopped) == statuses.count("killed") >= 1, statuses


def test_the_trackers_declared_environment_reaches_the_workers(local_ray: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables set after Ray started reach a trial worker only if the search forwards them: the installed
    third-party test plugin's setting outside ``TRACKLINK_*`` and its declared secret do, and the tracker
    in the worker sees them; the secret's value is in none of Ray's files (results, logs) nor the outputs."""
    from ray import tune
    from tracklink_testplugin import OUT_ENV, PROJECT_ENV, SECRET_ENV

    from tracker_doubles import read_records
    from tracklink.trainer import Trainer, TrainingArguments

    secret = "sk-ray-forwarded-secret-5e0a71"
    records = tmp_path / "records.jsonl"
    monkeypatch.setenv(OUT_ENV, str(records))
    monkeypatch.setenv(PROJECT_ENV, "acme")
    monkeypatch.setenv(SECRET_ENV, secret)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), report_to="testrecorder", max_steps=4, per_device_train_batch_size=8,
        logging_steps=2, save_strategy="no", disable_tqdm=True,
    )
    trainer = Trainer(model_init=lambda trial=None: RegressionModel(), args=args, train_dataset=RegressionDataset(),
                      eval_dataset=RegressionDataset(length=16, seed=7))
    trainer.hyperparameter_search(
        hp_space=lambda _: {"learning_rate": tune.grid_search([0.1])}, n_trials=1, backend="ray", name="env",
        resources_per_trial={"cpu": 1},
    )
    setups = [r for r in read_records(records) if r["call"] == "setup"]  # training, then the final evaluation
    assert setups and all(r["project"] == "acme" and r["api_key_set"] is True for r in setups), setups
    ray_dir = Path("/tmp") / f"tlray-{os.getpid()}"
    leaked = [str(p) for root in (tmp_path, ray_dir) for p in root.rglob("*")
              if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()]
    assert leaked == []
