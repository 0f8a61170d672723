"""SwanLab: train through tracklink's Trainer with ``report_to=["swanlab"]`` in SwanLab's offline mode
(``SWANLAB_MODE=offline`` in conftest; each test writes to its own ``SWANLAB_LOG_DIR``) and read back the
record file and config the real SDK wrote (``readers/swanlab.py``).

Handled and tested: ``SWANLAB_PROJECT`` as a plain name (SwanLab 0.10's own settings would refuse it); the
final state of a failed (``crashed``, with the error) and an interrupted or SIGTERM'd (``aborted``)
training; resume from a checkpoint (the same experiment id); ``SWANLAB_RUN_ID``; ``SWANLAB_LOG_MODEL`` (a
warning, as in transformers); a run the user opened; the mode's case; readiness, ``SWANLAB_MODE=disabled``
and bad values; secrets.
"""

from __future__ import annotations

import logging
import os
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
from readers import swanlab as reader

pytestmark = pytest.mark.sdk("swanlab")

TESTS = Path(__file__).resolve().parent.parent


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path) -> Path:
    path = tmp_path / "swanlog"
    monkeypatch.setenv("SWANLAB_LOG_DIR", str(path))
    return path


def expected(trainer, key: str) -> list[tuple[int, float]]:
    return [(h["step"], h[key]) for h in trainer.state.log_history if key in h]


def only_run(log_dir: Path) -> Path:
    (run_dir,) = reader.run_dirs(log_dir)
    return run_dir


