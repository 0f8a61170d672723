"""The Accelerate tracker (``tracklink.integrations.accelerate.TracklinkTracker``) with real Accelerate on CPU:
what reaches MLflow (sqlite store) and TensorBoard event files, how ``init_trackers``' project and config reach
the run, and the reliability behaviours the Trainer has (isolation, asynchronous delivery, failed/killed status
after an exception or SIGTERM, resume, redaction, one run under a 2-process launch).

Bad inputs catalogued here (each a clear error, or a documented behaviour; nothing already logged is lost):
``log_kwargs`` for the tracker (error: it takes none); ``accelerator.log`` after ``end_training`` (error); an
unknown ``TracklinkTracker`` keyword (error with a close-match hint); an unknown ``report_to`` name (error when
the tracker is built, before ``init_trackers``); an ``init_kwargs`` key that names no tracker and a bad
``resume`` (errors in ``init_trackers``); a value that is neither a number nor text (left out, warned once);
``log`` of something that is not a dict (error); a step that goes backwards (error, everything before it
delivered); a nested dict value (flattened to ``outer/inner``); a configuration stored after the run started
(not logged, warned once); ``init_kwargs={"tracklink": ...}`` in ``init_trackers`` for an instance (ignored,
warned); ``project=`` and ``init_trackers(project_name)`` that differ (``project=`` wins, warned).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tracklink
from helpers import SECRET_ENV, SECRET_ENV_VAR
from tracker_doubles import FailingTracker, RecordingTracker, SlowTracker, read_records
from tracklink.run import RUN_FILE

pytestmark = pytest.mark.sdk("accelerate")

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "accelerate_script.py"
SECRET = "sk-accelerate-SECRET-2b7e91"


def _metrics(records: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(r["step"], r["metrics"]) for r in records if r["kind"] == "metrics"]


@pytest.fixture(autouse=True)
def fresh_accelerator_state() -> Iterator[None]:
    """Each test builds its own ``Accelerator`` (its state is a process-wide singleton)."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _accelerator(tracker: Any, **kwargs: Any) -> Any:
    from accelerate.accelerator import Accelerator

    return Accelerator(cpu=True, log_with=[tracker], **kwargs)


def _mlflow(workdir: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


@pytest.fixture
def mlflow_store(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    return workdir


def _script_env(workdir: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}


# -- what reaches the trackers -------------------------------------------------------------------------


@pytest.mark.sdk("accelerate", "mlflow", "tensorboard")
def test_accelerate_reads_back_from_mlflow_and_tensorboard(mlflow_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tracklink.integrations.accelerate import TracklinkTracker

    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    tracker = TracklinkTracker(report_to=["tensorboard", "mlflow"], run_name="acc-run", dir=mlflow_store / "run",
                               init_kwargs={"mlflow": {"tags": {"team": "nlp"}}})
    accelerator = _accelerator(tracker)
    accelerator.init_trackers("spirals", config={"lr": 0.1, "batch_size": 8, "api_key": SECRET,
                                                 "note": f"token {SECRET_ENV}"})
    for step in range(1, 6):
        accelerator.log({"loss": 1.0 / step}, step=step)
    accelerator.log({"eval_loss": 0.3}, step=5)
    accelerator.end_training()

    assert accelerator.get_tracker("tracklink", unwrap=True) is tracker.run
    client = _mlflow(mlflow_store)
    experiment = client.get_experiment_by_name("spirals")
    assert experiment is not None, "init_trackers' project_name names the MLflow experiment"
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == "acc-run"
    run_id = mlflow_run.info.run_id
    assert set(mlflow_run.data.metrics) == {"loss", "eval_loss"}
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss")) == [
        (s, 1.0 / s) for s in range(1, 6)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval_loss")] == [(5, 0.3)]
    params = mlflow_run.data.params
    assert params["lr"] == "0.1" and params["batch_size"] == "8" and params["api_key"] == "<redacted>"
    assert SECRET_ENV not in params["note"] and SECRET not in json.dumps(params)
    assert mlflow_run.data.tags["team"] == "nlp"

    log_dir = tracker.run.identities["tensorboard"]["log_dir"]
    assert Path(log_dir).resolve().is_relative_to((mlflow_store / "run").resolve())
    events = EventAccumulator(log_dir)
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "eval/loss"}
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")] == [
        (s, round(1.0 / s, 6)) for s in range(1, 6)]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("eval/loss")] == [(5, 0.3)]
    saved = json.loads((mlflow_store / "run" / RUN_FILE).read_text())
    assert saved["project"] == "spirals" and saved["finished"] is True
    assert saved["trackers"]["MLflowCallback"]["attributes"]["run"]["run_id"] == run_id


