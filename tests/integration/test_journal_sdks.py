"""The run journal and ``tracklink sync`` against real SDKs: a real ``mlflow server`` on 127.0.0.1 (see
``mlflow_server.py``), TensorBoard's event files read back with its own reader, and W&B's offline transaction
log (``readers/wandb.py``).

* **Hard kill**: a run logging to MLflow (server) and TensorBoard is killed with SIGKILL at 20 random
  points; after ``tracklink sync`` the server and the event files hold exactly the events the journal holds
  (the events older than the durability point), each once.
* **Outage**: the MLflow server is stopped for longer than the retry budget (MLflow's HTTP retries off, the run
  ends while the server is down) and started again: after ``tracklink sync`` every metric is there, in order,
  once.
* **Offline**: a run recorded with ``TRACKLINK_OFFLINE=1`` and replayed into MLflow, W&B (offline) and
  TensorBoard reads back like the same run logged live.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from mlflow_server import MlflowServer, mlflow_server  # noqa: F401 - the session fixture

import tracklink
from tracklink import cli
from tracklink.followers import reap_all
from tracklink.journal import JournalFile, journal_files
from tracklink.tracker import close_open_trackers

pytestmark = pytest.mark.sdk("mlflow", "tensorboard")

TESTS = Path(__file__).resolve().parent.parent
SECRET = "sk-journal-SECRET-0c41e2"


@pytest.fixture
def experiment(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch, workdir: Path) -> str:  # noqa: F811
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    name = f"journal-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    return name


def mlflow_points(server: MlflowServer, experiment: str, key: str) -> dict[str, list[tuple[int, float]]]:
    """Every run of ``experiment``: its points of ``key`` as (step, value), in the order MLflow returns them."""
    client = server.client()
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    out = {}
    for run in client.search_runs([found.experiment_id], run_view_type=3):
        history = client.get_metric_history(run.info.run_id, key)
        out[run.info.run_id] = [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))]
    return out


def tensorboard_points(log_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return [(e.step, round(e.value, 6)) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def journal_points(directory: Path, key: str) -> list[tuple[int, float]]:
    points = []
    for path in journal_files(directory):
        journal = JournalFile(path, check=True)
        try:
            points += [(e.step, e.data["logs"][key]) for e in journal.events() if e.kind == "log"
                       and key in e.data.get("logs", {})]
        finally:
            journal.close()
    return points


def journal_events(directory: Path) -> int:
    count = 0
    for path in journal_files(directory):
        journal = JournalFile(path, check=True)
        try:
            count += sum(1 for _ in journal.events())
        finally:
            journal.close()
    return count


def identities(directory: Path) -> dict[str, Any]:
    (path,) = journal_files(directory)
    journal = JournalFile(path)
    try:
        return {c.tracker: c.identity for c in journal.cursors()}
    finally:
        journal.close()


# -- hard kill -----------------------------------------------------------------------------------------

KILLED_RUN = textwrap.dedent("""
    import sys, time
    import tracklink
    with tracklink.init(name="killed", config={"lr": 0.1}, report_to=["mlflow", "tensorboard"],
                        dir=sys.argv[1]) as run:
        for step in range(int(sys.argv[2])):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
            if step == 0:
                print("logging", flush=True)
            time.sleep(0.001)
    print("done", flush=True)
