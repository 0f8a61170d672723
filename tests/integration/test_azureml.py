"""Azure ML (SDK v1, azureml-core): train through tracklink's Trainer with report_to=["azure_ml"] outside an
Azure ML job, where Run.get_context() returns the SDK's _OfflineRun. That offline run is the only offline
mode the SDK has: it writes nothing and only prints "Attempted to log ..." lines to stdout (from the
tracker's worker thread), so the read-back is capturing stdout (capsys) and parsing those lines with
tests/readers/azureml.py. It proves which calls and values reached the SDK; steps are not printed by the
offline run (its log() has no step parameter), so the step axis is checked on a recording run object.

Bad inputs handled (each tested below):
* AzureMLCallback(azureml_run=<not a Run>) -> TypeError naming the value;
* a failing SDK call (run.log raising) -> reported by the hub, training finishes.
"""

from __future__ import annotations

import pytest

from helpers import SECRET_ENV, SECRET_ENV_VAR, SECRETS, make_trainer, raise_at, stop_at
from readers.azureml import parse_stdout

pytestmark = [
    pytest.mark.sdk("azureml.core"),
    pytest.mark.filterwarnings("ignore:FileType Enum is Deprecated:DeprecationWarning"),
]


def _offline_run(run_id: str):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from azureml.core.run import _OfflineRun
    return _OfflineRun(run_id=run_id)


def test_metrics_tags_and_completion(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = make_trainer(tmp_path / "out", ["azure_ml"])
    trainer.train()
    log = parse_stdout(capsys.readouterr().out)
    history = trainer.state.log_history
    assert log.metrics["loss"] == pytest.approx([h["loss"] for h in history if "loss" in h])
    assert log.metrics["eval_loss"] == pytest.approx([h["eval_loss"] for h in history if "eval_loss" in h])
    assert len(log.metrics["learning_rate"]) == 4 and len(log.metrics["epoch"]) == 7
    assert log.metrics["train_loss"] == pytest.approx([next(h for h in history if "train_loss" in h)["train_loss"]])
    assert log.tags["learning_rate"] == "0.1" and log.tags["max_steps"] == "20"
    assert log.tags["hidden_note"] == "regression"  # the model config is merged in
    assert log.failures == []  # completed (the offline run's complete() prints nothing)
    identity = trainer.callback_handler.trackers["azure_ml"].identity
    assert identity["run_id"].startswith("OfflineRun_")


def test_step_axis_where_the_sdk_has_one(tmp_path) -> None:
    from tracklink.integrations import AzureMLCallback

    class SteppedRun:
        """A run object with the SDK v1 Run.log signature (a real job's run takes step=)."""

        id = "job-run"

        def __init__(self) -> None:
            self.logged: list[tuple[str, float, int | None]] = []

        def log(self, name, value, description="", step=None):
            self.logged.append((name, value, step))

        def set_tags(self, tags):
            self.tags = tags

    run = SteppedRun()
    trainer = make_trainer(tmp_path / "out", "none", callbacks=[AzureMLCallback(azureml_run=run)])
    trainer.train()
    assert [(step, value) for name, value, step in run.logged if name == "loss"] == [
        (h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]


def test_no_secret_reaches_the_run(tmp_path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    trainer = make_trainer(tmp_path / "out", ["azure_ml"], secrets=True)
    trainer.train()
    out = capsys.readouterr().out
    log = parse_stdout(out)
    assert log.tags["learning_rate"] == "0.1" and log.tags["hub_token"] == "<redacted>"
    for secret in SECRETS:
        assert secret not in out


@pytest.mark.parametrize(("error", "words"), [(RuntimeError("boom"), "failed"),
                                              (KeyboardInterrupt(), "was interrupted")])
def test_failed_and_killed(tmp_path, capsys: pytest.CaptureFixture[str], error: BaseException, words: str) -> None:
    trainer = make_trainer(tmp_path / "out", ["azure_ml"], callbacks=[raise_at(7, error)])
    with pytest.raises(type(error)):
        trainer.train()
    log = parse_stdout(capsys.readouterr().out)
    assert len(log.failures) == 1 and words in log.failures[0]
    assert len(log.metrics["loss"]) == 1


def test_resume_in_the_same_job_logs_into_the_same_run(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from tracklink.integrations import AzureMLCallback

    out = tmp_path / "out"
    job_run = _offline_run("job-run-1")  # inside a job, every get_context() gives the job's run
    first = make_trainer(out, "none", callbacks=[AzureMLCallback(azureml_run=job_run), stop_at(15)])
    first.train()
    capsys.readouterr()
    resumed = make_trainer(out, "none", callbacks=[AzureMLCallback(azureml_run=job_run)])
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    log = parse_stdout(capsys.readouterr().out)
    assert resumed.callback_handler.trackers["azure_ml"].identity == {"run_id": "job-run-1"}
    assert log.tags == {}  # same run: parameters are not set again
    expected = [h["loss"] for h in resumed.state.log_history if "loss" in h and h["step"] > 10]
    assert log.metrics["loss"] == pytest.approx(expected)  # steps 15 and 20 only


def test_resume_in_a_new_job_links_the_runs(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    first = make_trainer(out, ["azure_ml"], callbacks=[stop_at(15)])
    first.train()
    first_id = first.callback_handler.trackers["azure_ml"].identity["run_id"]
    capsys.readouterr()
    resumed = make_trainer(out, ["azure_ml"])
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    log = parse_stdout(capsys.readouterr().out)
    assert log.tags["tracklink_resumed_from"] == first_id and log.tags["tracklink_resumed_at_step"] == "10"
    assert len(log.metrics["loss"]) == 2


def test_run_passed_in_is_left_open(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from tracklink.integrations import AzureMLCallback

    run = _offline_run("mine")
    trainer = make_trainer(tmp_path / "out", "none", callbacks=[AzureMLCallback(azureml_run=run), raise_at(7, RuntimeError("x"))])
    with pytest.raises(RuntimeError):
        trainer.train()
    assert parse_stdout(capsys.readouterr().out).failures == []  # not ours to fail


def test_bad_run_argument() -> None:
    from tracklink.integrations import AzureMLCallback

    with pytest.raises(TypeError, match="azureml_run='run-id'"):
        AzureMLCallback(azureml_run="run-id")


def test_failing_sdk_does_not_stop_training(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from azureml.core.run import _OfflineRun

    def broken(self, *args, **kwargs):
        raise ConnectionError("azure ml unreachable")

    monkeypatch.setattr(_OfflineRun, "log", broken)
    trainer = make_trainer(tmp_path / "out", ["azure_ml"])
    assert trainer.train().global_step == 20
    assert "azure ml unreachable" in trainer.callback_handler.tracker_failures()["azure_ml"]


def test_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from tracklink.integrations import AzureMLCallback

    assert "MLflow route" in AzureMLCallback.ready({})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert AzureMLCallback.ready({"AZUREML_RUN_ID": "r1"}) is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert "mlflow" in AzureMLCallback.ready({"AZUREML_RUN_ID": "r1"})