def test_the_run_starts_in_init_trackers_with_its_config(tmp_path: Path) -> None:
    from tracklink.integrations.accelerate import TracklinkTracker

    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    tracker = TracklinkTracker(report_to="none", run_name="cfg", dir=tmp_path / "run", callbacks=[recorder])
    accelerator = _accelerator(tracker)
    assert tracker.run is None
    accelerator.init_trackers("proj", config={"lr": 0.1, "nested": {"depth": 2}, "api_key": SECRET})
    assert tracker.run is not None and tracker.run.args.project == "proj"
    tracker.run.wait()
    (setup,) = read_records(recorder.path)
    assert setup["kind"] == "setup" and setup["name"] == "cfg"
    assert setup["params"] == {"lr": 0.1, "nested.depth": 2, "api_key": "<redacted>"}
    accelerator.log({"loss": 1.0, "grad": {"norm": 2.0, "max": 3.0}}, step=1)  # a nested dict: flattened
    accelerator.end_training()
    records = read_records(recorder.path)
    assert _metrics(records) == [(1, {"train/loss": 1.0, "train/grad/norm": 2.0, "train/grad/max": 3.0})]
    assert records[-1]["kind"] == "finish" and records[-1]["status"] == "success"
    assert SECRET not in recorder.path.read_text()


def test_without_config_the_run_starts_in_init_trackers_too(tmp_path: Path) -> None:
    from tracklink.integrations.accelerate import TracklinkTracker

    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    tracker = TracklinkTracker(report_to="none", dir=tmp_path / "run", callbacks=[recorder])
    accelerator = _accelerator(tracker)
    accelerator.init_trackers("no-config")
    assert tracker.run is not None and tracker.run.args.project == "no-config"
    accelerator.end_training()
    records = read_records(recorder.path)
    assert [r["kind"] for r in records] == ["setup", "finish"] and records[0]["params"] == {}


def test_log_with_tracklink_by_name(tmp_path: Path) -> None:
    from accelerate.accelerator import Accelerator
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    from tracklink.integrations.accelerate import TracklinkTracker, register

    assert register() and LOGGER_TYPE_TO_CLASS["tracklink"] is TracklinkTracker
    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    accelerator = Accelerator(cpu=True, log_with="tracklink", project_dir=str(tmp_path / "project"))
    accelerator.init_trackers("named", config={"lr": 0.5}, init_kwargs={
        "tracklink": {"report_to": "none", "run_name": "by-name", "callbacks": [recorder]}})
    run = accelerator.get_tracker("tracklink", unwrap=True)
    assert isinstance(run, tracklink.Run) and run.args.project == "named"
    assert run.dir == tmp_path / "project" / "named", "the Accelerator's logging_dir/project_name"
    accelerator.log({"loss": 0.25}, step=3)
    accelerator.end_training()
    records = read_records(recorder.path)
    assert records[0]["name"] == "by-name" and records[0]["params"] == {"lr": 0.5}
    assert _metrics(records) == [(3, {"train/loss": 0.25})] and records[-1]["status"] == "success"
    assert (tmp_path / "project" / "named" / RUN_FILE).is_file()


def test_project_given_to_the_tracker_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tracklink.integrations.accelerate import TracklinkTracker

    caplog.set_level(logging.WARNING, logger="tracklink")
    tracker = TracklinkTracker("mine", report_to="none", dir=tmp_path / "run")
    accelerator = _accelerator(tracker)
    accelerator.init_trackers("theirs", init_kwargs={"tracklink": {"run_name": "x"}})
    assert tracker.run.args.project == "mine"
    accelerator.end_training()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "TracklinkTracker(project='mine') is used" in messages
    assert "is not passed to a TracklinkTracker instance" in messages


# -- reliability -------------------------------------------------------------------------------------


def test_a_raising_tracker_does_not_stop_the_loop(tmp_path: Path) -> None:
    from tracklink.integrations.accelerate import TracklinkTracker

    failing = FailingTracker()
    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    tracker = TracklinkTracker(report_to="none", dir=tmp_path / "run", callbacks=[failing, recorder])
    accelerator = _accelerator(tracker)
    accelerator.init_trackers("isolation")
    for step in range(10):
        accelerator.log({"loss": float(step)}, step=step)
    accelerator.end_training()
    assert [s for s, _ in _metrics(read_records(recorder.path))] == list(range(10))
    assert "error(s)" in tracker.run.failures()["failing"] and failing.finished == ["failed"]
    assert read_records(recorder.path)[-1]["status"] == "success"


