"""The Lightning logger (``tracklink.integrations.lightning.TracklinkLogger``) with real Lightning on CPU, in a
``Trainer`` and in Fabric: what reaches MLflow (sqlite store) and TensorBoard event files, how Lightning's
statuses, steps and checkpoints map onto the run, and the reliability behaviours the Trainer has (isolation,
asynchronous delivery, failed/killed status after an exception or SIGTERM, resume, redaction, one run under
DDP with two processes).

Bad inputs catalogued here (each a clear error, or a documented behaviour; nothing already logged is lost):
an unknown ``TracklinkLogger`` keyword (error with a close-match hint); an unknown ``report_to`` name, or
``init_kwargs`` for no tracker (error when the logger is built, before ``fit``); ``resume`` without ``dir``/
``name``, ``resume="must"`` with no recorded run, ``resume="never"`` over one (errors when built); a
``finalize`` status Lightning does not define (error); extra ``log_hyperparams`` arguments (error); a
negative step (error); a step smaller than the last one logged (logged at the last step, warned once);
hyper-parameters logged after the run started (sent when the run next starts, warned once).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tracker_doubles import FailingTracker, RecordingTracker, SlowTracker, read_records

pytestmark = pytest.mark.sdk("lightning")

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "lightning_script.py"


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("tracklink_lightning_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lit() -> Any:
    """The script's ``TinyModule``, ``SpyLogger``, ``trainer()`` and ``loaders()``."""
    pytest.importorskip("lightning")
    return _load_script()


@pytest.fixture
def store(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An MLflow sqlite store in the test's working directory; returns its client."""
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def only_run(client: Any) -> Any:
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], run_view_type=3)]
    assert len(runs) == 1, [(r.info.run_id, r.info.run_name) for r in runs]
    return runs[0]


def history(client: Any, run: Any, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, round(m.value, 5)) for m in client.get_metric_history(run.info.run_id, key))


def expected(calls: list[tuple[Any, dict[str, Any]]], key: str) -> list[tuple[int, float]]:
    return sorted((int(step), round(float(metrics[key]), 5)) for step, metrics in calls if key in metrics)


