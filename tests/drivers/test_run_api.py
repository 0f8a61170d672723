"""The run API for hand-written loops (``tracklink.init``): what reaches real trackers, and the reliability
behaviours the Trainer has (isolation, asynchronous delivery, status on exceptions and SIGTERM, resume,
redaction, rank policies under torchrun).

Bad inputs catalogued here (each a clear error, or a documented behaviour; nothing already logged is lost):
``log`` after ``finish``; ``log`` of something that is not a dict; a value that is neither a number nor text
(left out, warned once); a step that goes backwards (error, everything before it delivered); a step that is a
bool, a float with a fraction, negative or text; an unknown ``init`` keyword (with a close-match hint); an
``init_kwargs`` key that names no tracker (error) or a tracker the run does not use (warning); ``init_kwargs``
that are not dicts; ``resume`` with an unknown value, ``"must"`` without a recorded run, ``"never"`` over an
existing one, ``True`` without ``dir``/``name``; a damaged run file; ``config`` that is not a mapping;
``project``/``name`` that are not strings; ``finish`` with an unknown status; ``log_checkpoint`` of a path that
does not exist.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import tracklink
from helpers import SECRET_ENV, SECRET_ENV_VAR
from tracker_doubles import FailingTracker, RecordingTracker, SlowTracker, read_records

TESTS = Path(__file__).resolve().parent.parent
SECRET = "sk-config-SECRET-41c9d0"


def _metrics(records: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(r["step"], r["metrics"]) for r in records if r["kind"] == "metrics"]


# -- what reaches the trackers -------------------------------------------------------------------------


def test_plain_loop_with_a_recording_tracker(tmp_path: Path) -> None:
    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    with tracklink.init(project="demo", name="plain", config={"lr": 0.1, "api_key": SECRET, "nested": {"depth": 2}},
                        report_to="none", dir=tmp_path / "run", callbacks=[recorder]) as run:
        assert run.trackers == {"recording": recorder}
        for step in range(1, 4):
            run.log({"loss": 1.0 / step, "eval_accuracy": step / 10}, step=step)
        run.log({"note": "text value"}, step=3)
    records = read_records(recorder.path)
    setup = records[0]
    assert setup["kind"] == "setup" and setup["name"] == "plain" and setup["start_step"] == 0
    assert setup["params"] == {"lr": 0.1, "api_key": "<redacted>", "nested.depth": 2}
    assert _metrics(records) == [(1, {"train/loss": 1.0, "eval/accuracy": 0.1}),
                                 (2, {"train/loss": 0.5, "eval/accuracy": 0.2}),
                                 (3, {"train/loss": 1 / 3, "eval/accuracy": 0.3})]
    assert [r for r in records if r["kind"] == "text"] == [
        {"kind": "text", "thread": records[-2]["thread"], "texts": {"train/note": "text value"}, "step": 3}]
    assert records[-1]["kind"] == "finish" and records[-1]["status"] == "success"
    assert SECRET not in recorder.path.read_text()
    saved = json.loads((tmp_path / "run" / tracklink.run.RUN_FILE).read_text())
    assert saved["step"] == 3 and saved["finished"] is True
    assert saved["trackers"]["RecordingTracker"]["attributes"]["run"] == {"run_id": recorder.run_id}


def test_steps_count_on_without_a_step(tmp_path: Path) -> None:
    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    run = tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=[recorder])
    run.log({"a": 1})
    run.log({"a": 2})
    run.log({"a": 3}, step=10)
    run.log({"a": 4})
    run.log({"b": 5}, step=11)  # the same step again is fine
    run.finish()
    assert [step for step, _ in _metrics(read_records(recorder.path))] == [0, 1, 10, 11, 11]


def test_tensors_and_numpy_values_are_numbers(tmp_path: Path) -> None:
    import numpy as np
    import torch

    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    with tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=[recorder]) as run:
        run.log({"loss": torch.tensor(0.5), "lr": np.float32(0.25), "epoch": 1}, step=1)
    assert _metrics(read_records(recorder.path)) == [(1, {"train/loss": 0.5, "train/lr": 0.25, "train/epoch": 1})]


@pytest.mark.sdk("mlflow", "tensorboard")
def test_plain_loop_reads_back_from_mlflow_and_tensorboard(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    config = {"lr": 0.1, "batch_size": 8, "api_key": SECRET, "note": f"token {SECRET_ENV}"}
    with tracklink.init(project="spirals", name="plain-run", config=config, report_to=["tensorboard", "mlflow"],
                        dir=workdir / "run", init_kwargs={"mlflow": {"tags": {"team": "nlp"}}}) as run:
        for step in range(1, 6):
            run.log({"loss": 1.0 / step}, step=step)
        run.log({"eval_loss": 0.3}, step=5)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("spirals")
    assert experiment is not None, "project= names the MLflow experiment"
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == "plain-run"
    assert sorted((m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, "loss")) == [
        (s, 1.0 / s) for s in range(1, 6)]
    assert [(m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, "eval_loss")] == [(5, 0.3)]
    params = mlflow_run.data.params
    assert params["lr"] == "0.1" and params["api_key"] == "<redacted>" and SECRET_ENV not in params["note"]
    assert mlflow_run.data.tags["team"] == "nlp"
    log_dir = run.identities["tensorboard"]["log_dir"]
    events = EventAccumulator(log_dir)
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")] == [
        (s, round(1.0 / s, 6)) for s in range(1, 6)]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("eval/loss")] == [(5, 0.3)]
    assert Path(log_dir).resolve().is_relative_to((workdir / "run").resolve())


# -- reliability -------------------------------------------------------------------------------------


def test_a_raising_tracker_does_not_stop_the_loop(tmp_path: Path) -> None:
    failing = FailingTracker()
    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    with tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=[failing, recorder]) as run:
        for step in range(10):
            run.log({"loss": float(step)}, step=step)
    assert [s for s, _ in _metrics(read_records(recorder.path))] == list(range(10))
    assert "3 error(s)" in run.failures()["failing"] and failing.finished == ["failed"]


def test_a_slow_tracker_does_not_slow_the_loop(tmp_path: Path) -> None:
    slow = SlowTracker(tmp_path / "slow.jsonl", delay=0.05)
    run = tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=[slow])
    for step in range(20):
        run.log({"loss": float(step)}, step=step)
    behind = len(_metrics(read_records(slow.path)))
    assert behind < 20, "the loop returned before the slow tracker handled everything"
    run.finish()
    assert [s for s, _ in _metrics(read_records(slow.path))] == list(range(20))


def test_an_exception_in_the_block_fails_the_runs(tmp_path: Path) -> None:
    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    with pytest.raises(ZeroDivisionError), tracklink.init(report_to="none", dir=tmp_path / "run",
                                                          callbacks=[recorder]) as run:
        run.log({"loss": 1.0}, step=1)
        _ = 1 / 0
    records = read_records(recorder.path)
    assert _metrics(records) == [(1, {"train/loss": 1.0})]
    assert records[-1] == {**records[-1], "kind": "finish", "status": "failed"}


@pytest.mark.parametrize("status", ["failed", "killed"])
def test_finish_with_a_status(tmp_path: Path, status: str) -> None:
    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    run = tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=[recorder])
    run.finish(status=status)
    run.finish()  # a second call does nothing
    assert [r["status"] for r in read_records(recorder.path) if r["kind"] == "finish"] == [status]


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        from tracker_doubles import RecordingTracker, SlowTracker
        import tracklink
    """) + textwrap.dedent(body))
    return path