def test_a_slow_tracker_does_not_slow_accelerator_log(tmp_path: Path) -> None:
    from tracklink.integrations.accelerate import TracklinkTracker

    slow = SlowTracker(tmp_path / "slow.jsonl", delay=0.05)
    tracker = TracklinkTracker(report_to="none", dir=tmp_path / "run", callbacks=[slow])
    accelerator = _accelerator(tracker)
    accelerator.init_trackers("slow")
    for step in range(20):
        accelerator.log({"loss": float(step)}, step=step)
    behind = len(_metrics(read_records(slow.path)))
    assert behind < 20, "accelerator.log returned before the slow tracker handled everything"
    accelerator.end_training()
    assert [s for s, _ in _metrics(read_records(slow.path))] == list(range(20)), "end_training delivers the rest"


@pytest.mark.parametrize("raised, status", [(ZeroDivisionError, "failed"), (KeyboardInterrupt, "killed")])
def test_end_training_while_an_exception_propagates(tmp_path: Path, raised: type[BaseException], status: str) -> None:
    from tracklink.integrations.accelerate import TracklinkTracker

    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    tracker = TracklinkTracker(report_to="none", dir=tmp_path / "run", callbacks=[recorder])
    accelerator = _accelerator(tracker)
    accelerator.init_trackers("failing")
    with pytest.raises(raised):
        try:
            accelerator.log({"loss": 1.0}, step=1)
            raise raised()
        finally:
            accelerator.end_training()
    records = read_records(recorder.path)
    assert _metrics(records) == [(1, {"train/loss": 1.0})]
    assert records[-1] == {**records[-1], "kind": "finish", "status": status}


@pytest.mark.slow
@pytest.mark.sdk("accelerate", "mlflow")
def test_an_uncaught_exception_leaves_the_mlflow_run_failed(workdir: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(workdir / "run"), "--mode", "raise"],
                            capture_output=True, text=True, timeout=180, env=_script_env(workdir), cwd=workdir)
    assert result.returncode == 1 and "the loop crashed (planted)" in result.stderr, result.stderr[-3000:]
    client = _mlflow(workdir)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("accelerate-script").experiment_id])
    assert mlflow_run.info.status == "FAILED"
    assert sorted((m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, "loss")) == [
        (s, 1.0 / (s + 1)) for s in range(3)]


@pytest.mark.slow
@pytest.mark.sdk("accelerate", "mlflow")
def test_sigterm_leaves_the_mlflow_run_killed_with_nothing_lost(workdir: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--dir", str(workdir / "run"), "--mode", "forever"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_script_env(workdir),
                            cwd=workdir)
    assert proc.stdout is not None
    logged = []
    for line in proc.stdout:
        if line.startswith("LOGGED"):
            logged.append(int(line.split()[1]))
        if len(logged) >= 10:
            break
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=180)
    logged += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("LOGGED")]
    assert proc.returncode == 143, err[-3000:]
    client = _mlflow(workdir)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("accelerate-script").experiment_id])
    assert mlflow_run.info.status == "KILLED"
    history = {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id, "loss")}
    assert {s: 1.0 / (s + 1) for s in logged}.items() <= history.items(), "everything logged before SIGTERM"
    saved = json.loads((workdir / "run" / RUN_FILE).read_text())
    assert saved["finished"] is True and saved["step"] >= max(logged)


@pytest.mark.sdk("accelerate", "mlflow")
def test_resume_continues_the_same_mlflow_run(mlflow_store: Path) -> None:
    from tracklink.integrations.accelerate import TracklinkTracker

    first = TracklinkTracker(report_to="mlflow", run_name="preempted", dir=mlflow_store / "run")
    accelerator = _accelerator(first)
    accelerator.init_trackers("resumable", config={"lr": 0.1})
    for step in range(1, 4):
        accelerator.log({"loss": 1.0 / step}, step=step)
    accelerator.end_training()
    run_id = first.run.identities["mlflow"]["run_id"]

    second = TracklinkTracker(report_to="mlflow", run_name="preempted", dir=mlflow_store / "run", resume=True)
    accelerator = _accelerator(second)
    accelerator.init_trackers("resumable", config={"lr": 0.1})
    accelerator.log({"loss": 0.25}, step=4)
    accelerator.log({"loss": 0.2})  # counts on from the recorded step
    accelerator.end_training()

    client = _mlflow(mlflow_store)
    (only,) = client.search_runs([client.get_experiment_by_name("resumable").experiment_id])
    assert only.info.run_id == run_id and second.run.identities["mlflow"]["run_id"] == run_id
    assert only.info.status == "FINISHED"
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss")) == [
        (1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25), (5, 0.2)]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.sdk("accelerate", "mlflow")