""")


@pytest.mark.slow
def test_hard_kill_at_random_points_then_sync_holds_every_durable_event_once(
        mlflow_server: MlflowServer, experiment: str, workdir: Path) -> None:  # noqa: F811
    points = int(os.environ.get("TRACKLINK_TEST_KILL_POINTS", "20"))
    rng = random.Random(20)
    script = workdir / "killed_run.py"
    script.write_text(KILLED_RUN)
    for attempt in range(points):
        directory = workdir / f"run-{attempt}"
        os.environ["MLFLOW_EXPERIMENT_NAME"] = name = f"{experiment}-{attempt}"
        process = subprocess.Popen([sys.executable, str(script), str(directory), "3000"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, cwd=workdir)
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.strip() == "logging", first
        time.sleep(rng.uniform(0.0, 2.5))  # a random point: during the setups, the logging or the end
        process.send_signal(signal.SIGKILL)
        process.wait(60)
        if not journal_files(directory):
            continue
        time.sleep(1.1)  # TensorBoard orders event files by name (<time>.<host>.<pid>...): sync's in a later second
        assert cli.main(["sync", "--quiet", str(directory)]) == 0
        if not journal_events(directory):  # killed before the journal's first commit: nothing was sent, nor is
            assert mlflow_server.client().get_experiment_by_name(name) is None, f"kill {attempt}"
            continue
        durable = [(s, round(v, 6)) for s, v in journal_points(directory, "loss")]
        assert [s for s, _ in durable] == list(range(len(durable))), "the journal is a prefix of the run"
        runs = mlflow_points(mlflow_server, name, "loss")
        held = [(s, round(v, 6)) for series in runs.values() for s, v in series]
        assert sorted(held) == durable, f"kill {attempt}: the server holds each durable event once"
        ids = identities(directory)
        assert tensorboard_points(ids["tensorboard"]["log_dir"], "train/loss") == durable, f"kill {attempt}"
        status = mlflow_server.client().get_run(ids["mlflow"]["run_id"]).info.status
        assert status in ("KILLED", "FINISHED"), status
        # a second sync finds nothing to send
        assert cli.main(["sync", "--quiet", str(directory)]) == 0
        assert sorted(s for series in mlflow_points(mlflow_server, name, "loss").values() for s in series) == \
            sorted(s for series in runs.values() for s in series)


def test_points_a_late_request_already_stored_are_kept_once_when_sync_sends_them_again(
        mlflow_server: MlflowServer, experiment: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The race the hard kill can hit, made certain: the process dies while its request with the live points is
    still in the server's hands, and ``tracklink sync`` reads what the run holds before that request is stored.
    It then sends those points again; they carry the times the journal kept, so MLflow (one point per key, step,
    timestamp and value) keeps each once. The journal's cursor is moved back to the begin event, and sync's read
    of the run's latest metrics is emptied, to stand for the request not stored yet."""
    from tracklink.integrations.mlflow import MLflowCallback

    directory = workdir / "run"
    with tracklink.init(name="again", report_to=["mlflow"], dir=directory) as run:
        for step in range(300):
            run.log({"loss": 1.0 / (step + 1), "acc": step / 300}, step=step)
            if step == 150:
                run.log({"acc": 0.5}, step=step)  # one key twice at a step: its own millisecond, live and replayed
    (path,) = journal_files(directory)
    journal = JournalFile(path)
    begin = journal.first("begin")
    assert begin is not None
    with journal._db:
        journal._db.execute("UPDATE cursors SET position = ?, closed = 0 WHERE tracker = 'mlflow'", (begin.id,))
    journal.close()
    live = {key: mlflow_points(mlflow_server, experiment, key) for key in ("loss", "acc")}
    (run_id,) = live["loss"]
    assert len(live["acc"][run_id]) == 301

    attach = MLflowCallback._attach

    def attach_before_the_late_request(self: MLflowCallback, *args: Any, **kwargs: Any) -> None:
        attach(self, *args, **kwargs)
        self._floors.clear()

    monkeypatch.setattr(MLflowCallback, "_attach", attach_before_the_late_request)
    assert cli.main(["sync", "--quiet", str(directory)]) == 0
    for key in ("loss", "acc"):
        assert mlflow_points(mlflow_server, experiment, key) == live[key], f"{key}: each point once, in one run"


