"""Hyper-parameter search with Optuna: one tracker run per trial (TensorBoard and MLflow read back),
the best trial reported correctly, pruned trials marked, and a study in SQLite resumed after the
process was stopped.

Bad inputs tried (tests/search/test_search_errors.py): unknown backend, backend not installed, bad
direction, n_trials 0, no model_init, no eval dataset, a space that is not a dict, an invalid value for
an argument, searching output_dir, unknown backend options.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from helpers import RegressionDataset, RegressionModel, assert_series

optuna = pytest.importorskip("optuna")
pytestmark = [pytest.mark.sdk("optuna", "tensorboard", "mlflow"), pytest.mark.slow]
TESTS = Path(__file__).resolve().parents[1]


class ScriptedPruner(optuna.pruners.BasePruner):
    """Prunes exactly the trials whose learning rate is below 0.01 (deterministic, unlike the
    statistical pruners)."""

    def prune(self, study: Any, trial: Any) -> bool:
        return trial.params["learning_rate"] < 0.01


LEARNING_RATES = [0.2, 0.001, 0.05, 0.002]


def _space(trial: Any) -> dict[str, Any]:
    return {"learning_rate": trial.suggest_categorical("learning_rate", LEARNING_RATES)}


def _trainer(out: Path, report_to: Any) -> Any:
    from tracklink.trainer import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out), report_to=report_to, max_steps=20, per_device_train_batch_size=8,
        logging_steps=5, eval_strategy="steps", eval_steps=5, save_steps=10, disable_tqdm=True,
    )
    return Trainer(model_init=lambda trial=None: RegressionModel(), args=args, train_dataset=RegressionDataset(),
                   eval_dataset=RegressionDataset(length=16, seed=7))


@pytest.mark.parametrize("offline", [False, True], ids=["live", "offline-then-synced"])
def test_search_with_tensorboard_and_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: bool) -> None:
    """Live, and recorded with TRACKLINK_OFFLINE=1 then sent with ``tracklink sync`` of the search's output
    directory (one journal per trial): the same grouping (MLflow's parent run, trial names, TensorBoard's
    per-trial directories) and the same series."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    if offline:
        monkeypatch.setenv("TRACKLINK_OFFLINE", "1")
    trainer = _trainer(tmp_path / "out", ["tensorboard", "mlflow"])
    sampler = optuna.samplers.GridSampler({"learning_rate": LEARNING_RATES})
    best = trainer.hyperparameter_search(
        hp_space=_space, n_trials=4, backend="optuna", sampler=sampler, pruner=ScriptedPruner(),
        study_name="lr-search",
    )
    assert trainer.args.learning_rate == 5e-5, "the trainer's own arguments are restored after the search"
    if offline:
        monkeypatch.delenv("TRACKLINK_OFFLINE")
        assert not (tmp_path / "out" / "runs").exists(), "offline: nothing was sent"
        from tracklink import cli

        assert cli.main(["sync", "--quiet", str(tmp_path / "out")]) == 0

    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`tracklink.search` = 'lr-search'")
    by_trial = {r.data.tags["tracklink.trial"]: r for r in runs}
    assert sorted(by_trial) == ["run-0", "run-1", "run-2", "run-3"], "one MLflow run per trial"
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1, "the trials are children of one run standing for the search"
    assert client.get_run(parents.pop()).info.run_name == "lr-search"
    completed: dict[str, float] = {}
    for name, run in by_trial.items():
        lr = float(run.data.params["learning_rate"])
        assert run.info.run_name == name
        assert lr in LEARNING_RATES
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval_loss")]
        if lr < 0.01:
            assert run.info.status == "KILLED", f"pruned trial {name} must be marked"
            assert client.get_metric_history(run.info.run_id, "trial_pruned")[0].value == 1.0
            assert [step for step, _ in history] == [5]
        else:
            assert run.info.status == "FINISHED"
            assert [step for step, _ in history] == [5, 10, 15, 20]
            completed[name] = history[-1][1]
        # the same metrics in TensorBoard, in the trial's own directory of the search
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "out" / "runs" / "lr-search" / name), size_guidance={"scalars": 0})
        acc.Reload()
        assert_series([(e.step, e.value) for e in acc.Scalars("eval/loss")], history)

    winner = min(completed, key=completed.__getitem__)
    assert best.run_id == winner.split("-")[1]
    assert best.objective == pytest.approx(completed[winner], rel=1e-6)
    assert best.hyperparameters == {"learning_rate": float(by_trial[winner].data.params["learning_rate"])}
    # checkpoints per trial; pruned trials stopped before their first save
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("run-")) == sorted(completed)


