"""A tracker's SDK may come from alternative distributions (``mlflow`` or ``mlflow-skinny``): any one
installed counts, for ``tracklink plugins`` and for ``report_to``, read from package metadata only.

Distributions are real ``*.dist-info`` directories written into a temp dir put first on ``sys.path``;
a distribution that is really installed here is hidden at the ``importlib.metadata.version`` boundary.
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

from tracklink import Tracker, TrackerUnavailableError, resolve_report_to
from tracklink.registry import TrackerSpec, discover

FULL, SLIM = "tracklink-test-fullsdk", "tracklink-test-slimsdk"


def install_distribution(site: Path, name: str, version: str, top_level: str) -> None:
    """A minimal installed distribution: what pip leaves in site-packages besides the code."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(f"{top_level}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def hide_distributions(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``importlib.metadata`` report these distributions as not installed."""
    hidden = {n.lower().replace("_", "-") for n in names}
    real = importlib.metadata.version

    def version(name: str) -> str:
        if name.lower().replace("_", "-") in hidden:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)


class Alternatives(Tracker):
    name = "alternatives"
    sdk = (FULL, SLIM)
    sdk_module = "tracklink_test_sdk"
    extra = "alternatives"


def spec_of(cls: type, name: str | None = None) -> TrackerSpec:
    return TrackerSpec(name=name or cls.name, value=f"fake:{cls.__name__}", distribution="tracklink",
                       distribution_version="0.1.0", obj=cls, _loaded=True)


def test_either_alternative_installs_the_sdk(site: Path) -> None:
    spec = spec_of(Alternatives)
    assert spec.sdk_distributions == (FULL, SLIM)
    assert spec.availability() == f"its SDK ({FULL} or {SLIM}) is not installed"
    assert spec.sdk == FULL and spec.sdk_version is None  # what is missing: the preferred one
    assert Alternatives.install_hint() == 'pip install "tracklink[alternatives]"'

    install_distribution(site, SLIM, "2.5.0", "tracklink_test_sdk")
    assert spec.availability() is None
    assert (spec.sdk, spec.sdk_version) == (SLIM, "2.5.0")
    assert resolve_report_to(["alternatives"], env={}, specs={"alternatives": spec}).names == ["alternatives"]

    install_distribution(site, FULL, "2.6.0", "tracklink_test_sdk")
    assert (spec.sdk, spec.sdk_version) == (FULL, "2.6.0"), "the preferred one first when both are installed"


def test_minimum_version_applies_to_the_installed_alternative(site: Path) -> None:
    install_distribution(site, SLIM, "1.2", "tracklink_test_sdk")
    old = type("OldAlternatives", (Alternatives,), {"sdk_min_version": "2.0"})
    spec = spec_of(old)
    assert spec.availability() == f"its SDK {SLIM} 1.2 is older than the required 2.0"
    with pytest.raises(TrackerUnavailableError, match=f"{SLIM} 1.2 is older"):
        resolve_report_to(["alternatives"], env={}, specs={"alternatives": spec})


def test_single_distribution_declarations_keep_working(site: Path) -> None:
    single = type("Single", (Tracker,), {"name": "single", "sdk": SLIM, "extra": None})
    spec = spec_of(single)
    assert spec.sdk_distributions == (SLIM,) and spec.availability() == f"its SDK ({SLIM}) is not installed"
    assert single.install_hint() == f"pip install {SLIM}"
    install_distribution(site, SLIM, "0.3", "tracklink_test_sdk")
    assert spec.availability() is None and spec.sdk_version == "0.3"
    assert spec_of(type("NoSdk", (Tracker,), {"name": "nosdk"})).sdk_distributions == ()


# -- MLflow: mlflow-skinny alone ---------------------------------------------------------------------


def test_mlflow_skinny_alone_provides_mlflow(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_distribution(site, "mlflow-skinny", "3.1.0", "mlflow")
    hide_distributions(monkeypatch, "mlflow")
    spec = discover()["mlflow"]
    assert spec.availability() is None
    assert (spec.sdk, spec.sdk_version) == ("mlflow-skinny", "3.1.0")
    assert resolve_report_to(["mlflow"], env={}).names == ["mlflow"]

    hide_distributions(monkeypatch, "mlflow", "mlflow-skinny")  # now neither
    with pytest.raises(TrackerUnavailableError, match=r"mlflow or mlflow-skinny\) is not installed"):
        resolve_report_to(["mlflow"], env={})


def test_tensorboardx_alone_provides_tensorboard_with_its_own_minimum(site: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The TensorBoard tracker falls back to tensorboardX, whose versions are numbered on their own."""
    hide_distributions(monkeypatch, "tensorboard", "tb-nightly")
    install_distribution(site, "tensorboardX", "2.1", "tensorboardX")  # first on sys.path: found first
    spec = discover()["tensorboard"]
    assert spec.availability() == "its SDK tensorboardX 2.1 is older than the required 2.2"
    assert spec.sdk_min_version == "2.2"
    (site / "tensorboardX-2.1.dist-info").rename(site / "tensorboardX-2.6.2.dist-info")
    (site / "tensorboardX-2.6.2.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tensorboardX\nVersion: 2.6.2\n")
    assert spec.availability() is None and (spec.sdk, spec.sdk_version) == ("tensorboardX", "2.6.2")
    assert resolve_report_to(["tensorboard"], env={}).names == ["tensorboard"]


def test_neptune_client_provides_neptune(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_distribution(site, "neptune-client", "1.10.0", "neptune")
    hide_distributions(monkeypatch, "neptune")
    spec = discover()["neptune"]
    assert spec.availability() is None and (spec.sdk, spec.sdk_version) == ("neptune-client", "1.10.0")
    hide_distributions(monkeypatch, "neptune", "neptune-client")
    assert "neptune or neptune-client" in (spec.availability() or "")


def test_tracklink_plugins_with_only_mlflow_skinny_imports_no_sdk(site: Path) -> None:
    """``tracklink plugins`` in a fresh interpreter: the skinny build counts, and mlflow is not imported."""
    install_distribution(site, "mlflow-skinny", "3.1.0", "mlflow")
    code = (
        "import importlib.metadata as m, json, sys\n"
        "real = m.version\n"
        "def version(name):\n"
        "    if name.lower() == 'mlflow':\n"
        "        raise m.PackageNotFoundError(name)\n"
        "    return real(name)\n"
        "m.version = version\n"
        "from tracklink.cli import main\n"
        "main(['plugins', '--json', '--report-to', 'mlflow'])\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] == 'mlflow')), file=sys.stderr)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=site.parent, env=env)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    row = next(r for r in report["trackers"] if r["name"] == "mlflow")
    assert report["error"] is None
    assert row["installed"] is True and row["selected"] is True
    assert (row["sdk"], row["sdk_version"]) == ("mlflow-skinny", "3.1.0")
    assert json.loads(result.stderr.strip().splitlines()[-1]) == [], "the SDK must not be imported"


def test_mlflow_skinny_alone_cannot_use_a_database_store(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The skinny build has no SQLAlchemy: MLflow's default sqlite store would fail at the first call."""
    from tracklink.integrations import MLflowCallback

    install_distribution(site, "mlflow-skinny", "3.1.0", "mlflow")
    hide_distributions(monkeypatch, "mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    resolution = resolve_report_to("all", env={})
    assert "mlflow" not in resolution.names
    assert "only mlflow-skinny is installed and MLFLOW_TRACKING_URI is not set" in resolution.skipped["mlflow"]
    with pytest.raises(ValueError, match=r"MLFLOW_TRACKING_URI is not set: that store needs the full mlflow"):
        MLflowCallback()
    for uri in ("sqlite:///runs.db", "postgresql+psycopg2://db/mlflow"):
        assert "needs the full mlflow" in (MLflowCallback.ready({"MLFLOW_TRACKING_URI": uri}) or "")
    assert MLflowCallback.ready({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    MLflowCallback()  # a tracking server: fine