def test_two_processes_open_one_mlflow_run(workdir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
         "--dir", str(workdir / "run"), "--steps", "4"],
        capture_output=True, text=True, timeout=240, env=_script_env(workdir), cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    client = _mlflow(workdir)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("accelerate-script").experiment_id])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.params["processes"] == "2"
    history = client.get_metric_history(mlflow_run.info.run_id, "process")
    assert sorted((m.step, m.value) for m in history) == [(s, 0.0) for s in range(4)], "the main process logs"
    assert sorted(m.step for m in client.get_metric_history(mlflow_run.info.run_id, "loss")) == list(range(4))


# -- bad inputs ------------------------------------------------------------------------------------


@pytest.fixture
def started(tmp_path: Path) -> Any:
    from tracklink.integrations.accelerate import TracklinkTracker

    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    tracker = TracklinkTracker(report_to="none", dir=tmp_path / "run", callbacks=[recorder])
    accelerator = _accelerator(tracker)
    accelerator.init_trackers("bad-inputs")
    accelerator.recorder = recorder
    accelerator.tracker = tracker
    yield accelerator
    accelerator.end_training()


def test_log_after_end_training(started: Any) -> None:
    started.log({"loss": 1.0}, step=1)
    started.end_training()
    with pytest.raises(RuntimeError, match=r"accelerator.log\(\) after accelerator.end_training\(\)"):
        started.tracker.log({"loss": 2.0}, step=2)
    assert _metrics(read_records(started.recorder.path)) == [(1, {"train/loss": 1.0})]


def test_log_kwargs_are_refused(started: Any) -> None:
    with pytest.raises(TypeError, match=r"takes no log_kwargs, got \['commit'\]"):
        started.log({"loss": 1.0}, step=1, log_kwargs={"tracklink": {"commit": False}})
    started.log({"loss": 1.0}, step=1, log_kwargs={"wandb": {"commit": False}})  # another tracker's: not ours


def test_a_step_going_backwards_is_refused_and_nothing_is_lost(started: Any) -> None:
    started.log({"loss": 1.0}, step=5)
    with pytest.raises(ValueError, match=r"step=3 goes backwards"):
        started.log({"loss": 2.0}, step=3)
    started.log({"loss": 3.0}, step=6)
    started.end_training()
    assert [s for s, _ in _metrics(read_records(started.recorder.path))] == [5, 6]


def test_values_that_are_neither_numbers_nor_text(started: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tracklink")
    started.log({"loss": 1.0, "histogram": [1, 2, 3], "note": "warm-up"}, step=1)
    with pytest.raises(TypeError, match="takes a dict of values, got list"):
        started.log([("loss", 2.0)], step=2)
    started.end_training()
    records = read_records(started.recorder.path)
    assert _metrics(records) == [(1, {"train/loss": 1.0})]
    assert [r["texts"] for r in records if r["kind"] == "text"] == [{"train/note": "warm-up"}]
    assert any("left out 'histogram'" in r.getMessage() for r in caplog.records)


def test_config_after_the_run_started_is_warned_about(started: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tracklink")
    started.tracker.store_init_configuration({"lr": 0.1})
    started.tracker.store_init_configuration({"lr": 0.2})
    warned = [r.getMessage() for r in caplog.records if "store_init_configuration() after" in r.getMessage()]
    assert len(warned) == 1
    with pytest.raises(TypeError, match=r"config=\[.*pass a dict"):
        started.tracker.store_init_configuration([("lr", 0.1)])


def test_bad_tracker_arguments(tmp_path: Path) -> None:
    from tracklink.integrations.accelerate import TracklinkTracker

    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) 'report_too' \(did you mean 'report_to'\?\)"):
        TracklinkTracker(report_too="none")
    with pytest.raises(tracklink.UnknownTrackerError, match="tensorbord"):
        TracklinkTracker(report_to="tensorbord")
    with pytest.raises(TypeError, match=r"run_name=3 \(int\) is not accepted"):
        TracklinkTracker(report_to="none", run_name=3)  # type: ignore[arg-type]
    tracker = TracklinkTracker(report_to="none", resume="yes", dir=tmp_path)
    with pytest.raises(ValueError, match=r"resume='yes' is not accepted"):
        _accelerator(tracker).init_trackers("p")
    tracker = TracklinkTracker(report_to="none", dir=tmp_path, init_kwargs={"mlfow": {"tags": {}}})
    with pytest.raises(tracklink.ReportToError, match=r"init_kwargs names 'mlfow'.*Did you mean 'mlflow'"):
        _accelerator(tracker).init_trackers("p")


def test_import_rules() -> None:
    code = ("import sys, tracklink, tracklink.integrations; tracklink.integrations.__all__; "
            "print(sorted(m for m in ('torch', 'accelerate') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