def test_trial_state_and_params_reach_trackers(tmp_path: Path) -> None:
    from tracker_doubles import RecordingTracker, read_records
    from tracklink.trainer import Trainer, TrainingArguments

    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", max_steps=10,
                             per_device_train_batch_size=8, logging_steps=5, eval_strategy="steps", eval_steps=5,
                             save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model_init=lambda trial=None: RegressionModel(), args=args, train_dataset=RegressionDataset(),
                      eval_dataset=RegressionDataset(length=16, seed=7), callbacks=[recorder])
    trainer.hyperparameter_search(hp_space=lambda t: {"learning_rate": t.suggest_float("learning_rate", 0.01, 0.1)},
                                  n_trials=2, backend="optuna", study_name="s", hp_name=lambda t: f"trial-{t.number}")
    setups = [r for r in read_records(recorder.path) if r["kind"] == "setup"]
    assert [s["name"] for s in setups] == ["trial-0", "trial-1"]
    assert len({s["run_id"] for s in setups}) == 2, "nothing from one trial leaks into another's run"
    for setup in setups:
        assert setup["params"]["learning_rate"] == setup["params"]["trial_params.learning_rate"]
    finishes = [r["status"] for r in read_records(recorder.path) if r["kind"] == "finish"]
    assert finishes == ["success", "success"]


def test_sqlite_study_resumes_after_the_process_is_stopped(tmp_path: Path) -> None:
    script = tmp_path / "search.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        import tracklink
        from helpers import RegressionDataset, RegressionModel
        from tracklink.trainer import Trainer, TrainingArguments

        class Pace(tracklink.TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                print("TRIAL START", flush=True)
            def on_step_end(self, args, state, control, **kwargs):
                time.sleep(0.1)

        args = TrainingArguments(output_dir=sys.argv[1], report_to="none", max_steps=10, per_device_train_batch_size=8,
                                 logging_steps=5, eval_strategy="steps", eval_steps=5, save_strategy="no",
                                 disable_tqdm=True)
        trainer = Trainer(model_init=lambda trial=None: RegressionModel(), args=args, train_dataset=RegressionDataset(),
                          eval_dataset=RegressionDataset(length=16, seed=7), callbacks=[Pace()])
        best = trainer.hyperparameter_search(
            hp_space=lambda t: {{"learning_rate": t.suggest_float("learning_rate", 0.01, 0.3)}}, n_trials=4,
            backend="optuna", storage="sqlite:///" + sys.argv[2], study_name="persistent")
        print("BEST", best.run_id, best.objective, flush=True)
    """))
    db = tmp_path / "study.db"
    cmd = [sys.executable, str(script), str(tmp_path / "out"), str(db)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = 0
    assert first.stdout is not None
    for line in first.stdout:
        if line.startswith("TRIAL START"):
            started += 1
            if started == 3:  # two trials finished, the third is training: stop the process now
                break
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err[-2000:]

    study = optuna.load_study(study_name="persistent", storage=f"sqlite:///{db}")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL"], "the interrupted trial is failed, not left RUNNING"

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    study = optuna.load_study(study_name="persistent", storage=f"sqlite:///{db}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and len(study.trials) == 5, [t.state.name for t in study.trials]
    best_line = next(line for line in second.stdout.splitlines() if line.startswith("BEST"))
    _, run_id, objective = best_line.split()
    assert int(run_id) == study.best_trial.number and float(objective) == pytest.approx(study.best_value)
