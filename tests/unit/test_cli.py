"""The ``tracklink`` command: ``plugins`` and ``doctor``, in JSON and text form.

Most tests run the CLI in-process against fake tracker specs; the subprocess tests use the installed test
plugin distribution (skipped when it is not installed).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tracklink import EnvVar, Tracker, cli
from tracklink.registry import TrackerSpec

ROW_KEYS = {"name", "installed", "sdk_version", "ready", "selected", "reason", "source"}
SECRET = "cli-secret-9d8c7b6a5f"


class FakeBoard(Tracker):
    name = "fakeboard"
    sdk = "pluggy"  # an installed distribution, so sdk_version is known
    extra = "fakeboard"
    env_vars = (EnvVar("FAKEBOARD_DIR", "runs", "where event files go"),)


class FakeCloud(Tracker):
    name = "fakecloud"
    extra = "fakecloud"
    env_vars = (
        EnvVar("FAKECLOUD_API_KEY", None, "API key", secret=True),
        EnvVar("FAKECLOUD_MODE", "online", "online or offline", choices=("online", "offline")),
    )

    @classmethod
    def ready(cls, env: Any) -> str | None:
        return None if env.get("FAKECLOUD_API_KEY") else "FAKECLOUD_API_KEY is not set"


class FakeMissing(Tracker):
    name = "fakemissing"
    sdk = "tracklink-test-no-such-sdk"
    extra = "fakemissing"


@pytest.fixture
def fake_specs(monkeypatch: pytest.MonkeyPatch) -> dict[str, TrackerSpec]:
    specs = {
        cls.name: TrackerSpec(name=cls.name, value=f"fake:{cls.__name__}", distribution="tracklink",
                              distribution_version="0.1.0", obj=cls, _loaded=True)
        for cls in (FakeBoard, FakeCloud, FakeMissing)
    }
    monkeypatch.setattr(cli, "discover", lambda: dict(specs))
    monkeypatch.delenv("TRACKLINK_REPORT_TO", raising=False)
    for name in ("FAKECLOUD_API_KEY", "FAKECLOUD_MODE", "FAKEBOARD_DIR"):
        monkeypatch.delenv(name, raising=False)
    return specs


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


# -- plugins ------------------------------------------------------------------------------------------


def test_plugins_json_rows(fake_specs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_main(capsys, "plugins", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["error"] is None
    rows = {row["name"]: row for row in data["trackers"]}
    assert list(rows) == ["fakeboard", "fakecloud", "fakemissing"]
    for row in rows.values():
        assert ROW_KEYS <= set(row)
    board, cloud, missing = rows["fakeboard"], rows["fakecloud"], rows["fakemissing"]
    assert board == {**board, "installed": True, "ready": True, "selected": True, "source": "builtin",
                     "sdk_version": importlib.metadata.version("pluggy"), "reason": "selected by report_to"}
    assert cloud["installed"] and not cloud["ready"] and not cloud["selected"]
    assert cloud["reason"] == "FAKECLOUD_API_KEY is not set" and cloud["sdk_version"] is None
    assert not missing["installed"] and not missing["ready"] and missing["sdk_version"] is None
    assert "not installed" in missing["reason"] and missing["install"] == 'pip install "tracklink[fakemissing]"'


def test_plugins_with_report_to_flag_and_env(fake_specs: Any, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run_main(capsys, "plugins", "--json", "--report-to", "fakecloud")
    rows = {row["name"]: row for row in json.loads(out)["trackers"]}
    assert code == 0 and rows["fakecloud"]["selected"] and not rows["fakeboard"]["selected"]
    assert rows["fakeboard"]["reason"] == "not named in report_to"
    monkeypatch.setenv("TRACKLINK_REPORT_TO", "none")
    code, out = run_main(capsys, "plugins", "--json")
    assert code == 0 and not any(row["selected"] for row in json.loads(out)["trackers"])


def test_plugins_text(fake_specs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_main(capsys, "plugins")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "source", "installed", "sdk_version", "ready", "selected", "reason"]
    board = next(line for line in lines if line.startswith("fakeboard"))
    assert board.split()[:6] == ["fakeboard", "builtin", "yes", importlib.metadata.version("pluggy"), "yes", "yes"]
    missing = next(line for line in lines if line.startswith("fakemissing"))
    assert missing.split()[:6] == ["fakemissing", "builtin", "no", "-", "no", "no"]


@pytest.mark.parametrize("command", ["plugins", "doctor"])
@pytest.mark.parametrize("as_json", [True, False])
def test_invalid_report_to_env_exits_1(command: str, as_json: bool, fake_specs: Any,
                                        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_REPORT_TO", "fakebord")
    argv = [command, "--json"] if as_json else [command]
    code, out = run_main(capsys, *argv)
    assert code == 1
    assert "fakebord" in out and "fakeboard" in out  # names the value and the close match
    if as_json:
        data = json.loads(out)
        message = data["error"] if command == "plugins" else data["problems"][0]
        assert "Did you mean 'fakeboard'" in message


def test_missing_sdk_named_explicitly_exits_1(fake_specs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_main(capsys, "plugins", "--report-to", "fakemissing")
    assert code == 1
    assert 'pip install "tracklink[fakemissing]"' in out


# -- doctor -------------------------------------------------------------------------------------------


def test_doctor_json_shows_secrets_only_as_set(fake_specs: Any, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKECLOUD_API_KEY", SECRET)
    monkeypatch.setenv("FAKEBOARD_DIR", "/tmp/board")
    code, out = run_main(capsys, "doctor", "--json")
    assert code == 0
    assert SECRET not in out
    report = json.loads(out)
    assert report["selected"] == ["fakeboard", "fakecloud"]
    assert report["report_to_origin"] == "default" and report["problems"] == []
    assert report["delivery"]["on_error"] == "warn"
    rows = {row["name"]: row for row in report["trackers"]}
    key_var = next(v for v in rows["fakecloud"]["env"] if v["name"] == "FAKECLOUD_API_KEY")
    assert key_var["set"] is True and key_var["secret"] is True and "value" not in key_var
    board_var = rows["fakeboard"]["env"][0]
    assert board_var["value"] == "/tmp/board" and board_var["default"] == "runs"


def test_doctor_text(fake_specs: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKECLOUD_API_KEY", SECRET)
    code, out = run_main(capsys, "doctor")
    assert code == 0
    assert SECRET not in out
    assert "report_to: all (default)" in out
    assert "trackers: fakeboard, fakecloud" in out
    assert "set (secret)" in out and "no problems found" in out
    assert "FAKEBOARD_DIR" in out and "unset (default: 'runs')" in out
    assert 'install: pip install "tracklink[fakemissing]"' in out


def test_doctor_reports_bad_settings(fake_specs: Any, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKECLOUD_API_KEY", SECRET)  # ready, so "all" selects it
    monkeypatch.setenv("FAKECLOUD_MODE", "sideways")
    monkeypatch.setenv("TRACKLINK_ON_ERROR", "explode")
    code, out = run_main(capsys, "doctor")
    assert code == 1
    assert "FAKECLOUD_MODE='sideways'" in out and "online, offline" in out
    assert "TRACKLINK_ON_ERROR='explode'" in out and "warn, raise" in out
    assert SECRET not in out
    code, out = run_main(capsys, "doctor", "--json")
    report = json.loads(out)
    assert code == 1 and report["delivery"] is None
    assert any("FAKECLOUD_MODE" in p for p in report["problems"])
    assert any("TRACKLINK_ON_ERROR" in p for p in report["problems"])
    assert SECRET not in out


def test_doctor_settings_of_unselected_trackers_are_warnings(fake_specs: Any, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKECLOUD_MODE", "sideways")
    code, out = run_main(capsys, "doctor", "--json", "--report-to", "fakeboard")
    report = json.loads(out)
    assert code == 0 and report["problems"] == []
    row = next(r for r in report["trackers"] if r["name"] == "fakecloud")
    assert any("FAKECLOUD_MODE='sideways'" in w for w in row["warnings"])


class FakeUploader(Tracker):
    name = "fakeuploader"

    def log_checkpoint(self, path: str, state: Any) -> None:
        pass


class FakeInline(Tracker):
    name = "fakeinline"
    inline = True


@pytest.mark.parametrize("setting, board, uploader, inline", [
    ({}, "a worker thread of the training process", "a worker thread of the training process",
     "inline, on the training thread"),
    ({"TRACKLINK_DELIVERY": "process"}, "a process of its own, following the run journal",
     "a worker thread of the training process, although TRACKLINK_DELIVERY=process: it uploads checkpoints",
     "inline, on the training thread"),
    ({"TRACKLINK_OFFLINE": "1"}, "none during training: recorded in the run journal",
     "none during training: recorded in the run journal", "none during training: recorded in the run journal"),
    ({"TRACKLINK_DELIVERY": "process", "TRACKLINK_OFFLINE": "1"}, "unknown: the journal settings are invalid",
     "unknown: the journal settings are invalid", "unknown: the journal settings are invalid"),
])
def test_doctor_tells_how_each_tracker_receives_its_events(setting: dict[str, str], board: str, uploader: str,
                                                          inline: str, fake_specs: dict[str, TrackerSpec],
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    specs = {**fake_specs, **{cls.name: TrackerSpec(name=cls.name, value=f"fake:{cls.__name__}", obj=cls,
                                                   distribution="tracklink", distribution_version="0.1.0",
                                                   _loaded=True) for cls in (FakeUploader, FakeInline)}}
    monkeypatch.setattr(cli, "discover", lambda: dict(specs))
    for name in ("TRACKLINK_DELIVERY", "TRACKLINK_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    selected = "fakeboard,fakeuploader,fakeinline"
    code, out = run_main(capsys, "doctor", "--json", "--report-to", selected)
    rows = {r["name"]: r for r in json.loads(out)["trackers"]}
    assert rows["fakeboard"]["delivery"].startswith(board)
    assert rows["fakeuploader"]["delivery"].startswith(uploader)
    assert rows["fakeinline"]["delivery"].startswith(inline)
    assert rows["fakecloud"]["delivery"] is None  # not selected
    assert code == (1 if "TRACKLINK_OFFLINE" in setting and "TRACKLINK_DELIVERY" in setting else 0)
    code, out = run_main(capsys, "doctor", "--report-to", selected)
    assert f"  delivery: {board}" in out


def test_doctor_names_a_tracker_that_cannot_be_built_in_process_mode(fake_specs: dict[str, TrackerSpec],
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(Tracker):
        name = "fakebroken"

        def __init__(self) -> None:
            raise ValueError("FAKEBROKEN_URL='ftp://x' is not an http(s) URL")

    fake_specs["fakebroken"] = TrackerSpec(name="fakebroken", value="fake:Broken", obj=Broken, _loaded=True,
                                           distribution="tracklink", distribution_version="0.1.0")
    monkeypatch.setattr(cli, "discover", lambda: dict(fake_specs))
    monkeypatch.setenv("TRACKLINK_DELIVERY", "process")
    code, out = run_main(capsys, "doctor", "--report-to", "fakebroken")
    assert "delivery: unknown: the tracker cannot be built (ValueError: FAKEBROKEN_URL='ftp://x'" in out
    assert code == 1 and "  - fakebroken: the tracker cannot be built (ValueError" in out, "training would fail"

    class OnlyInItsTask(Tracker):  # like Flyte's: built only inside the task that trains
        name = "fakeintask"

        def __init__(self) -> None:
            raise RuntimeError("FakeInTask must be created inside its task")

    fake_specs["fakeintask"] = TrackerSpec(name="fakeintask", value="fake:OnlyInItsTask", obj=OnlyInItsTask,
                                           _loaded=True, distribution="tracklink", distribution_version="0.1.0")
    code, out = run_main(capsys, "doctor", "--report-to", "fakeintask")
    assert "delivery: unknown: the tracker can only be built where it runs (RuntimeError" in out
    assert code == 0, "not a problem of these settings"


class FakeComet(Tracker):
    name = "comet_ml"
    extra = "comet"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_doctor_and_plugins_show_the_canonical_name_of_an_alias(how: str, fake_specs: dict[str, TrackerSpec],
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``comet`` (the extra's name) selects ``comet_ml``; what is shown is the tracker's own name."""
    fake_specs["comet_ml"] = TrackerSpec(name="comet_ml", value="fake:FakeComet", distribution="tracklink",
                                         distribution_version="0.1.0", obj=FakeComet, _loaded=True)
    argv: tuple[str, ...] = ("--report-to", "comet,fakeboard") if how == "flag" else ()
    if how == "env":
        monkeypatch.setenv("TRACKLINK_REPORT_TO", "comet,fakeboard")
    code, out = run_main(capsys, "doctor", *argv)
    assert code == 0, out
    assert "trackers: fakeboard, comet_ml" in out  # doctor lists in discovery order
    code, out = run_main(capsys, "doctor", "--json", *argv)
    report = json.loads(out)
    assert report["selected"] == ["fakeboard", "comet_ml"]  # rows in discovery order
    assert {row["name"] for row in report["trackers"]} == {"fakeboard", "fakecloud", "fakemissing", "comet_ml"}
    code, out = run_main(capsys, "plugins", "--json", *argv)
    rows = {row["name"]: row for row in json.loads(out)["trackers"]}
    assert rows["comet_ml"]["selected"] and rows["comet_ml"]["reason"] == "selected by report_to"
    monkeypatch.setenv("TRACKLINK_DISABLE", "comet")
    code, out = run_main(capsys, "plugins", "--json", *argv)
    rows = {row["name"]: row for row in json.loads(out)["trackers"]}
    assert not rows["comet_ml"]["selected"] and rows["comet_ml"]["reason"] == "disabled by TRACKLINK_DISABLE"


