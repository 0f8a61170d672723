"""Comet: train through tracklink's Trainer with the real SDK offline (COMET_START_ONLINE=0), then open
the zip archives it wrote in COMET_OFFLINE_DIRECTORY (tests/readers/comet.py). Each ``end()`` costs about
1 s, so the tests start few experiments.

Bad inputs handled (and tested here):
* ``COMET_MODE`` other than get_or_create/create/get (deprecated ONLINE/OFFLINE/DISABLED) -> error at
  argument validation and in ``CometCallback()``; ``COMET_MODE=get`` without ``COMET_EXPERIMENT_KEY``;
* ``COMET_LOG_ASSETS`` other than TRUE/1/FALSE/0 -> the same;
* ``COMET_MODE=DISABLED`` -> the tracker is skipped; ``OFFLINE`` -> works offline with a FutureWarning;
* no API key and not offline -> not ready (``report_to="all"`` skips it);
* a failing SDK call (``log_metrics`` raising) -> training finishes, the failure is reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import (
    SECRET_ENV,
    SECRET_ENV_VAR,
    SECRETS,
    assert_series,
    files_containing,
    make_trainer,
    only_one,
    raise_at,
    stop_at,
)
from readers.comet import CometArchive, extract_all, read_archives

pytestmark = pytest.mark.sdk("comet_ml")


@pytest.fixture
def comet_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "comet"
    root.mkdir()
    monkeypatch.setenv("COMET_OFFLINE_DIRECTORY", str(root))
    for var in ("COMET_MODE", "COMET_LOG_ASSETS", "COMET_PROJECT_NAME", "COMET_EXPERIMENT_KEY",
                # the plugin must keep the SDK from probing the network without the test's switches
                "COMET_AUTO_LOG_ENV_DETAILS", "COMET_AUTO_LOG_ENV_HOST", "COMET_AUTO_LOG_CO2"):
        monkeypatch.delenv(var, raising=False)
    yield root


def _only_archive(root: Path) -> CometArchive:
    return only_one(read_archives(root), lambda archive: archive.path)


def test_metrics_params_text_and_assets_read_back(tmp_path: Path, comet_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMET_PROJECT_NAME", "tracklink-tests")
    trainer = make_trainer(tmp_path / "out", ["comet_ml"], run_name="comet-run")

    class Note:
        from tracklink import hookimpl

        @hookimpl
        def on_step_begin(self, state) -> None:  # after step 10's logs (logging resets should_log)
            if state.global_step == 10:
                trainer.log({"note": "hello comet"})

    trainer.add_callback(Note())
    trainer.train()
    archive = _only_archive(comet_dir)
    history = trainer.state.log_history
    assert_series(archive.series("train/loss"), [(h["step"], h["loss"]) for h in history if "loss" in h])
    assert_series(archive.series("eval/loss"), [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h])
    assert [m["epoch"] for m in archive.metrics if m["metricName"] == "train/loss"] == [0.625, 1.25, 1.875, 2.5]
    assert archive.series("train/train_loss") == [(20, pytest.approx(history[-1]["train_loss"]))]
    assert archive.texts == [{"text": "hello comet", "step": 10, "metadata": {"name": "train/note"}}]
    assert archive.params["learning_rate"] == 0.1 and archive.params["max_steps"] == 20
    assert archive.params["model/num_parameters"] == 2 and archive.params["hidden_note"] == "regression"
    assert archive.others["Name"] == "comet-run" and archive.others["status"] == "success"
    assert archive.experiment["project_name"] == "tracklink-tests"
    assert archive.graph and "RegressionModel" in archive.graph
    # COMET_LOG_ASSETS defaults to TRUE: the output directory, checkpoints included, as assets
    out = tmp_path / "out"
    assert archive.assets["checkpoint-20/model.safetensors"] == (out / "checkpoint-20/model.safetensors").read_bytes()
    assert {"checkpoint-10/optimizer.pt", "checkpoint-20/trainer_state.json"} <= set(archive.assets)
    # nothing the offline defaults would add: source code, console output, environment, CO2
    assert not [a for a in archive.assets if a.endswith((".py", ".csv"))]
    assert not {"hostname", "ip", "os_packages"} & set(archive.others)


def test_no_secret_reaches_the_archive(tmp_path: Path, comet_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    monkeypatch.setattr(sys, "argv", [sys.argv[0], "--hub_token", SECRETS[0]])  # CLI parsing is off
    trainer = make_trainer(tmp_path / "out", ["comet_ml"], secrets=True)
    trainer.train()
    unpacked = extract_all(comet_dir, tmp_path / "unpacked")
    assert files_containing(unpacked, SECRETS) == []
    archive = _only_archive(comet_dir)
    assert archive.params["learning_rate"] == 0.1
    assert archive.params["hub_token"] == "<redacted>" and archive.params["service_password"] == "<redacted>"
    config = json.loads(archive.assets["checkpoint-20/config.json"])  # uploaded as a redacted copy
    assert config["service_password"] == "<redacted>" and config["a"] == 0.0


@pytest.mark.parametrize(("exc", "status"), [(RuntimeError("boom at 7"), "failed"), (KeyboardInterrupt(), "killed")])
def test_failed_and_killed_experiments_are_marked_and_ended(tmp_path: Path, comet_dir: Path,
                                                            exc: BaseException, status: str) -> None:
    trainer = make_trainer(tmp_path / "out", ["comet_ml"], callbacks=[raise_at(7, exc)])
    with pytest.raises(type(exc)):
        trainer.train()
    archive = _only_archive(comet_dir)  # the archive exists: the experiment was ended
    assert archive.others["status"] == status
    assert [s for s, _ in archive.series("train/loss")] == [5]
    assert archive.assets == {}  # assets are uploaded after a successful training only


def test_resume_continues_the_same_experiment_key(tmp_path: Path, comet_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMET_LOG_ASSETS", "0")
    out = tmp_path / "out"
    make_trainer(out, ["comet_ml"], callbacks=[stop_at(15)]).train()
    make_trainer(out, ["comet_ml"]).train(resume_from_checkpoint=str(out / "checkpoint-10"))
    archives = read_archives(comet_dir)
    assert len(archives) == 2, [(a.path.name, a.series("train/loss")) for a in archives]
    first, second = sorted(archives, key=lambda a: a.series("train/loss")[0][0])
    assert first.key == second.key  # offline: a second archive; `comet upload` appends it to the first
    saved = json.loads((out / "checkpoint-10" / "trainer_state.json").read_text())["stateful_callbacks"]
    assert saved["CometCallback"]["attributes"]["run"] == {"experiment_key": first.key}
    assert second.experiment["resume_strategy"] == "get_or_create"
    assert second.experiment["user_provided_experiment_key"] is True
    assert [s for s, _ in first.series("train/loss")] == [5, 10, 15]
    assert [s for s, _ in second.series("train/loss")] == [15, 20]  # continues after the restored step 10
    assert second.params["learning_rate"] == 0.1 and second.others["status"] == "success"


def test_a_users_running_experiment_is_reused_and_not_ended(tmp_path: Path, comet_dir: Path) -> None:
    import comet_ml

    experiment = comet_ml.start(online=False, experiment_config=comet_ml.ExperimentConfig(
        name="mine", log_code=False, auto_output_logging=False, display_summary_level=0,
        log_env_details=False, log_env_host=False, auto_log_co2=False))  # SDK defaults go online
    try:
        trainer = make_trainer(tmp_path / "out", ["comet_ml"], max_steps=10, eval_strategy="no",
                               save_strategy="no")
        trainer.train()
        assert not experiment.ended and comet_ml.get_running_experiment() is experiment
        experiment.log_metric("after_training", 1.0)
    finally:
        experiment.end()
    archive = _only_archive(comet_dir)
    assert archive.key == experiment.get_key() and archive.others["Name"] == "mine"
    assert [s for s, _ in archive.series("train/loss")] == [5, 10]
    assert "status" not in archive.others and archive.params["learning_rate"] == 0.1


def test_deprecated_offline_mode_and_assets_off(tmp_path: Path, comet_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMET_START_ONLINE", "1")  # COMET_MODE=OFFLINE wins
    monkeypatch.setenv("COMET_MODE", "OFFLINE")
    monkeypatch.setenv("COMET_LOG_ASSETS", "FALSE")
    with pytest.warns(FutureWarning, match="COMET_MODE='OFFLINE' is deprecated"):
        trainer = make_trainer(tmp_path / "out", ["comet_ml"], max_steps=5, eval_strategy="no")
    trainer.train()
    archive = _only_archive(comet_dir)
    assert archive.series("train/loss") and archive.assets == {}


def test_failing_sdk_call_does_not_stop_training(tmp_path: Path, comet_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from comet_ml.experiment import CometExperiment

    def broken(self, *args, **kwargs):
        raise ConnectionError("Comet is down")

    monkeypatch.setattr(CometExperiment, "log_metrics", broken)
    monkeypatch.setenv("COMET_LOG_ASSETS", "0")
    trainer = make_trainer(tmp_path / "out", ["comet_ml"], save_strategy="no")
    assert trainer.train().global_step == 20
    assert "Comet is down" in trainer.callback_handler.tracker_failures()["comet_ml"]


def test_bad_environment_values_fail_before_training(tmp_path: Path, comet_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from tracklink import ReportToError
    from tracklink.integrations import CometCallback

    monkeypatch.setenv("COMET_MODE", "resume")
    with pytest.raises(ReportToError, match=r"COMET_MODE='resume'.*get_or_create, create, get"):
        make_trainer(tmp_path / "out", ["comet_ml"])
    with pytest.raises(ValueError, match="COMET_MODE='resume'"):
        CometCallback()
    monkeypatch.setenv("COMET_MODE", "get")
    with pytest.raises(ReportToError, match="COMET_EXPERIMENT_KEY"):
        make_trainer(tmp_path / "out", ["comet_ml"])
    monkeypatch.setenv("COMET_MODE", "Create")
    monkeypatch.setenv("COMET_LOG_ASSETS", "always")
    with pytest.raises(ReportToError, match=r"COMET_LOG_ASSETS='always'.*TRUE, 1, FALSE, 0"):
        make_trainer(tmp_path / "out", ["comet_ml"])
    monkeypatch.delenv("COMET_LOG_ASSETS")
    monkeypatch.setenv("COMET_MODE", "DISABLED")
    trainer = make_trainer(tmp_path / "out", ["comet_ml", "tensorboard"])
    assert "comet_ml" not in trainer.callback_handler.trackers
    with pytest.warns(FutureWarning, match="DISABLED"):
        explicit = CometCallback()  # passed as an instance: registered, but it logs nothing
    trainer = make_trainer(tmp_path / "out2", "none", callbacks=[explicit], max_steps=5, eval_strategy="no",
                           save_strategy="no")
    trainer.train()
    assert trainer.callback_handler.tracker_failures() == {} and read_archives(comet_dir) == []


def test_ready_needs_a_key_or_offline_mode(tmp_path: Path) -> None:
    from tracklink.integrations import CometCallback

    config = tmp_path / "comet.config"
    env = {"HOME": str(tmp_path), "COMET_CONFIG": str(config)}
    assert "API key" in CometCallback.ready(env)
    assert CometCallback.ready({**env, "COMET_API_KEY": "k" * 30}) is None
    assert CometCallback.ready({**env, "COMET_START_ONLINE": "false"}) is None
    assert CometCallback.ready({**env, "COMET_MODE": "offline"}) is None
    config.write_text("[comet]\napi_key = " + "k" * 30 + "\n")
    assert CometCallback.ready(env) is None


def test_importing_tracklink_does_not_import_comet() -> None:
    code = ("import sys, tracklink, tracklink.integrations, tracklink.integrations.comet; "
            "from tracklink.integrations import CometCallback; CometCallback(); "
            "assert 'comet_ml' not in sys.modules, 'comet_ml imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