@pytest.mark.slow
def test_sigterm_ends_the_runs_killed_with_nothing_lost(tmp_path: Path) -> None:
    script = _script(tmp_path, """
        slow = SlowTracker(sys.argv[2], delay=0.2)
        with tracklink.init(report_to="none", dir=sys.argv[1], callbacks=[slow]) as run:
            for step in range(100000):
                run.log({"loss": 1.0 / (step + 1)}, step=step)
                print("LOGGED", step, flush=True)
                time.sleep(0.02)
    """)
    records_path = tmp_path / "rec.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), str(records_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    logged = []
    for line in proc.stdout:
        logged.append(int(line.split()[1]))
        if len(logged) >= 15:
            break
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=120)
    logged += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("LOGGED")]
    assert proc.returncode == 143, err
    records = read_records(records_path)
    assert set(logged) <= {step for step, _ in _metrics(records)}
    assert records[-1]["kind"] == "finish" and records[-1]["status"] == "killed"


@pytest.mark.slow
@pytest.mark.parametrize("own_handler", [False, True])
def test_sigterm_without_a_with_block(tmp_path: Path, own_handler: bool) -> None:
    """SIGTERM kills a run used without ``with`` too (the run arms the guard while SIGTERM has its default
    action); a SIGTERM handler the script installed itself is left alone."""
    script = _script(tmp_path, f"""
        import signal
        if {own_handler!r}:
            signal.signal(signal.SIGTERM, lambda signum, frame: (print("OWN HANDLER", flush=True), sys.exit(7)))
        run = tracklink.init(report_to="none", dir=sys.argv[1], callbacks=[RecordingTracker(sys.argv[2])])
        for step in range(100000):
            run.log({{"loss": 1.0}}, step=step)
            print("LOGGED", step, flush=True)
            time.sleep(0.02)
    """)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "rec.jsonl")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("LOGGED 5"):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    records = read_records(tmp_path / "rec.jsonl")
    if own_handler:
        assert proc.returncode == 7 and "OWN HANDLER" in out, err
        assert records[-1]["status"] == "success"  # the script chose to exit normally
    else:
        assert proc.returncode == 143, err
        assert records[-1]["kind"] == "finish" and records[-1]["status"] == "killed"