# -- with the real test plugin, in a subprocess -----------------------------------------------------------


def _plugin_installed() -> bool:
    try:
        importlib.metadata.distribution("tracklink-testplugin")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_plugin = pytest.mark.skipif(
    not _plugin_installed(),
    reason="tracklink-testplugin is not installed (pip install -e tests/plugins/tracklink-testplugin --no-deps)",
)


def run_cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("tracklink")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tracklink.cli"]
    return subprocess.run([*command, *argv], capture_output=True, text=True, env={**os.environ, **env},
                          timeout=120)


@needs_plugin
def test_subprocess_plugins_json() -> None:
    result = run_cli("plugins", "--json", "--report-to", "testrecorder,testhooks")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["trackers"]}
    for name in ("testrecorder", "testhooks"):
        assert ROW_KEYS <= set(rows[name])
        assert rows[name]["selected"] is True and rows[name]["source"] == "third-party"


@needs_plugin
def test_subprocess_doctor_hides_declared_secret(tmp_path: Path) -> None:
    env = {"TRACKLINK_TESTPLUGIN_API_KEY": SECRET, "TRACKLINK_TESTPLUGIN_OUT": str(tmp_path / "o.jsonl")}
    for argv in (("doctor", "--json", "--report-to", "testrecorder"), ("doctor", "--report-to", "testrecorder")):
        result = run_cli(*argv, **env)
        assert SECRET not in result.stdout and SECRET not in result.stderr
        assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(run_cli("doctor", "--json", "--report-to", "testrecorder", **env).stdout)
    row = next(r for r in report["trackers"] if r["name"] == "testrecorder")
    secret = next(v for v in row["env"] if v["name"] == "TRACKLINK_TESTPLUGIN_API_KEY")
    assert secret == {**secret, "set": True, "secret": True} and "value" not in secret
    assert row["ready"] is True


@needs_plugin
def test_subprocess_invalid_report_to() -> None:
    result = run_cli("plugins", TRACKLINK_REPORT_TO="testrecordr")
    assert result.returncode == 1
    assert "testrecordr" in result.stdout and "Did you mean 'testrecorder'" in result.stdout