# -- outage --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_outage_past_the_retry_budget_then_sync_delivers_every_metric_once_in_order(
        mlflow_server: MlflowServer, experiment: str, workdir: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv("TRACKLINK_DRAIN_TIMEOUT", "60")
    directory = workdir / "run"
    try:
        with tracklink.init(name="outage", report_to=["mlflow"], dir=directory) as run:
            for step in range(200):
                run.log({"loss": 1.0 / (step + 1), "acc": step / 200}, step=step)
                if step == 59:
                    assert run.wait(60)  # the run exists, the first 60 steps are on the server
                    mlflow_server.stop()
        assert any("kept in the run journal" in r.getMessage() and "'mlflow'" in r.getMessage()
                   and f"tracklink sync {directory}" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        mlflow_server.start()
    (before,) = mlflow_points(mlflow_server, experiment, "loss").values()
    assert len(before) < 200, "the outage held metrics back"
    assert cli.main(["sync", "--quiet", str(directory)]) == 0
    runs = mlflow_points(mlflow_server, experiment, "loss")
    assert len(runs) == 1, "sync re-attached to the run"
    (loss,) = runs.values()
    assert loss == [(s, 1.0 / (s + 1)) for s in range(200)], "every metric, in order, once"
    (acc,) = mlflow_points(mlflow_server, experiment, "acc").values()
    assert acc == [(s, s / 200) for s in range(200)]
    run_id = identities(directory)["mlflow"]["run_id"]
    assert mlflow_server.client().get_run(run_id).info.status == "FINISHED"


# -- offline -------------------------------------------------------------------------------------------


def _log(directory: Path, project: str) -> None:
    config = {"lr": 0.01, "api_key": SECRET, "layers": 3}
    with tracklink.init(project=project, name="same-run", config=config, report_to=["mlflow", "tensorboard", "wandb"],
                        dir=directory) as run:
        for step in range(40):
            run.log({"loss": 1.0 / (step + 1), "acc": step / 40}, step=step)
        run.log({"eval_loss": 0.25, "eval_acc": 0.9}, step=40)
        run.log({"note": "offline then synced"}, step=40)


@pytest.mark.sdk("wandb")
def test_offline_run_replayed_into_mlflow_wandb_and_tensorboard_reads_back_like_a_live_run(
        mlflow_server: MlflowServer, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from readers.wandb import read_runs

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    client = mlflow_server.client()

    def teardown() -> None:
        if "wandb" in sys.modules:
            sys.modules["wandb"].teardown()

    results = {}
    for mode in ("live", "offline"):
        teardown()
        root = workdir / f"wandb-{mode}"
        for var, sub in (("WANDB_DIR", ""), ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts"),
                         ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
            (root / sub).mkdir(parents=True, exist_ok=True)
            monkeypatch.setenv(var, str(root / sub))
        project = f"offline-{mode}-{uuid.uuid4().hex[:8]}"
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", project)
        directory = workdir / mode
        if mode == "offline":
            monkeypatch.setenv("TRACKLINK_OFFLINE", "1")
            _log(directory, project)
            monkeypatch.delenv("TRACKLINK_OFFLINE")
            experiment = client.get_experiment_by_name(project)
            assert experiment is None or not client.search_runs([experiment.experiment_id]), "nothing was sent"
            assert not list(root.rglob("*.wandb")) and not (directory / "runs").exists()
            assert cli.main(["sync", "--quiet", str(directory)]) == 0
        else:
            _log(directory, project)
        teardown()
        experiment = client.get_experiment_by_name(project)
        (mlflow_run,) = client.search_runs([experiment.experiment_id])
        metrics = {key: sorted((m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, key))
                   for key in ("loss", "acc", "eval_loss", "eval_acc")}
        ids = identities(directory)
        tensorboard = {tag: tensorboard_points(ids["tensorboard"]["log_dir"], tag)
                       for tag in ("train/loss", "train/acc", "eval/loss", "eval/acc")}
        (wandb_run,) = read_runs(root)
        results[mode] = {
            "mlflow": (mlflow_run.info.status, mlflow_run.info.run_name, mlflow_run.data.params, metrics),
            "tensorboard": tensorboard,
            "wandb": (wandb_run.name, wandb_run.project, wandb_run.config, wandb_run.series("train/loss"),
                      wandb_run.series("eval/loss"), wandb_run.exit_code),
        }
        for path in (directory / "tracklink-journal").iterdir():
            assert SECRET.encode() not in path.read_bytes()
    live, offline = results["live"], results["offline"]
    assert live["mlflow"] == offline["mlflow"]
    assert live["tensorboard"] == offline["tensorboard"]
    live_wandb, offline_wandb = live["wandb"], offline["wandb"]
    assert live_wandb[0] == offline_wandb[0] and live_wandb[2:] == offline_wandb[2:], (live_wandb, offline_wandb)
    assert live["mlflow"][3]["loss"] == [(s, 1.0 / (s + 1)) for s in range(40)]
    assert live["mlflow"][2]["api_key"] == "<redacted>"
    json.dumps(results, default=str)  # plain data


# -- the trainer ---------------------------------------------------------------------------------------


def test_a_trainer_run_recorded_offline_and_synced_or_followed_from_processes_reads_back_like_a_live_one(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal belongs to the run, whichever loop drives it: tracklink's Trainer (evaluations, checkpoints,
    the final summary, an evaluate() after train()) recorded offline, then synced into TensorBoard and MLflow
    (local SQLite store); and the same delivered live by trackers in processes of their own
    (``TRACKLINK_DELIVERY=process``), which follow the journal and its continuation."""
    from helpers import make_trainer

    results = {}
    for mode in ("live", "offline", "process"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / f'{mode}-mlflow.db'}")
        if mode == "offline":
            monkeypatch.setenv("TRACKLINK_OFFLINE", "1")
        if mode == "process":
            monkeypatch.setenv("TRACKLINK_DELIVERY", "process")
        trainer = make_trainer(workdir / mode, ["tensorboard", "mlflow"], run_name="trained")
        trainer.train()
        if mode == "process":
            assert trainer.callback_handler.trackers == {} and set(trainer.callback_handler.followed) == {
                "tensorboard", "mlflow"}, "no tracker was built in the training process"
        trainer.evaluate()
        monkeypatch.delenv("TRACKLINK_OFFLINE", raising=False)
        monkeypatch.delenv("TRACKLINK_DELIVERY", raising=False)
        # as at interpreter exit: the run the evaluation re-opened is closed, the journal too
        assert trainer.callback_handler.wait_for_trackers(60)
        close_open_trackers()
        trainer.callback_handler.journal.close()
        reap_all(60)
        if mode == "process":
            for path in journal_files(workdir / mode):
                journal = JournalFile(path)
                try:
                    assert {(c.tracker, c.pending, c.closed) for c in journal.cursors()} == {
                        ("tensorboard", 0, True), ("mlflow", 0, True)}, path
                finally:
                    journal.close()
        if mode == "offline":
            assert not (workdir / mode / "runs").exists(), "nothing written by a tracker during training"
            assert cli.main(["sync", "--quiet", str(workdir / mode)]) == 0
            assert len(journal_files(workdir / mode)) == 2, "the evaluation after train() has its continuation"
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{workdir / f'{mode}-mlflow.db'}")
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        metrics = {key: sorted((m.step, round(m.value, 6)) for m in client.get_metric_history(run.info.run_id, key))
                   for key in ("loss", "eval_loss", "train_loss", "learning_rate")}
        (log_dir,) = {p.parent for p in (workdir / mode).rglob("events.out.tfevents.*")}
        board = {tag: tensorboard_points(log_dir, tag) for tag in ("train/loss", "eval/loss", "train/learning_rate")}
        params = {k: v for k, v in run.data.params.items() if k not in ("output_dir", "logging_dir")}
        results[mode] = (run.info.status, run.info.run_name, params, metrics, board)
    assert results["live"] == results["offline"] == results["process"]
    assert results["live"][3]["eval_loss"] and len(results["live"][3]["loss"]) == 4


def test_a_resumed_training_recorded_offline_is_synced_into_the_same_runs(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resume re-attach with the journal: a training stopped after its checkpoint at step 10 and resumed from it,
    both sessions recorded offline, reads back after ``tracklink sync`` like the same two sessions logged live:
    one MLflow run, one TensorBoard directory, every step once in TensorBoard. With trackers in processes of
    their own, the resumed session's followers re-attach to the runs the first session's followers made: through
    the journal, or through the identities in the checkpoint when the journal is gone; and a resume with
    threads re-attaches to them through the checkpoint."""
    import shutil

    from mlflow.tracking import MlflowClient

    from helpers import make_trainer

    results = {}
    modes = ("live", "offline", "process", "process, resumed with threads", "process, the journal deleted")
    for mode in modes:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / f'{mode}-mlflow.db'}")
        if mode == "offline":
            monkeypatch.setenv("TRACKLINK_OFFLINE", "1")
        if mode.startswith("process"):
            monkeypatch.setenv("TRACKLINK_DELIVERY", "process")
        make_trainer(workdir / mode, ["tensorboard", "mlflow"], run_name="resumed", max_steps=10).train()
        if mode.startswith("process"):
            saved = json.loads((workdir / mode / "checkpoint-10" / "trainer_state.json").read_text())
            identities = {key: entry["attributes"]["run"] for key, entry in saved["stateful_callbacks"].items()
                          if key in ("MLflowCallback", "TensorBoardCallback")}
            assert len(identities) == 2 and all(identities.values()), identities
        if mode == "process, resumed with threads":
            monkeypatch.delenv("TRACKLINK_DELIVERY")
        if mode == "process, the journal deleted":
            shutil.rmtree(workdir / mode / "tracklink-journal")
        make_trainer(workdir / mode, ["tensorboard", "mlflow"], run_name="resumed").train(resume_from_checkpoint=True)
        monkeypatch.delenv("TRACKLINK_OFFLINE", raising=False)
        monkeypatch.delenv("TRACKLINK_DELIVERY", raising=False)
        if mode == "offline":
            assert len(journal_files(workdir / mode)) == 2
            assert cli.main(["sync", "--quiet", str(workdir / mode)]) == 0
        client = MlflowClient(tracking_uri=f"sqlite:///{workdir / f'{mode}-mlflow.db'}")
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        metrics = {key: sorted((m.step, round(m.value, 6)) for m in client.get_metric_history(run.info.run_id, key))
                   for key in ("loss", "eval_loss")}
        (log_dir,) = {p.parent for p in (workdir / mode).rglob("events.out.tfevents.*")}
        board = {tag: tensorboard_points(log_dir, tag) for tag in ("train/loss", "eval/loss")}
        results[mode] = (run.info.status, run.info.run_name, metrics, board)
    for mode in modes:
        assert results[mode] == results["live"], mode
    assert [step for step, _ in results["live"][3]["train/loss"]] == [5, 10, 15, 20]


# -- where a killed process left a tracker's cursor ------------------------------------------------------


def _cut(directory: Path, left: str) -> Path:
    """Put the run's only journal back in the state a kill would leave: its tracker's cursor at ``left``, the
    run not closed, the journal not closed. Returns the journal's path."""
    import sqlite3

    (path,) = journal_files(directory)
    journal = JournalFile(path)
    events = list(journal.events())
    journal.close()
    position = {"all-accepted": len(events), "end-pending": len(events) - 1,
                "mid-step": next(e.id for e in events if e.kind == "log" and e.step == 17 and "acc" in e.data["logs"]) - 1,
                "after-begin": 1}[left]
    db = sqlite3.connect(path)
    db.execute("UPDATE cursors SET position = ?, closed = 0", (position,))
    db.execute("UPDATE meta SET value = 'false' WHERE key = 'closed'")
    db.commit()
    db.close()
    return path


@pytest.mark.parametrize("left", ["all-accepted", "end-pending", "mid-step", "after-begin"])
def test_sync_after_a_kill_keeps_each_tensorboard_point_once_wherever_the_cursor_stopped(
        workdir: Path, left: str) -> None:
    """A process killed after its tracker accepted some events: its cursor is anywhere (everything accepted but
    the run not closed; only the end pending; in the middle of a step's events; right after the setup). After
    ``tracklink sync`` TensorBoard's reader sees every point once, and the run is closed."""
    directory = workdir / "run"
    with tracklink.init(name="cut", report_to=["tensorboard"], dir=directory) as run:
        for step in range(30):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
            run.log({"acc": step / 30}, step=step)  # two events per step
    path = _cut(directory, left)
    journal = JournalFile(path)
    log_dir = journal.cursors()[0].identity["log_dir"]
    journal.close()
    # TensorBoard reads a directory's event files in name order: <time>.<host>.<pid>.<n>, where a process's tenth
    # writer (n=10) sorts before its ninth; a later second keeps the synced file after the live one
    time.sleep(1.1)
    assert cli.main(["sync", "--quiet", str(directory)]) == 0
    expected = [(s, round(1.0 / (s + 1), 6)) for s in range(30)]
    assert tensorboard_points(log_dir, "train/loss") == expected
    assert tensorboard_points(log_dir, "train/acc") == [(s, round(s / 30, 6)) for s in range(30)]
    journal = JournalFile(path)
    (cursor,) = journal.cursors()
    journal.close()
    assert cursor.closed and cursor.pending == 0


@pytest.mark.sdk("dvclive")
@pytest.mark.parametrize("left", ["end-pending", "mid-step", "after-begin"])
def test_sync_after_a_kill_keeps_each_dvclive_row_once_wherever_the_cursor_stopped(workdir: Path, left: str) -> None:
    """DVCLive's guarantee (docs/journal.md): exactly once. Its rows after the step before the first pending one
    are dropped on re-attach and that step is sent again whole."""
    from readers.dvclive import series

    directory = workdir / "run"
    with tracklink.init(name="cut", report_to=["dvclive"], dir=directory) as run:
        for step in range(30):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
            run.log({"acc": step / 30}, step=step)
    path = _cut(directory, left)
    live = workdir / "dvclive"
    names = {p.stem for p in (live / "plots" / "metrics").rglob("*.tsv")}
    prefix = "train/" if "loss" not in names else ""
    assert cli.main(["sync", "--quiet", str(directory)]) == 0
    assert series(live, f"{prefix}loss") == [(s, pytest.approx(1.0 / (s + 1))) for s in range(30)]
    assert series(live, f"{prefix}acc") == [(s, pytest.approx(s / 30)) for s in range(30)]
    journal = JournalFile(path)
    (cursor,) = journal.cursors()
    journal.close()
    assert cursor.closed and cursor.pending == 0