@pytest.mark.slow
def test_an_uncaught_exception_without_a_with_block_fails_the_runs(tmp_path: Path) -> None:
    script = _script(tmp_path, """
        run = tracklink.init(report_to="none", dir=sys.argv[1], callbacks=[RecordingTracker(sys.argv[2])])
        run.log({"loss": 1.0}, step=1)
        raise RuntimeError("the loop crashed")
    """)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "rec.jsonl")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "the loop crashed" in result.stderr
    records = read_records(tmp_path / "rec.jsonl")
    assert _metrics(records) == [(1, {"train/loss": 1.0})] and records[-1]["status"] == "failed"


@pytest.mark.slow
def test_a_script_that_forgets_finish_ends_the_runs_at_exit(tmp_path: Path) -> None:
    script = _script(tmp_path, """
        run = tracklink.init(report_to="none", dir=sys.argv[1], callbacks=[SlowTracker(sys.argv[2], delay=0.1)])
        for step in range(5):
            run.log({"loss": 1.0}, step=step)
    """)
    subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "rec.jsonl")],
                   check=True, capture_output=True, timeout=120)
    records = read_records(tmp_path / "rec.jsonl")
    assert [s for s, _ in _metrics(records)] == list(range(5)) and records[-1]["status"] == "success"


def test_resume_reattaches_every_tracker(tmp_path: Path) -> None:
    first = RecordingTracker(tmp_path / "first.jsonl")
    run = tracklink.init(name="preempted", report_to="none", dir=tmp_path / "run", callbacks=[first])
    for step in range(1, 4):
        run.log({"loss": float(step)}, step=step)
    run.finish(status="killed")  # a preempted job
    again = RecordingTracker(tmp_path / "second.jsonl")
    run = tracklink.init(name="preempted", report_to="none", dir=tmp_path / "run", resume=True, callbacks=[again])
    run.log({"loss": 4.0})  # counts on from the recorded step
    run.finish()
    setup = read_records(again.path)[0]
    assert setup["resumed"] is True and setup["run_id"] == first.run_id and setup["start_step"] == 3
    assert _metrics(read_records(again.path)) == [(4, {"train/loss": 4.0})]


