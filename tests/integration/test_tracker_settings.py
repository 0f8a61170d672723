"""Tracker settings that are wrong are named before the first training step, including the ones the SDK
reads itself; a tracking server that does not answer is reported without stalling training.

Catalogue of bad settings tried here (each gives an error naming the variable, the value and what is
accepted, in ``report_to`` resolution, at ``Trainer`` construction and in ``tracklink doctor``):

- ``MLFLOW_TRACKING_URI``: ``./mlruns`` and ``file:/...`` (file stores MLflow 3 refuses), ``::::``, the path of
  a regular file (also with ``MLFLOW_ALLOW_FILE_STORE=true``), ``http://`` (no host), ``http://host:port0x``
  (a port that is not a number), ``htp://host`` (unknown scheme), ``postgresql://...`` without a driver, a
  ``sqlite:///`` path that is a directory; accepted: servers, sqlite files, databricks, file stores when
  allowed;
- ``CODECARBON_MEASURE_POWER_SECS=fast``, ``=0``, ``=nan``; ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=many``, ``=-1``;
  ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=x``; ``DATABRICKS_HOST=workspace`` (no URL); ``WANDB_MODE=offlin``,
  ``WANDB_RESUME=yes``, ``WANDB_CONSOLE=none``, ``WANDB_BASE_URL=api.wandb.ai``, ``WANDB_SILENT=maybe``;
  ``COMET_START_ONLINE=offline``; ``CLEARML_API_HOST=localhost:8008``, ``CLEARML_OFFLINE_MODE=offline``;
  ``DAGSHUB_CLIENT_HOST=dagshub``; ``DVCLIVE_LOGLEVEL=loud``, ``DVC_STUDIO_OFFLINE=perhaps``;
  ``FLYTE_SDK_LOGGING_LEVEL=quiet``;
- a tracking server that does not answer (``http://127.0.0.1:<closed port>``): a warning naming it when
  the trainer is built, a problem in ``doctor``, training finishing with checkpoints, the tracker switched
  off after its one failed setup;
- metric and param names: two unicode names (``精度``, ``召回``) stay distinct in MLflow; two keys that
  sanitise to one name (``acc@1``, ``acc#1``) are both kept, the later one suffixed, with a warning.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from helpers import make_trainer
from tracklink import ReportToError, resolve_report_to
from tracklink.cli import doctor_report
from tracklink.integrations.clearml import ClearMLCallback
from tracklink.integrations.codecarbon import CodeCarbonCallback
from tracklink.integrations.comet import CometCallback
from tracklink.integrations.dagshub import DagsHubCallback
from tracklink.integrations.dvclive import DVCLiveCallback
from tracklink.integrations.flyte import FlyteCallback
from tracklink.integrations.mlflow import MLflowCallback
from tracklink.integrations.wandb import WandbCallback

BAD_SETTINGS = [
    (CodeCarbonCallback, "CODECARBON_MEASURE_POWER_SECS", "fast", "expected a number >= 0.001"),
    (CodeCarbonCallback, "CODECARBON_MEASURE_POWER_SECS", "0", "expected a number >= 0.001"),
    (CodeCarbonCallback, "CODECARBON_MEASURE_POWER_SECS", "nan", "expected a finite number >= 0.001"),
    (MLflowCallback, "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "many", "expected a whole number"),
    (MLflowCallback, "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "-1", "expected a whole number >= 0"),
    (MLflowCallback, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "x", "expected a number"),
    (MLflowCallback, "DATABRICKS_HOST", "workspace", "expected an http(s):// URL with a host"),
    (WandbCallback, "WANDB_MODE", "offlin", "accepted values: online, offline, disabled"),
    (WandbCallback, "WANDB_RESUME", "yes", "accepted values: allow, must, never, auto"),
    (WandbCallback, "WANDB_CONSOLE", "none", "accepted values: auto, off, wrap"),
    (WandbCallback, "WANDB_BASE_URL", "api.wandb.ai", "expected an http(s):// URL with a host"),
    (WandbCallback, "WANDB_SILENT", "maybe", "expected a boolean"),
    (CometCallback, "COMET_START_ONLINE", "offline", "expected a boolean"),
    (ClearMLCallback, "CLEARML_API_HOST", "localhost:8008", "expected an http(s):// URL with a host"),
    (ClearMLCallback, "CLEARML_OFFLINE_MODE", "offline", "expected a boolean"),
    (DagsHubCallback, "DAGSHUB_CLIENT_HOST", "dagshub", "expected an http(s):// URL with a host"),
    (DVCLiveCallback, "DVCLIVE_LOGLEVEL", "loud", "expected a log level"),
    (DVCLiveCallback, "DVC_STUDIO_OFFLINE", "perhaps", "expected a boolean"),
    (FlyteCallback, "FLYTE_SDK_LOGGING_LEVEL", "quiet", "expected a whole number"),
]


@pytest.mark.parametrize("tracker, variable, value, expected", BAD_SETTINGS,
                         ids=[f"{v}={x}" for _, v, x, _ in BAD_SETTINGS])
def test_bad_sdk_setting_is_named(tracker: Any, variable: str, value: str, expected: str) -> None:
    problems = [p for p in tracker.env_problems({variable: value}) if variable in p]
    assert len(problems) == 1, problems
    assert f"{variable}={value!r}" in problems[0] and expected in problems[0]
    assert not [p for p in tracker.env_problems({variable: ""}) if variable in p], "empty counts as unset"


def test_good_sdk_settings_pass() -> None:
    good = {"CODECARBON_MEASURE_POWER_SECS": "0.5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "WANDB_MODE": "OFFLINE", "WANDB_BASE_URL": "https://wandb.example.org:8443",
            "COMET_START_ONLINE": "0", "CLEARML_API_HOST": "http://127.0.0.1:8008", "DVCLIVE_LOGLEVEL": "DEBUG",
            "FLYTE_SDK_LOGGING_LEVEL": "40", "WANDB_SILENT": "true"}
    for tracker in (CodeCarbonCallback, MLflowCallback, WandbCallback, CometCallback, ClearMLCallback,
                    DVCLiveCallback, FlyteCallback):
        assert tracker.env_problems(good) == [], tracker.name


@pytest.mark.sdk("codecarbon")
def test_bad_sdk_setting_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODECARBON_MEASURE_POWER_SECS", "fast")
    with pytest.raises(ReportToError, match=r"CODECARBON_MEASURE_POWER_SECS='fast' is not accepted; expected a number"):
        make_trainer(tmp_path / "out", ["codecarbon"])
    assert not (tmp_path / "out").exists()
    report = doctor_report("codecarbon")
    assert any("CODECARBON_MEASURE_POWER_SECS='fast'" in p for p in report["problems"])


# -- MLflow tracking URIs ----------------------------------------------------------------------------


def _uri_problems(uri: str, **env: str) -> list[str]:
    return [p for p in MLflowCallback.env_problems({"MLFLOW_TRACKING_URI": uri, **env}) if "MLFLOW_TRACKING_URI" in p]


@pytest.mark.sdk("mlflow")
@pytest.mark.parametrize("uri, expected", [
    ("./mlruns", "is a file store, which MLflow 3"),
    ("file:///tmp/somewhere/mlruns", "is a file store, which MLflow 3"),
    ("::::", "is neither a URL"),
    ("http://", "has no host"),
    ("https:///path", "has no host"),
    ("http://127.0.0.1:50x0", "is not a valid URL"),
    ("htp://tracking.example.org", "has scheme 'htp', which MLflow does not know"),
])
def test_bad_tracking_uri_is_named(uri: str, expected: str) -> None:
    problems = _uri_problems(uri)
    assert len(problems) == 1 and expected in problems[0], problems
    assert f"MLFLOW_TRACKING_URI={uri!r}" in problems[0]


@pytest.mark.sdk("mlflow")
def test_tracking_uri_paths(tmp_path: Path) -> None:
    regular = tmp_path / "a-file"
    regular.write_text("x")
    assert "file store" in _uri_problems(str(regular))[0]
    allowed = {"MLFLOW_ALLOW_FILE_STORE": "true"}
    assert "regular file" in _uri_problems(str(regular), **allowed)[0]
    assert "regular file" in _uri_problems(str(regular / "mlruns"), **allowed)[0]
    assert _uri_problems(str(tmp_path / "mlruns"), **allowed) == []
    assert _uri_problems(f"file://{tmp_path / 'mlruns'}", **allowed) == []
    assert "names a directory" in _uri_problems(f"sqlite:///{tmp_path}")[0]
    for fine in (f"sqlite:///{tmp_path / 'mlflow.db'}", "sqlite:///mlflow.db", "http://127.0.0.1:5000",
                 "https://user:pw@mlflow.example.org/prefix", "databricks", "databricks://profile"):
        assert _uri_problems(fine) == [], fine


@pytest.mark.sdk("mlflow")
def test_database_uri_without_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("psycopg2", "psycopg") else real(name, *a))
    problems = _uri_problems("postgresql://mlflow:secretpw@127.0.0.1/mlflow")
    assert len(problems) == 1 and "pip install psycopg2-binary" in problems[0]
    assert "secretpw" not in problems[0], "the password in the URI is masked"


@pytest.mark.sdk("mlflow")
def test_bad_tracking_uri_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "./mlruns")
    with pytest.raises(ReportToError, match=r"MLFLOW_TRACKING_URI='\./mlruns' is a file store"):
        resolve_report_to("mlflow")
    with pytest.raises(ReportToError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        make_trainer(tmp_path / "out", ["mlflow"])
    report = doctor_report("mlflow")
    assert any("MLFLOW_TRACKING_URI='./mlruns'" in p for p in report["problems"])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.sdk("mlflow")
def test_server_that_does_not_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries would take minutes
    assert MLflowCallback.connection_problems({"MLFLOW_TRACKING_URI": uri})
    caplog.set_level(logging.WARNING, logger="tracklink")
    trainer = make_trainer(tmp_path / "out", ["mlflow"], save_steps=5)
    warned = [r.getMessage() for r in caplog.records if "does not answer" in r.getMessage()]
    assert len(warned) == 1 and uri in warned[0] and "Training does not wait" in warned[0]
    assert trainer.train().global_step == 20
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == [
        "checkpoint-10", "checkpoint-15", "checkpoint-20", "checkpoint-5"]
    summary = trainer.callback_handler.tracker_failures()["mlflow"]
    assert "could not be set up" in summary
    report = doctor_report("mlflow")
    assert any("does not answer" in p for p in report["problems"])


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.sdk("mlflow")
def test_unicode_and_colliding_metric_names(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mlflow.tracking import MlflowClient

    from tracklink.trainer import Trainer

    class Logs(Trainer):
        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False) -> Any:
            if model.training and self.state.global_step == 3:
                self.log({"精度": 0.5, "召回": 0.25, "acc@1": 0.1, "acc#1": 0.2})
            return super().compute_loss(model, inputs, return_outputs)

    caplog.set_level(logging.WARNING, logger="tracklink")
    trainer = make_trainer(workdir / "out", ["mlflow"], eval_strategy="no", save_strategy="no", max_steps=5)
    trainer.__class__ = Logs
    trainer.train()
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs(["0"])[0]
    metrics = run.data.metrics
    assert metrics["精度"] == 0.5 and metrics["召回"] == 0.25
    assert metrics["acc_1"] == 0.1
    suffixed = [k for k in metrics if k.startswith("acc_1_")]
    assert len(suffixed) == 1 and metrics[suffixed[0]] == 0.2
    assert any("'acc#1'" in r.getMessage() and "already used by 'acc@1'" in r.getMessage() for r in caplog.records)
