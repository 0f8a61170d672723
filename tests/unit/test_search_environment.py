"""The environment a Ray search passes on to its trial workers (``tracker_environment``), built from what
the trackers declare: a third-party tracker's settings and credentials reach the workers like a built-in
one's, tracklink's own settings too, unrelated variables do not, and no secret value is ever logged.
Runs without Ray (the environment is built on the driver before Ray is involved)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import tracklink
from tracklink.registry import discover
from tracklink.tracker import declared_environment
from tracklink.trainer.search import tracker_environment

SECRET = "sk-forwarded-but-never-logged-8d1f"
PROJECT_ENV = "TESTRECORDER_PROJECT"  # declared by the installed test plugin, outside TRACKLINK_*
SECRET_ENV = "TRACKLINK_TESTPLUGIN_API_KEY"


@pytest.fixture
def messages() -> Iterator[list[str]]:
    """Every message the "tracklink" logger emits, at any level, during the test."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("tracklink")
    handler, level = Collect(level=logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_third_party_trackers_declared_variables_are_forwarded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert discover()["testrecorder"].source == "third-party"
    monkeypatch.setenv(PROJECT_ENV, "acme")
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv("UNRELATED_SETTING_OF_THE_SHELL", "x")
    environment = tracker_environment()
    assert environment[PROJECT_ENV] == "acme"
    assert environment[SECRET_ENV] == SECRET  # the workers need the credentials
    assert "UNRELATED_SETTING_OF_THE_SHELL" not in environment


def test_built_in_and_tracklink_settings_are_forwarded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_REPORT_TO", "testrecorder")
    monkeypatch.setenv("TRACKLINK_SOMETHING_NEW", "1")  # tracklink's own namespace, declared or not
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://localhost:9000")  # read by the SDK, undeclared
    environment = tracker_environment()
    assert {"TRACKLINK_REPORT_TO", "TRACKLINK_SOMETHING_NEW", "WANDB_API_KEY", "MLFLOW_S3_ENDPOINT_URL"} <= set(
        environment)


def test_a_tracker_class_only_passed_to_the_trainer_declares_too(monkeypatch: pytest.MonkeyPatch) -> None:
    class AcmeTracker(tracklink.Tracker):
        name = "acme"
        env_vars = (tracklink.EnvVar("ACME_SERVER_URL", None, "where runs go"),)

    monkeypatch.setenv("ACME_SERVER_URL", "http://acme.invalid")
    assert declared_environment()["ACME_SERVER_URL"] is False
    assert tracker_environment()["ACME_SERVER_URL"] == "http://acme.invalid"
    assert AcmeTracker.name == "acme"


def test_declared_environment_marks_secrets() -> None:
    declared = declared_environment()
    assert declared[SECRET_ENV] is True and declared[PROJECT_ENV] is False
    assert declared["TRACKLINK_TESTPLUGIN_OUT"] is False


def test_forwarded_secrets_are_never_logged(monkeypatch: pytest.MonkeyPatch, messages: list[str]) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(PROJECT_ENV, "acme")
    assert tracker_environment()[SECRET_ENV] == SECRET
    text = "\n".join(messages)
    assert SECRET_ENV in text and PROJECT_ENV in text  # the names are logged (at debug level) ...
    assert SECRET not in text and "acme" not in text  # ... never the values
