"""pyproject.toml's extras, the lock files and the install commands tracklink prints agree.

Bad behaviours caught:
* the lock (``requirements/sdks.lock.txt``) pins a version an extra excludes, so
  ``pip install -c requirements/sdks.lock.txt ".[all]"`` (the documented quick install) cannot resolve;
* an environment the project builds gets graphene 2 (MLflow's GraphQL module then fails to import and
  the MLflow UI's ``/graphql`` requests answer 500): the lock, or an extra that installs MLflow without
  ``graphene>=3``;
* an extra of ``[all]`` missing from the lock (``[all]`` and the full test environment drifted apart);
* the install hint ``pip install "tracklink[<extra>]"`` needing tracklink on a package index: it must
  resolve against the installed tracklink (checked with ``pip --no-index``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
EXTRAS: dict[str, list[str]] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
    "optional-dependencies"
]
LOCKS = sorted((ROOT / "requirements").glob("*.lock.txt"))


def pins(lock: Path) -> dict[str, Version]:
    found = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match:
            found[canonicalize_name(match.group(1))] = Version(match.group(2))
    return found


SDKS_LOCK = pins(ROOT / "requirements" / "sdks.lock.txt")


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_the_sdk_lock_satisfies_every_extra(extra: str) -> None:
    """Each requirement of each extra accepts the locked version (where the lock has the package)."""
    for text in EXTRAS[extra]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"python_version": "3.11"}):
            continue
        locked = SDKS_LOCK.get(canonicalize_name(requirement.name))
        if locked is not None:
            assert requirement.specifier.contains(locked, prereleases=True), (
                f"[{extra}] asks for {text!r}, the lock pins {requirement.name}=={locked}"
            )


def test_the_sdk_lock_has_everything_all_installs() -> None:
    missing = [text for text in EXTRAS["all"] if canonicalize_name(Requirement(text).name) not in SDKS_LOCK]
    assert missing == []


@pytest.mark.parametrize("lock", LOCKS, ids=[p.name for p in LOCKS])
def test_no_lock_pins_a_broken_graphene(lock: Path) -> None:
    locked = pins(lock)
    if "graphene" in locked or "mlflow" in locked:
        assert locked.get("graphene", Version("0")) >= Version("3"), f"{lock.name}: graphene {locked.get('graphene')}"
        assert locked["graphql-core"] < Version("3.3"), "graphene 3 needs graphql-core < 3.3"


@pytest.mark.parametrize("extra", [e for e in sorted(EXTRAS) if any(
    canonicalize_name(Requirement(t).name) in ("mlflow", "dagshub") for t in EXTRAS[e])])
def test_extras_installing_mlflow_exclude_graphene_2(extra: str) -> None:
    graphene = [Requirement(t) for t in EXTRAS[extra] if canonicalize_name(Requirement(t).name) == "graphene"]
    assert graphene, f"[{extra}] installs MLflow without a graphene>=3 requirement"
    assert not graphene[0].specifier.contains("2.0") and graphene[0].specifier.contains("3.4.3")


def test_install_hint_resolves_against_the_installed_tracklink(tmp_path: Path) -> None:
    """``pip install "tracklink[x]"``, as the install hint prints it, works without tracklink on any
    index: pip takes the installed tracklink and installs only the extra's packages. Checked offline
    (``--no-index``): pip must not look for tracklink itself."""
    try:
        installed = importlib.metadata.distribution("tracklink")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tracklink is not installed as a distribution")
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed in this environment")
    extras = {canonicalize_name(e) for e in installed.metadata.get_all("Provides-Extra") or []}
    assert {"all", "comet-ml", "azure-ml"} <= extras  # extras are normalized in metadata (PEP 685)
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PIP_FIND_LINKS", None)
    env.pop("PIP_CONSTRAINT", None)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "tracklink[all]"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert "No matching distribution found for tracklink" not in output
    if result.returncode != 0:  # some SDK of [all] is not installed: pip went on to the extra's packages
        assert "Could not find a version that satisfies the requirement" in output, output[-3000:]
        assert "(from tracklink[all])" in output, output[-3000:]