def test_metrics_config_project_and_state_read_back(log_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWANLAB_PROJECT", "my-project")  # a plain name, as transformers documents it
    trainer = make_trainer(tmp_path / "out", ["swanlab"], run_name="my-run")
    trainer.train()
    assert trainer.callback_handler.tracker_failures() == {}
    run_dir = only_run(log_dir)
    start = reader.start(run_dir)
    assert (start["project"], start["name"]) == ("my-project", "my-run")
    identity = trainer.callback_handler.trackers["swanlab"].identity
    assert identity == {"run_id": start["id"], "project": "my-project"}
    assert_series(reader.scalars(run_dir, "train/loss"), expected(trainer, "loss"))
    assert_series(reader.scalars(run_dir, "eval/loss"), expected(trainer, "eval_loss"))
    assert [s for s, _ in reader.scalars(run_dir, "train/global_step")] == [5, 10, 15, 20]  # one point per step
    for key in ("train_runtime", "train_loss", "train_samples_per_second"):  # transformers' names
        assert [s for s, _ in reader.scalars(run_dir, f"single_value/{key}")] == [20], key
    config = reader.config(run_dir)
    assert config["learning_rate"] == 0.1 and config["max_steps"] == 20 and config["a"] == 0.0
    assert reader.finish(run_dir)["state"] == "RUN_STATE_FINISHED"
    assert os.environ["SWANLAB_PROJECT"] == "my-project", "the variable is put back"


def test_default_project_is_the_working_directory(log_dir: Path, workdir: Path, tmp_path: Path) -> None:
    make_trainer(tmp_path / "out", ["swanlab"], max_steps=5, eval_strategy="no", save_strategy="no").train()
    assert reader.start(only_run(log_dir))["project"] == workdir.name


def test_failed_training_is_crashed_with_its_error(log_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", ["swanlab"], callbacks=[raise_at(7, RuntimeError("boom"))])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    run_dir = only_run(log_dir)
    assert [s for s, _ in reader.scalars(run_dir, "train/loss")] == [5]
    assert reader.finish(run_dir) == {"state": "RUN_STATE_CRASHED", "error": "RuntimeError: boom",
                                      "finishedAt": reader.finish(run_dir)["finishedAt"]}


def test_interrupted_training_is_aborted(log_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", ["swanlab"], callbacks=[raise_at(7, KeyboardInterrupt())])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert reader.finish(only_run(log_dir))["state"] == "RUN_STATE_ABORTED"


def test_resume_continues_the_same_experiment(log_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_trainer(out, ["swanlab"], run_name="resumable", callbacks=[stop_at(15)]).train()
    first = only_run(log_dir)
    run_id = reader.start(first)["id"]
    saved = tracklink.TrainerState.load_from_json(str(out / "checkpoint-10" / "trainer_state.json"))
    assert saved.stateful_callbacks["SwanLabCallback"]["attributes"]["run"]["run_id"] == run_id

    resumed = make_trainer(out, ["swanlab"], run_name="resumable")
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    assert resumed.callback_handler.tracker_failures() == {}
    _, second = reader.run_dirs(log_dir)  # offline mode writes the resumed part beside the first; sync merges
    start = reader.start(second)
    assert start["id"] == run_id and start["resume"] == "RESUME_MODE_ALLOW"
    assert [s for s, _ in reader.scalars(second, "train/loss")] == [15, 20]


def test_swanlab_run_id_variable(log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWANLAB_RUN_ID", "abcdefgh")
    monkeypatch.setenv("SWANLAB_RESUME", "must")
    make_trainer(tmp_path / "out", ["swanlab"], max_steps=5, eval_strategy="no", save_strategy="no").train()
    start = reader.start(only_run(log_dir))
    assert start["id"] == "abcdefgh" and start["resume"] == "RESUME_MODE_MUST"


def test_log_model_warns_as_in_transformers(log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SWANLAB_LOG_MODEL", "end")
    caplog.set_level(logging.WARNING, logger="tracklink")
    trainer = make_trainer(tmp_path / "out", ["swanlab"], max_steps=10)
    trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "SWANLAB_LOG_MODEL" in r.getMessage()]
    assert len(warnings) == 1 and "cannot save models yet" in warnings[0]
    assert trainer.callback_handler.tracker_failures() == {}
    run_dir = only_run(log_dir)
    assert not [p for p in run_dir.rglob("*") if p.suffix in (".safetensors", ".bin")]  # nothing uploaded


def test_text_values_become_swanlab_text(log_dir: Path, tmp_path: Path) -> None:
    with tracklink.init(name="texts", report_to=["swanlab"], dir=tmp_path / "run") as run:
        run.log({"note": "hello swanlab", "value": 3.5}, step=1)
    run_dir = only_run(log_dir)
    columns = reader.columns(run_dir)
    assert columns["train/note"] == "COLUMN_TYPE_TEXT"
    assert columns["train/value"] == "COLUMN_TYPE_SCALAR"
    assert reader.scalars(run_dir, "train/value") == [(1, 3.5)]


def test_a_run_the_user_opened_is_used_and_left_open(log_dir: Path, tmp_path: Path) -> None:
    import swanlab

    run = swanlab.init(project="mine", name="user-run")
    try:
        trainer = make_trainer(tmp_path / "out", ["swanlab"], max_steps=5, eval_strategy="no", save_strategy="no")
        trainer.train()
        assert swanlab.has_run() and swanlab.get_run() is run, "tracklink does not finish the user's run"
        assert trainer.callback_handler.tracker_failures() == {}
    finally:
        run.finish()
    run_dir = only_run(log_dir)
    assert reader.start(run_dir)["name"] == "user-run"
    assert [s for s, _ in reader.scalars(run_dir, "train/loss")] == [5]
    assert reader.config(run_dir)["learning_rate"] == 0.1


def test_mode_case_is_forgiven(log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWANLAB_MODE", "Offline")  # SwanLab itself only takes lower case
    trainer = make_trainer(tmp_path / "out", ["swanlab"], max_steps=5, eval_strategy="no", save_strategy="no")
    trainer.train()
    assert trainer.callback_handler.tracker_failures() == {}
    assert reader.finish(only_run(log_dir))["state"] == "RUN_STATE_FINISHED"


def test_readiness_disabling_and_bad_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    from tracklink.integrations import SwanLabCallback

    home = {"HOME": str(tmp_path)}
    assert SwanLabCallback.ready({**home, "SWANLAB_MODE": "offline"}) is None
    assert SwanLabCallback.ready({**home, "SWANLAB_MODE": "local"}) is None
    assert "no SwanLab API key" in SwanLabCallback.ready(home)  # online by default, never a login prompt
    assert "no SwanLab API key" in SwanLabCallback.ready({**home, "SWANLAB_MODE": "cloud"})
    assert SwanLabCallback.ready({**home, "SWANLAB_API_KEY": "k" * 21}) is None
    (tmp_path / ".swanlab").mkdir()
    (tmp_path / ".swanlab" / ".netrc").write_text("machine https://api.swanlab.cn login x password y\n")
    assert SwanLabCallback.ready(home) is None  # `swanlab login` wrote the key

    resolution = tracklink.resolve_report_to("all", env={"SWANLAB_MODE": "disabled"})
    assert resolution.skipped["swanlab"] == "disabled by SWANLAB_MODE=disabled"
    assert "swanlab" in tracklink.resolve_report_to("all", env={"SWANLAB_MODE": "offline"}).names
    with pytest.raises(tracklink.ReportToError, match="SWANLAB_MODE='sometimes' is not accepted"):
        tracklink.resolve_report_to(["swanlab"], env={"SWANLAB_MODE": "sometimes"})
    with pytest.raises(tracklink.ReportToError, match="SWANLAB_RESUME='later' is not accepted"):
        tracklink.resolve_report_to(["swanlab"], env={"SWANLAB_RESUME": "later"})

    monkeypatch.setenv("SWANLAB_MODE", "disabled")  # named explicitly: the switch wins, training runs without it
    trainer = make_trainer(tmp_path / "out", ["swanlab"], max_steps=2, eval_strategy="no", save_strategy="no")
    assert "swanlab" not in trainer.callback_handler.trackers
    trainer.train()


def test_no_secret_in_the_run_files(log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    trainer = make_trainer(tmp_path / "out", ["swanlab"], secrets=True,
                           callbacks=[raise_at(12, RuntimeError(f"failed with {SECRET_ENV}"))])
    with pytest.raises(RuntimeError):
        trainer.train()
    run_dir = only_run(log_dir)
    assert files_containing(log_dir, SECRETS) == []
    config = reader.config(run_dir)
    assert config["hub_token"] == "<redacted>" and config["learning_rate"] == 0.1
    assert reader.finish(run_dir)["error"] == "RuntimeError: failed with <redacted>"




def test_sigterm_aborts_the_experiment_with_every_metric(log_dir: Path, tmp_path: Path) -> None:
    """SwanLab hooks the process (exit handler, excepthook, console): tracklink's SIGTERM handling still
    ends the experiment ``aborted``, once, with every metric logged before the signal."""
    result = sigterm_during_training(tmp_path, ["swanlab"], timeout=120)
    logged = result.logged
    assert result.returncode == 143, result.output[-3000:]
    run_dir = only_run(log_dir)
    assert reader.finish(run_dir)["state"] == "RUN_STATE_ABORTED"
    steps = [s for s, _ in reader.scalars(run_dir, "train/loss")]
    assert set(logged) <= set(steps) and steps == list(range(2, steps[-1] + 1, 2)), (steps, logged)