@pytest.mark.sdk("mlflow")
def test_resume_continues_the_same_mlflow_run(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    run = tracklink.init(name="r", report_to="mlflow", dir=workdir / "run")
    run.log({"loss": 1.0}, step=1)
    run.finish(status="killed")
    run = tracklink.init(name="r", report_to="mlflow", dir=workdir / "run", resume="must")
    run.log({"loss": 0.5}, step=2)
    run.finish()
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    (only,) = client.search_runs(["0"])
    assert only.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(only.info.run_id, "loss")] == [(1, 1.0), (2, 0.5)]


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_opens_one_run_per_main_policy_tracker(tmp_path: Path) -> None:
    script = _script(tmp_path, """
        import os, torch.distributed as dist
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        recorder = RecordingTracker(sys.argv[2])
        with tracklink.init(report_to="none", dir=sys.argv[1], callbacks=[recorder]) as run:
            assert bool(run.trackers) == (rank == 0), (rank, run.trackers)
            for step in range(5):
                run.log({"loss": float(step), "rank": rank}, step=step)
        dist.destroy_process_group()
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tmp_path / "run"), str(tmp_path / "rec.jsonl")],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    records = read_records(tmp_path / "rec.jsonl")
    assert [r["kind"] for r in records].count("setup") == 1
    assert [(s, m["train/rank"]) for s, m in _metrics(records)] == [(s, 0) for s in range(5)]


# -- bad inputs ------------------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path: Path) -> Any:
    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    started = tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=[recorder])
    started.recorder = recorder  # type: ignore[attr-defined]
    yield started
    started.finish()


def test_log_after_finish(run: Any) -> None:
    run.log({"loss": 1.0}, step=1)
    run.finish()
    with pytest.raises(RuntimeError, match=r"run.log\(\) after run.finish\(\).*tracklink.init"):
        run.log({"loss": 2.0}, step=2)
    assert _metrics(read_records(run.recorder.path)) == [(1, {"train/loss": 1.0})]


def test_step_going_backwards_is_refused_and_nothing_is_lost(run: Any) -> None:
    run.log({"loss": 1.0}, step=5)
    with pytest.raises(ValueError, match=r"step=3 goes backwards: this run already logged step 5"):
        run.log({"loss": 2.0}, step=3)
    run.log({"loss": 3.0}, step=6)
    run.finish()
    assert [s for s, _ in _metrics(read_records(run.recorder.path))] == [5, 6]


@pytest.mark.parametrize("step, error", [(True, TypeError), (1.5, TypeError), ("3", TypeError), (-1, ValueError)])
def test_bad_steps(run: Any, step: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"step=.*(whole number|is not accepted)"):
        run.log({"loss": 1.0}, step=step)


def test_values_that_are_neither_numbers_nor_text(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tracklink")
    run.log({"loss": 1.0, "weights": object(), "history": [1, 2]}, step=1)
    run.log({"loss": 2.0, "weights": object()}, step=2)
    with pytest.raises(TypeError, match="takes a dict"):
        run.log([("loss", 1.0)])
    run.finish()
    assert [m for _, m in _metrics(read_records(run.recorder.path))] == [{"train/loss": 1.0}, {"train/loss": 2.0}]
    warned = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len([w for w in warned if "'weights'" in w]) == 1 and any("'history'" in w for w in warned)


def test_unknown_init_keyword() -> None:
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) 'projct' \(did you mean 'project'\?\).*accepted"):
        tracklink.init(projct="x", report_to="none")


def test_init_kwargs_naming_no_tracker(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(tracklink.ReportToError, match=r"init_kwargs names 'wandbb'.*Did you mean 'wandb'"):
        tracklink.init(report_to="none", dir=tmp_path, init_kwargs={"wandbb": {}})
    with pytest.raises(TypeError, match=r"init_kwargs\['wandb'\]=.*pass a dict"):
        tracklink.init(report_to="none", dir=tmp_path, init_kwargs={"wandb": "entity"})
    with pytest.raises(TypeError, match="pass a dict of per-tracker dicts"):
        tracklink.init(report_to="none", dir=tmp_path, init_kwargs=["wandb"])
    caplog.set_level(logging.WARNING, logger="tracklink")
    tracklink.init(report_to="none", dir=tmp_path, init_kwargs={"wandb": {"entity": "x"}}).finish()
    assert any("init_kwargs for 'wandb' are ignored" in r.getMessage() for r in caplog.records)


def test_bad_resume_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"resume='yes' is not accepted; accepted: None, True"):
        tracklink.init(report_to="none", dir=tmp_path / "a", resume="yes")
    with pytest.raises(ValueError, match="resume=True needs dir="):
        tracklink.init(report_to="none", resume=True)
    with pytest.raises(ValueError, match=r"resume='must', but .* does not exist"):
        tracklink.init(report_to="none", dir=tmp_path / "b", resume="must")
    tracklink.init(report_to="none", dir=tmp_path / "c").finish()
    with pytest.raises(ValueError, match=r"resume='never', but .* already holds a run"):
        tracklink.init(report_to="none", dir=tmp_path / "c", resume="never")
    (tmp_path / "c" / tracklink.run.RUN_FILE).write_text("{")
    with pytest.raises(ValueError, match="cannot be read"):
        tracklink.init(report_to="none", dir=tmp_path / "c", resume=True)


def test_bad_init_values(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"config=\[.*pass a dict of hyper-parameters"):
        tracklink.init(report_to="none", dir=tmp_path, config=[("lr", 0.1)])
    with pytest.raises(TypeError, match=r"project=3 \(int\) is not accepted"):
        tracklink.init(3, report_to="none", dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(tracklink.UnknownTrackerError, match="tensorbord"):
        tracklink.init(report_to="tensorbord", dir=tmp_path)


def test_bad_finish_and_checkpoint_values(run: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"status='done' is not accepted"):
        run.finish(status="done")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        run.log_checkpoint(tmp_path / "missing")
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    run.log({"loss": 1.0}, step=4)
    run.log_checkpoint(checkpoint)
    assert run.recorder.identity is not None


def test_import_tracklink_stays_light() -> None:
    code = "import sys, tracklink; tracklink.init; print(sorted(m for m in ('torch', 'mlflow', 'wandb') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


class UploadingRecorder(RecordingTracker):
    """Records what a checkpoint upload would see: the directory handed over and the files in it."""

    name = "uploading"

    def log_checkpoint(self, path: str, state: Any) -> None:
        self._write("checkpoint", path=path, files=sorted(p.name for p in Path(path).iterdir()),
                    step=state.global_step)


def test_a_checkpoint_file_is_handed_over_in_a_directory(tmp_path: Path) -> None:
    recorder = UploadingRecorder(tmp_path / "rec.jsonl")
    weights = tmp_path / "model-7.pt"
    weights.write_bytes(b"weights")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x")
    with tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=[recorder]) as run:
        run.log({"loss": 1.0}, step=7)
        run.log_checkpoint(weights)
        run.log_checkpoint(folder, step=8)
    handed = [r for r in read_records(recorder.path) if r["kind"] == "checkpoint"]
    assert handed[0]["files"] == ["model-7.pt"] and handed[0]["step"] == 7
    assert Path(handed[0]["path"]).parent == tmp_path / "run" / "tracklink-checkpoints"
    assert handed[1] == {**handed[1], "path": str(folder), "files": ["model.safetensors"], "step": 8}


def test_train_loss_of_a_loop_is_a_series_not_a_summary(tmp_path: Path) -> None:
    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    with tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=[recorder]) as run:
        for step in range(3):
            run.log({"train_loss": float(step)}, step=step)
    records = read_records(recorder.path)
    assert [s for s, m in _metrics(records) if "train/train_loss" in m] == [0, 1, 2]
    assert not [r for r in records if r["kind"] == "summary"]


def test_resume_at_an_earlier_step(tmp_path: Path) -> None:
    first = RecordingTracker(tmp_path / "first.jsonl")
    run = tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=[first])
    for step in range(1, 6):
        run.log({"loss": float(step)}, step=step)
    run.finish(status="killed")
    again = RecordingTracker(tmp_path / "again.jsonl")
    run = tracklink.Run.start("none", dir=tmp_path / "run", resume=True, callbacks=[again], step=3)
    run.log({"loss": 40.0}, step=4)  # step 4 again: allowed, the run continues from the checkpoint's step 3
    run.finish()
    setup = read_records(again.path)[0]
    assert setup["start_step"] == 3 and setup["resumed"] is True and setup["run_id"] == first.run_id
    assert _metrics(read_records(again.path)) == [(4, {"train/loss": 40.0})]


def test_handle_sigterm_false_leaves_sigterm_alone(tmp_path: Path) -> None:
    if threading_main() is False:
        pytest.skip("signals are for the main thread")
    before = signal.getsignal(signal.SIGTERM)
    run = tracklink.Run.start("none", dir=tmp_path / "run", handle_sigterm=False)
    assert signal.getsignal(signal.SIGTERM) is before
    run.finish()
    run = tracklink.init(report_to="none", dir=tmp_path / "run2")
    assert signal.getsignal(signal.SIGTERM) is not before or before is not signal.SIG_DFL
    run.finish()
    assert signal.getsignal(signal.SIGTERM) is before


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def test_not_given_survives_pickling() -> None:
    import pickle

    from tracklink.resolve import NOT_GIVEN

    assert pickle.loads(pickle.dumps(NOT_GIVEN)) is NOT_GIVEN