def tensorboard_scalars(root: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for path in glob.glob(str(root / "**" / "events.out.tfevents.*"), recursive=True):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            points += [(e.step, round(e.value, 5)) for e in events.Scalars(tag)]
    return sorted(points)


def files_with(root: Path, needle: str, pattern: str = "**/*") -> list[str]:
    return [p for p in glob.glob(str(root / pattern), recursive=True)
            if os.path.isfile(p) and needle.encode() in Path(p).read_bytes()]


# -- Trainer: metrics, params, statuses, checkpoints ----------------------------------------------------


@pytest.mark.sdk("mlflow", "tensorboard")
def test_trainer_reaches_mlflow_and_tensorboard(lit: Any, store: Any, workdir: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    logger = lit.SpyLogger(report_to=["tensorboard", "mlflow"], project="lit", name="tiny", dir=workdir / "run")
    trainer = lit.trainer(logger)
    trainer.fit(lit.TinyModule(), *lit.loaders())
    trainer.test(lit.TinyModule(), lit.loaders()[1])  # the same trainer: test metrics at the last step

    run = only_run(store)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert store.get_experiment(run.info.experiment_id).name == "lit"
    for key in ("train_loss", "val_loss", "epoch", "test_loss"):
        assert history(store, run, key) == expected(logger.calls, key), key
    assert [s for s, _ in history(store, run, "train_loss")] == list(range(8))  # 2 epochs of 4 batches
    assert [s for s, _ in history(store, run, "val_loss")] == [3, 7]  # epoch end: the step of its last batch
    assert run.data.params["lr"] == "0.1"
    assert run.data.params["model/num_parameters"] == "5"  # from log_graph(model)
    assert run.data.params["api_key"] != lit.SECRET
    # TensorBoard: transformers' naming (train/...), the same points
    assert tensorboard_scalars(workdir / "run", "train/train_loss") == expected(logger.calls, "train_loss")
    assert files_with(workdir, lit.SECRET, "mlflow.db") == []
    assert files_with(workdir / "run", lit.SECRET) == []
    assert logger.run.failures() == {}
    assert "goes backwards" not in caplog.text and "never go backwards" not in caplog.text
    # Lightning's files go into the run directory; the tracker identities are kept there too
    assert trainer.log_dir == str(workdir / "run")
    assert json.loads((workdir / "run" / "tracklink-run.json").read_text())["trackers"]


@pytest.mark.sdk("mlflow")
def test_new_trainer_reusing_the_logger_continues_the_run(lit: Any, store: Any, workdir: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Lightning finalizes the logger after fit; a new Trainer's test() re-opens the same run, and its
    step (0: a new Trainer counts from 0) is logged at the last step the run logged, with one warning."""
    logger = lit.SpyLogger(report_to=["mlflow"], name="reused", dir=workdir / "run")
    lit.trainer(logger).fit(lit.TinyModule(), *lit.loaders())
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        lit.trainer(logger).test(lit.TinyModule(), lit.loaders()[1])
    run = only_run(store)
    assert run.info.status == "FINISHED"
    assert logger.calls[-1][0] == 0  # what Lightning passed
    [(step, value)] = history(store, run, "test_loss")
    assert step == 7 and value == round(logger.calls[-1][1]["test_loss"], 5)  # kept, at the last step
    assert caplog.text.count("never go backwards") == 1


@pytest.mark.sdk("mlflow")
def test_checkpoints_are_handed_to_trackers_that_upload(lit: Any, store: Any, workdir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_MLFLOW_LOG_ARTIFACTS", "true")
    from lightning.pytorch.callbacks import ModelCheckpoint

    logger = lit.SpyLogger(report_to=["mlflow"], name="ckpt", dir=workdir / "run")
    checkpoint = ModelCheckpoint(save_top_k=1)  # every epoch; rotation deletes the one before
    trainer = lit.trainer(logger, enable_checkpointing=True, callbacks=[checkpoint], max_epochs=3)
    trainer.fit(lit.TinyModule(), *lit.loaders())

    run = only_run(store)
    saved = sorted(os.listdir(workdir / "run" / "checkpoints"))  # Lightning's default place: <dir>/checkpoints
    assert len(saved) == 1 and saved[0].endswith(".ckpt")
    uploaded = {a.path: [f.path for f in store.list_artifacts(run.info.run_id, a.path)]
                for a in store.list_artifacts(run.info.run_id)}
    # every checkpoint Lightning saved reached MLflow, also those rotation deleted later
    assert uploaded == {f"checkpoint-{step}": [f"checkpoint-{step}/epoch={epoch}-step={step}.ckpt"]
                        for epoch, step in ((0, 4), (1, 8), (2, 12))}
    assert not (workdir / "run" / "tracklink-checkpoints").exists()  # the hand-off links are gone


# -- Fabric -----------------------------------------------------------------------------------------------


@pytest.mark.sdk("mlflow")
def test_fabric_log_dict_steps_and_late_hyperparameters(lit: Any, store: Any, workdir: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from lightning.fabric import Fabric

    from tracklink.integrations.lightning import TracklinkLogger

    logger = TracklinkLogger(report_to=["mlflow"], project="fabric", name="loop", dir=workdir / "run",
                             config={"batch_size": 8})
    fabric = Fabric(accelerator="cpu", devices=1, loggers=[logger])
    before = signal.getsignal(signal.SIGTERM)
    logger.log_hyperparams({"lr": 0.1, "api_key": lit.SECRET})
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        for step in range(4):
            fabric.log_dict({"loss": 1.0 / (step + 1)}, step=step)
        fabric.log_dict({"loss": 0.1})  # no step: the next one (4)
        fabric.log_dict({"val_loss": 0.5}, step=1)  # backwards: logged at 4
        fabric.log_dict({"val_loss": 0.4}, step=1)  # warned once only
        logger.log_hyperparams({"lr": 0.1, "momentum": 0.9})  # after the start: at the next start
    assert caplog.text.count("never go backwards") == 1
    assert caplog.text.count("after the run started (momentum)") == 1
    logger.finalize("success")
    assert signal.getsignal(signal.SIGTERM) == before  # the SIGTERM guard is gone with the run

    run = only_run(store)
    assert run.info.status == "FINISHED"
    assert history(store, run, "loss") == [(0, 1.0), (1, 0.5), (2, 0.33333), (3, 0.25), (4, 0.1)]
    assert history(store, run, "val_loss") == [(4, 0.4), (4, 0.5)]
    assert run.data.params["api_key"] == "<redacted>" and run.data.params["batch_size"] == "8"
    assert "momentum" not in run.data.params

    fabric.log_dict({"loss": 0.05}, step=5)  # after finalize: the same run again, with the late param
    logger.finalize("success")
    run = only_run(store)
    assert run.data.params["momentum"] == "0.9"
    assert [s for s, _ in history(store, run, "loss")] == [0, 1, 2, 3, 4, 5]


# -- reliability --------------------------------------------------------------------------------------


def test_failing_and_slow_trackers_neither_stop_nor_slow_training(lit: Any, workdir: Path) -> None:
    import lightning.pytorch as pl

    class Clock(pl.Callback):
        def on_train_start(self, trainer: Any, module: Any) -> None:
            self.start = time.monotonic()

        def on_train_end(self, trainer: Any, module: Any) -> None:
            self.end = time.monotonic()

    delay = 0.25
    slow = SlowTracker(workdir / "slow.jsonl", delay=delay)
    logger = lit.SpyLogger(report_to="none", callbacks=[FailingTracker(), slow], dir=workdir / "run")
    clock = Clock()
    lit.trainer(logger, callbacks=[clock]).fit(lit.TinyModule(), *lit.loaders())  # FailingTracker raises

    assert "failing" in logger.run.failures()
    delivered = [r for r in read_records(workdir / "slow.jsonl") if r["kind"] == "metrics"]
    assert len(delivered) == len(logger.calls) == 10  # 8 steps + 2 validations, all delivered at finalize
    assert clock.end - clock.start < len(delivered) * delay / 2  # the loop did not wait for the tracker


@pytest.mark.sdk("mlflow")
@pytest.mark.parametrize(("error", "raised", "status"), [
    (RuntimeError, RuntimeError, "FAILED"),
    (KeyboardInterrupt, SystemExit, "KILLED"),  # Lightning turns Ctrl-C into sys.exit(1) after finalize("failed")
])
def test_exception_in_training_step_ends_the_run(lit: Any, store: Any, workdir: Path, error: type,
                                                 raised: type, status: str) -> None:
    class Failing(lit.TinyModule):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.global_step == 3:
                raise error("planted")
            return super().training_step(batch, batch_idx)

    logger = lit.SpyLogger(report_to=["mlflow"], name="fails", dir=workdir / "run")
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(raised):
            lit.trainer(logger).fit(Failing(), *lit.loaders())
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C from its KeyboardInterrupt handling on
    run = only_run(store)
    assert run.info.status == status
    assert history(store, run, "train_loss") == expected(logger.calls, "train_loss")
    assert [s for s, _ in history(store, run, "train_loss")] == [0, 1, 2]


def _run_until_logged(workdir: Path, loop: str, key: str, count: int = 5) -> tuple[int, list[int]]:
    """Start the script training forever, SIGTERM it after ``count`` logged steps; its exit status and steps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stderr = open(workdir / "stderr.txt", "w")
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--dir", str(workdir / "run"), "--loop", loop,
                                "--mode", "forever"], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                               cwd=workdir)
    stderr.close()
    logged: list[int] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("LOGGED") and key in line.split()[2].split(","):
                logged.append(int(line.split()[1]))
                if len(logged) >= count:
                    break
        assert len(logged) >= count, (workdir / "stderr.txt").read_text()[-3000:]
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logged += [int(line.split()[1]) for line in rest.splitlines()
               if line.startswith("LOGGED") and key in line.split()[2].split(",")]
    return process.returncode, logged


@pytest.mark.slow
@pytest.mark.sdk("mlflow")
@pytest.mark.parametrize(("loop", "key", "exit_status"), [
    ("trainer", "train_loss", 0),  # Lightning stops at the end of the batch and exits with SystemExit()
    ("fabric", "loss", 143),  # the logger's SIGTERM guard: Terminated, 128 + 15
])
def test_sigterm_ends_the_run_killed_with_every_metric(store: Any, workdir: Path, loop: str, key: str,
                                                       exit_status: int) -> None:
    returncode, logged = _run_until_logged(workdir, loop, key)
    assert returncode == exit_status, (workdir / "stderr.txt").read_text()[-3000:]
    run = only_run(store)
    assert run.info.status == "KILLED"
    steps = [s for s, _ in history(store, run, key)]
    assert set(logged) <= set(steps), (steps, logged)  # every metric logged before the signal...
    assert steps == list(range(steps[-1] + 1))  # ...once, with no gap


@pytest.mark.sdk("mlflow")
def test_resume_continues_the_same_run(lit: Any, store: Any, workdir: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tracklink.integrations.lightning import TracklinkLogger

    first = lit.SpyLogger(report_to=["mlflow"], name="resumed", dir=workdir / "run")
    lit.trainer(first, enable_checkpointing=True, callbacks=[ModelCheckpoint(save_top_k=-1)],
                max_epochs=2).fit(lit.TinyModule(), *lit.loaders())
    run_id = only_run(store).info.run_id

    # a restarted job: a new logger on the same directory, training on from the last checkpoint
    second = lit.SpyLogger(report_to=["mlflow"], name="resumed", dir=workdir / "run", resume=True)
    lit.trainer(second, max_epochs=3).fit(lit.TinyModule(), *lit.loaders(),
                                          ckpt_path=str(workdir / "run" / "checkpoints" / "epoch=1-step=8.ckpt"))
    run = only_run(store)  # still exactly one run
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert [s for s, _ in history(store, run, "train_loss")] == list(range(12))
    assert [s for s, _ in history(store, run, "val_loss")] == [3, 7, 11]

    # resumed from a checkpoint older than the last step logged: the replayed steps (4..7) are logged at
    # the last step logged (11), nothing is lost
    third = lit.SpyLogger(report_to=["mlflow"], name="resumed", dir=workdir / "run", resume="must")
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        lit.trainer(third, max_epochs=2).fit(lit.TinyModule(), *lit.loaders(),
                                             ckpt_path=str(workdir / "run" / "checkpoints" / "epoch=0-step=4.ckpt"))
    assert "never go backwards" in caplog.text
    run = only_run(store)
    assert run.info.run_id == run_id
    assert [s for s, _ in history(store, run, "train_loss")] == list(range(12)) + [11] * 4
    with pytest.raises(ValueError, match="already holds a run"):
        TracklinkLogger(report_to=["mlflow"], dir=workdir / "run", resume="never")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.sdk("mlflow")
def test_ddp_with_two_processes_opens_one_run(store: Any, workdir: Path) -> None:
    """``strategy="ddp"`` on CPU (gloo): Lightning starts the second process itself; the logger exists on
    both, the run (and the MLflow run) on rank 0 only."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(workdir / "run"), "--devices", "2",
                             "--epochs", "1"], capture_output=True, text=True, timeout=240, env=env, cwd=workdir)
    assert result.returncode == 0, result.stderr[-5000:]
    run = only_run(store)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history(store, run, "train_loss")] == [0, 1]  # 32 items, 2 ranks, batches of 8
    ranks = {json.loads(p.read_text())["rank"]: json.loads(p.read_text())
             for p in (workdir / "run").glob("rank-*.json")}
    assert ranks[0]["has_run"] and not ranks[1]["has_run"] and ranks[0]["pid"] != ranks[1]["pid"]
    assert result.stdout.count("LOGGED") == 3  # rank 0 only: two steps and one validation


# -- ranks, bad input, imports ------------------------------------------------------------------------------


def test_other_ranks_do_nothing(lit: Any, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = lit.SpyLogger(report_to="none", dir=workdir / "run")
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    assert logger.run is None and not (workdir / "run").exists()


def test_the_logger_can_be_pickled(lit: Any, workdir: Path) -> None:
    """``ddp_spawn`` pickles the trainer with its loggers: a copy starts its own run, never the original's."""
    import pickle

    from tracklink.integrations.lightning import TracklinkLogger
    from tracklink.resolve import NOT_GIVEN

    assert pickle.loads(pickle.dumps(TracklinkLogger(dir=workdir / "default"))).report_to is NOT_GIVEN
    logger = TracklinkLogger(report_to="none", dir=workdir / "run")
    logger.log_metrics({"loss": 1.0}, step=1)
    copy = pickle.loads(pickle.dumps(logger))
    assert copy.run is None and logger.run is not None
    copy.log_metrics({"loss": 0.5}, step=2)
    assert copy.run is not None and copy.run is not logger.run
    copy.finalize("success")
    logger.finalize("success")


def test_bad_input(lit: Any, workdir: Path) -> None:
    from tracklink.errors import ReportToError
    from tracklink.integrations.lightning import TracklinkLogger

    with pytest.raises(TypeError, match="'reportto' \\(did you mean 'report_to'\\?\\)"):
        TracklinkLogger(reportto=["mlflow"])
    with pytest.raises(ReportToError):
        TracklinkLogger(report_to=["no-such-tracker"])
    with pytest.raises(ReportToError, match="init_kwargs names 'wandbb'"):
        TracklinkLogger(report_to="none", init_kwargs={"wandbb": {}})
    with pytest.raises(ValueError, match="needs dir="):
        TracklinkLogger(report_to="none", resume=True)
    with pytest.raises(ValueError, match="resume='must'"):
        TracklinkLogger(report_to="none", dir=workdir / "nothing", resume="must")
    with pytest.raises(TypeError, match="name=3"):
        TracklinkLogger(report_to="none", name=3)

    logger = TracklinkLogger(report_to="none", dir=workdir / "run",
                             callbacks=[RecordingTracker(workdir / "records.jsonl")])
    with pytest.raises(TypeError, match="takes only params"):
        logger.log_hyperparams({"lr": 0.1}, {"metric": 1.0})
    with pytest.raises(TypeError, match="not accepted"):
        logger.log_hyperparams(["lr"])
    logger.log_metrics({"loss": 1.0}, step=3)
    with pytest.raises(ValueError, match="step=-1"):
        logger.log_metrics({"loss": 1.0}, step=-1)
    with pytest.raises(ValueError, match=r"status='done'\): the status is not accepted"):
        logger.finalize("done")
    logger.finalize("finished")  # Lightning's SLURM requeue status: a success
    records = read_records(workdir / "records.jsonl")
    assert [(r["kind"], r.get("step")) for r in records] == [("setup", None), ("metrics", 3), ("finish", None)]
    assert records[-1]["status"] == "success"


def test_import_tracklink_imports_no_lightning(workdir: Path) -> None:
    code = ("import sys, tracklink, tracklink.integrations; "
            "print(sorted(m for m in ('lightning', 'torch', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.sdk("mlflow", "tensorboard")
def test_the_documentation_examples_run(workdir: Path) -> None:
    """``docs/loops/lightning.md``: the Trainer and Fabric examples run as written, with what the page says."""
    import re

    page = (HERE.parent.parent / "docs" / "loops" / "lightning.md").read_text()
    trainer_example, fabric_example = re.findall(r"```python\n(.*?)```", page, re.S)[:2]
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    for number, code in enumerate((trainer_example, fabric_example)):
        (workdir / f"example{number}.py").write_text(code)
        result = subprocess.run([sys.executable, f"example{number}.py"], capture_output=True, text=True,
                                timeout=240, env=env, cwd=workdir)
        assert result.returncode == 0, result.stderr[-5000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")  # MLflow's default store
    runs = {r.info.run_name: r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    assert sorted(runs) == ["fabric", "sgd-0.1"] and {r.info.status for r in runs.values()} == {"FINISHED"}
    trained = runs["sgd-0.1"]
    assert [s for s, _ in history(client, trained, "loss")] == list(range(12))
    assert [s for s, _ in history(client, trained, "eval_loss")] == [3, 7, 11]
    assert trained.data.params["lr"] == "0.1" and "model/num_parameters" in trained.data.params
    assert [s for s, _ in history(client, runs["fabric"], "loss")] == list(range(20))
    assert glob.glob(str(workdir / "runs" / "sgd-0.1" / "runs" / "*" / "events.out.tfevents.*"))
    assert os.listdir(workdir / "runs" / "sgd-0.1" / "checkpoints")
