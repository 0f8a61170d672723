"""Trackio: train through tracklink's Trainer with ``report_to=["trackio"]`` and read back what the real SDK
wrote to its local SQLite database (``TRACKIO_DIR`` is the session's temp dir, see conftest; every test uses
its own project, so its own database file), and what Trackio's own dashboard serves on 127.0.0.1.

Handled and tested: a failed, interrupted or SIGTERM'd training (an alert on the run, Trackio has no run
status); resume from a checkpoint (same run, no step logged twice); a plain run with
``tracklink.init(project=...)``; config keys Trackio reserves (``_x``); secrets; readiness with
``TRACKIO_SPACE_ID``/``TRACKIO_SERVER_URL``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import tracklink
from helpers import (
    SECRET_ENV,
    SECRET_ENV_VAR,
    SECRETS,
    assert_series,
    files_containing,
    make_trainer,
    raise_at,
    sigterm_during_training,
    stop_at,
)
from readers import trackio as reader

pytestmark = pytest.mark.sdk("trackio")

TESTS = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> str:
    name = f"tl-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("TRACKIO_PROJECT", name)
    return name


def expected(trainer, key: str) -> list[tuple[int, float]]:
    return [(h["step"], h[key]) for h in trainer.state.log_history if key in h]


def tracker(trainer):
    return trainer.callback_handler.trackers["trackio"]


def test_metrics_config_and_identity_read_back(project: str, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", ["trackio"], run_name="my-run")
    trainer.train()
    assert trainer.callback_handler.tracker_failures() == {}
    ((run_id, name),) = reader.runs(project)
    assert name == "my-run"
    assert tracker(trainer).identity == {"project": project, "name": "my-run", "run_id": run_id}
    assert_series(reader.series(project, run_id, "train/loss"), expected(trainer, "loss"))
    assert_series(reader.series(project, run_id, "eval/loss"), expected(trainer, "eval_loss"))
    assert [s for s, _ in reader.series(project, run_id, "train/learning_rate")] == [5, 10, 15, 20]
    assert [s for s, _ in reader.series(project, run_id, "train/train_runtime")] == [20]
    assert reader.series(project, run_id, "train/train_loss")[0][1] == pytest.approx(
        trainer.state.log_history[-1]["train_loss"])
    config = reader.config(project, run_id)
    assert config["learning_rate"] == 0.1 and config["max_steps"] == 20
    assert config["a"] == 0.0  # the model config, merged under the arguments
    assert reader.alerts(project) == []  # a successful run gets no alert


def test_default_project_is_huggingface(workdir: Path, tmp_path: Path) -> None:
    name = f"default-{uuid.uuid4().hex[:8]}"
    trainer = make_trainer(tmp_path / "out", ["trackio"], run_name=name, max_steps=5, eval_strategy="no",
                           save_strategy="no")
    trainer.train()
    assert (name in [n for _, n in reader.runs("huggingface")])
    assert tracker(trainer).identity["project"] == "huggingface"


def test_failed_training_gets_an_error_alert(project: str, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", ["trackio"], callbacks=[raise_at(7, RuntimeError("boom"))])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    ((run_id, _),) = reader.runs(project)
    assert [s for s, _ in reader.series(project, run_id, "train/loss")] == [5]
    (alert,) = reader.alerts(project)
    assert alert["title"] == "training failed" and alert["level"] == "error"
    assert alert["text"] == "RuntimeError: boom" and alert["step"] == 7 and alert["run_id"] == run_id


def test_interrupted_training_gets_a_warning_alert(project: str, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", ["trackio"], callbacks=[raise_at(7, KeyboardInterrupt())])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    (alert,) = reader.alerts(project)
    assert alert["title"] == "training killed" and alert["level"] == "warn"


def test_resume_reattaches_without_logging_a_step_twice(project: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = make_trainer(out, ["trackio"], run_name="resumable", callbacks=[stop_at(15)])
    first.train()
    ((run_id, _),) = reader.runs(project)
    assert [s for s, _ in reader.series(project, run_id, "train/loss")] == [5, 10, 15]
    saved = tracklink.TrainerState.load_from_json(str(out / "checkpoint-10" / "trainer_state.json"))
    assert saved.stateful_callbacks["TrackioCallback"]["attributes"]["run"]["run_id"] == run_id

    resumed = make_trainer(out, ["trackio"], run_name="resumable")
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    assert reader.runs(project) == [(run_id, "resumable")], "the same run, no second one"
    steps = [s for s, _ in reader.series(project, run_id, "train/loss")]
    assert steps == [5, 10, 15, 20], steps  # step 15, which the run already held, is not logged again
    assert resumed.callback_handler.tracker_failures() == {}


def test_a_reused_run_name_starts_a_new_run(project: str, tmp_path: Path) -> None:
    for i in range(2):
        make_trainer(tmp_path / f"out{i}", ["trackio"], run_name="same", max_steps=5, eval_strategy="no",
                     save_strategy="no").train()
    runs = reader.runs(project)
    assert [n for _, n in runs] == ["same", "same"] and runs[0][0] != runs[1][0]
    assert all(len(reader.series(project, run_id, "train/loss")) == 1 for run_id, _ in runs)


def test_plain_run_with_project_and_reserved_config_keys(workdir: Path) -> None:
    name = f"plain-{uuid.uuid4().hex[:8]}"
    with tracklink.init(project=name, name="loop", config={"lr": 0.01, "_private": 1, "nested": {"a": 2}},
                        report_to=["trackio"]) as run:
        for step in range(1, 4):
            run.log({"loss": 1.0 / step}, step=step)
    ((run_id, run_name),) = reader.runs(name)
    assert run_name == "loop"
    assert reader.series(name, run_id, "train/loss") == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    config = reader.config(name, run_id)
    assert config["lr"] == 0.01 and config["private"] == 1 and config["nested"] == {"a": 2}


def test_no_secret_reaches_the_database(project: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    trainer = make_trainer(tmp_path / "out", ["trackio"], secrets=True)
    trainer.train()
    assert files_containing(reader.database(project).parent, SECRETS) == []
    ((run_id, _),) = reader.runs(project)
    config = reader.config(project, run_id)
    assert config["hub_token"] == "<redacted>" and config["learning_rate"] == 0.1


def test_readiness() -> None:
    from tracklink.integrations import TrackioCallback

    assert TrackioCallback.ready({}) is None  # the local database needs nothing
    assert "Hugging Face token" in TrackioCallback.ready({"TRACKIO_SPACE_ID": "me/space", "HOME": "/nonexistent"})
    assert TrackioCallback.ready({"TRACKIO_SPACE_ID": "me/space", "HF_TOKEN": "hf_x" * 5}) is None
    assert "TRACKIO_WRITE_TOKEN" in TrackioCallback.ready({"TRACKIO_SERVER_URL": "http://127.0.0.1:1"})
    assert TrackioCallback.ready({"TRACKIO_SERVER_URL": "http://127.0.0.1:1", "TRACKIO_WRITE_TOKEN": "t" * 10}) is None
    with pytest.raises(tracklink.ReportToError, match="TRACKIO_SERVER_URL='not a url'"):
        tracklink.resolve_report_to(["trackio"], env={"TRACKIO_SERVER_URL": "not a url"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> object:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["data"]


@pytest.mark.slow
def test_dashboard_serves_the_run_on_loopback(project: str, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", ["trackio"], run_name="shown")
    trainer.train()
    port = _free_port()
    code = (f"import trackio; trackio.show(project={project!r}, open_browser=False, block_thread=True, "
            f"host='127.0.0.1', server_port={port})")
    server = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/", timeout=2) as response:
                    page = response.read().decode()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "the Trackio dashboard did not start"
                time.sleep(0.3)
        assert "Trackio" in page
        runs = _post(base + "/api/get_runs_for_project", {"kwargs": {"project": project}})
        assert "shown" in json.dumps(runs)
        logs = _post(base + "/api/get_logs", {"kwargs": {"project": project, "run": "shown"}})
        points = [(row["step"], row["train/loss"]) for row in logs if "train/loss" in row]
        assert_series(points, expected(trainer, "loss"))
    finally:
        server.terminate()
        server.wait(10)




def test_sigterm_leaves_an_alert_and_every_metric(project: str, tmp_path: Path) -> None:
    result = sigterm_during_training(tmp_path, ["trackio"], timeout=120, run_name="slow")
    logged = result.logged
    assert result.returncode == 143, result.output[-3000:]
    ((run_id, _),) = reader.runs(project)
    (alert,) = reader.alerts(project)
    assert alert["title"] == "training killed" and alert["level"] == "warn"
    steps = [s for s, _ in reader.series(project, run_id, "train/loss")]
    assert set(logged) <= set(steps) and steps == list(range(2, steps[-1] + 1, 2)), (steps, logged)
