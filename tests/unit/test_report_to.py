"""``report_to`` resolution with fake tracker plugins (no SDK, no entry points needed).

Catalogue of bad inputs tried here and the error each must give:

    report_to value / environment                      expected error
    -------------------------------------------------  ------------------------------------------------------
    "wandbb"                                           UnknownTrackerError (a ValueError), "Did you mean 'wandb'",
                                                       lists the known names
    "tb"                                               UnknownTrackerError suggesting 'tensorboard' (a
                                                       suggestion only; "comet"/"azureml" are accepted aliases)
    "zzz"                                              UnknownTrackerError without a suggestion, known names listed
    ["tensorboard", "nope"]                            UnknownTrackerError for 'nope'
    "comet_ml" (SDK not installed)                     TrackerUnavailableError, 'pip install "tracklink[comet]"'
    "neptune" (SDK older than required)                TrackerUnavailableError naming both versions
    "broken" (plugin fails to load)                    TrackerUnavailableError naming the load error
    "none,wandb" / ["none", "tensorboard"]             ReportToError: 'none' combined with names
    "" / "  " / "," / []                               ReportToError: names nothing
    5 / 1.5 / True / {"wandb"} / {"wandb": 1} / b"x"   ReportToError naming the type and what is accepted
    ["wandb", 3] / ["wandb", None]                     ReportToError naming the bad item
    TRACKLINK_DISABLE="nosuch"                         ReportToError naming TRACKLINK_DISABLE and the known names
    TRACKLINK_REPORT_TO="none,tensorboard"             ReportToError naming TRACKLINK_REPORT_TO
    TRACKLINK_REPORT_TO="wandbb"                       UnknownTrackerError
    ACME_MODE="sideways" (declared choices)            ReportToError naming ACME_MODE, the value and the choices
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import types
from typing import Any

import pytest

from tracklink import (
    ReportToError,
    Tracker,
    TrackerUnavailableError,
    UnknownTrackerError,
    registry,
    resolve_report_to,
)
from tracklink.registry import GROUP, TrackerSpec
from tracklink.resolve import NOT_GIVEN
from tracklink.tracker import EnvVar, truthy

MISSING_SDK = "tracklink-test-no-such-sdk"


def fake_tracker(name: str, **attributes: Any) -> type[Tracker]:
    return type(f"Fake_{name}", (Tracker,), {"name": name, **attributes})


def _wandb_ready(cls: type, env: Any) -> str | None:
    return None if env.get("WANDB_API_KEY") or env.get("WANDB_MODE") == "offline" else "WANDB_API_KEY is not set"


def _wandb_disabled(cls: type, env: Any) -> str | None:
    return "disabled by WANDB_DISABLED" if truthy(env.get("WANDB_DISABLED")) else None


def _mlflow_disabled(cls: type, env: Any) -> str | None:
    return "disabled by DISABLE_MLFLOW_INTEGRATION" if truthy(env.get("DISABLE_MLFLOW_INTEGRATION")) else None


TRACKERS: dict[str, type[Tracker]] = {
    "comet_ml": fake_tracker("comet_ml", sdk=MISSING_SDK, extra="comet"),
    "dagshub": fake_tracker("dagshub", extra="dagshub"),
    "mlflow": fake_tracker("mlflow", extra="mlflow", disabled_by=classmethod(_mlflow_disabled)),
    "neptune": fake_tracker("neptune", sdk="pluggy", sdk_min_version="999.0", extra="neptune"),
    "tensorboard": fake_tracker("tensorboard", extra="tensorboard"),
    "wandb": fake_tracker("wandb", extra="wandb", ready=classmethod(_wandb_ready),
                          disabled_by=classmethod(_wandb_disabled)),
    "codecarbon": fake_tracker("codecarbon", extra="codecarbon", rank_policy="local_main"),
    "flyte": fake_tracker("flyte", extra="flyte", auto=False),
}
THIRD_PARTY = {
    "acme": fake_tracker("acme", env_vars=(EnvVar("ACME_MODE", "online", "mode", choices=("online", "offline")),)),
}


def make_spec(name: str, obj: Any, *, builtin: bool = True, load_error: str | None = None) -> TrackerSpec:
    return TrackerSpec(name=name, value=f"fake:{name}", distribution="tracklink" if builtin else "acme-tracklink",
                       distribution_version="1.0", obj=obj, load_error=load_error, _loaded=True)


@pytest.fixture
def specs() -> dict[str, TrackerSpec]:
    out = {name: make_spec(name, cls) for name, cls in TRACKERS.items()}
    out.update({name: make_spec(name, cls, builtin=False) for name, cls in THIRD_PARTY.items()})
    return out


def resolve(value: Any, specs: dict[str, TrackerSpec], **env: str) -> Any:
    return resolve_report_to(value, env=env, specs=specs)


# -- "all" ------------------------------------------------------------------------------------------


def test_all_selects_installed_ready_enabled_trackers_in_order(specs: dict[str, TrackerSpec]) -> None:
    resolution = resolve("all", specs)
    assert resolution.names == ["dagshub", "tensorboard", "codecarbon", "acme"]
    skipped = resolution.skipped
    assert "not installed" in skipped["comet_ml"] and MISSING_SDK in skipped["comet_ml"]
    assert "older than the required 999.0" in skipped["neptune"]
    assert skipped["wandb"] == "WANDB_API_KEY is not set"
    assert "never chosen by 'all'" in skipped["flyte"]
    assert "dagshub" in skipped["mlflow"]  # dagshub already logs to MLflow
    assert set(skipped) | set(resolution.names) == set(specs)
    assert resolution.banner() == "trackers: dagshub, tensorboard, codecarbon, acme"
    assert [s.name for s in resolution.selected_specs()] == resolution.names


def test_all_with_ready_wandb_and_disables(specs: dict[str, TrackerSpec]) -> None:
    resolution = resolve("all", specs, WANDB_API_KEY="x" * 40, TRACKLINK_DISABLE="Dagshub, codecarbon")
    assert resolution.names == ["mlflow", "tensorboard", "wandb", "acme"]
    assert resolution.skipped["dagshub"] == "disabled by TRACKLINK_DISABLE"
    assert resolution.skipped["codecarbon"] == "disabled by TRACKLINK_DISABLE"


def test_all_respects_tracker_switches(specs: dict[str, TrackerSpec]) -> None:
    resolution = resolve("all", specs, WANDB_API_KEY="k" * 40, WANDB_DISABLED="true",
                         DISABLE_MLFLOW_INTEGRATION="TRUE", TRACKLINK_DISABLE="dagshub")
    assert "wandb" not in resolution.names and resolution.skipped["wandb"] == "disabled by WANDB_DISABLED"
    assert resolution.skipped["mlflow"] == "disabled by DISABLE_MLFLOW_INTEGRATION"


def test_all_skips_plugins_that_fail_to_load(specs: dict[str, TrackerSpec]) -> None:
    specs["broken"] = make_spec("broken", None, builtin=False, load_error="ImportError: no module named x")
    resolution = resolve("all", specs)
    assert "broken" not in resolution.names
    assert "failed to load" in resolution.skipped["broken"] and "no module named x" in resolution.skipped["broken"]
    with pytest.raises(TrackerUnavailableError, match="no module named x"):
        resolve("broken", specs)


def test_all_combined_with_names(specs: dict[str, TrackerSpec]) -> None:
    # an explicitly named tracker is used even when not ready (it was asked for)
    assert resolve("all,wandb", specs).names == ["dagshub", "tensorboard", "codecarbon", "acme", "wandb"]
    assert resolve("wandb,all", specs).names == ["wandb", "dagshub", "tensorboard", "codecarbon", "acme"]


def test_discover_orders_builtin_then_third_party(monkeypatch: pytest.MonkeyPatch) -> None:
    """discover() gives the documented 'all' order whatever order the entry points come in."""

    class FakeEntryPoint:
        def __init__(self, name: str, obj: Any, dist: str) -> None:
            self.name, self.value, self.group, self._obj = name, f"fake:{name}", GROUP, obj
            self.dist = types.SimpleNamespace(metadata={"Name": dist}, version="1.0")

        def load(self) -> Any:
            return self._obj

    entry_points = [
        FakeEntryPoint("zeta", TRACKERS["tensorboard"], "zeta-plugin"),
        FakeEntryPoint("wandb", TRACKERS["wandb"], "tracklink"),
        FakeEntryPoint("alpha", type("AlphaPlugin", (), {}), "alpha-plugin"),
        FakeEntryPoint("tensorboard", object(), "evil-plugin"),  # a third party claiming a built-in name
        FakeEntryPoint("tensorboard", TRACKERS["tensorboard"], "tracklink"),
        FakeEntryPoint("comet_ml", TRACKERS["comet_ml"], "tracklink"),
        FakeEntryPoint("azure_ml", TRACKERS["tensorboard"], "tracklink"),
    ]
    fake_metadata = types.SimpleNamespace(
        entry_points=lambda group: [ep for ep in entry_points if ep.group == group],
        version=importlib.metadata.version,
        PackageNotFoundError=importlib.metadata.PackageNotFoundError,
    )
    monkeypatch.setattr(registry, "metadata", fake_metadata)
    found = registry.discover()
    assert list(found) == ["azure_ml", "comet_ml", "tensorboard", "wandb", "alpha", "zeta"]
    assert found["tensorboard"].source == "builtin" and found["tensorboard"].distribution == "tracklink"
    assert found["alpha"].source == "third-party"
    assert found["alpha"].install_hint() == "pip install alpha-plugin"
    resolution = resolve_report_to("all", env={})  # specs come from discover()
    assert resolution.names == ["azure_ml", "tensorboard", "alpha", "zeta"]


# -- "none" and explicit names ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["none", "NONE", " None ", ["none"], None])
def test_none(value: Any, specs: dict[str, TrackerSpec]) -> None:
    resolution = resolve(value, specs)
    assert resolution.names == []
    assert resolution.banner() == "trackers: none"
    assert set(resolution.skipped) == set(specs)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tensorboard", ["tensorboard"]),
        ("TensorBoard", ["tensorboard"]),
        ("tensorboard,acme", ["tensorboard", "acme"]),
        (" acme , tensorboard ", ["acme", "tensorboard"]),
        (["acme", "tensorboard"], ["acme", "tensorboard"]),
        (("tensorboard",), ["tensorboard"]),
        (["tensorboard,acme", "ACME"], ["tensorboard", "acme"]),
        ("tensorboard,tensorboard,TENSORBOARD", ["tensorboard"]),
        ("dagshub,mlflow", ["dagshub", "mlflow"]),
        ("all,mlflow", ["dagshub", "tensorboard", "codecarbon", "acme", "mlflow"]),
        ("mlflow,all", ["mlflow", "dagshub", "tensorboard", "codecarbon", "acme"]),
        ("flyte", ["flyte"]),
        ("wandb", ["wandb"]),  # not ready, but asked for by name
    ],
)
def test_explicit_names(value: Any, expected: list[str], specs: dict[str, TrackerSpec]) -> None:
    assert resolve(value, specs).names == expected


def test_dagshub_replaces_mlflow_only_under_all(specs: dict[str, TrackerSpec]) -> None:
    resolution = resolve("all", specs)
    assert "dagshub" in resolution.names and "mlflow" not in resolution.names
    assert "mlflow" in resolve("all", specs, TRACKLINK_DISABLE="dagshub").names


def test_explicit_disabled_name_is_skipped_with_warning(specs: dict[str, TrackerSpec],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        resolution = resolve("wandb,tensorboard", specs, TRACKLINK_DISABLE="wandb")
    assert resolution.names == ["tensorboard"]
    assert resolution.skipped["wandb"] == "disabled by TRACKLINK_DISABLE"
    assert any("wandb" in r.getMessage() and "TRACKLINK_DISABLE" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        assert resolve("wandb", specs, WANDB_DISABLED="1").names == []
    assert "WANDB_DISABLED" in caplog.text


def test_a_disabled_name_needs_no_sdk(specs: dict[str, TrackerSpec]) -> None:
    # comet_ml's SDK is missing, but it is disabled anyway: no install error
    assert resolve("comet_ml,tensorboard", specs, TRACKLINK_DISABLE="comet_ml").names == ["tensorboard"]


# -- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "suggestion"),
    [("wandbb", "wandb"), ("tb", "tensorboard"), ("tensorbord", "tensorboard"), ("WANDB_", "wandb"),
     ("flytekit", "flyte"), ("zzz", None)],
)
def test_unknown_name(value: str, suggestion: str | None, specs: dict[str, TrackerSpec]) -> None:
    with pytest.raises(UnknownTrackerError) as info:
        resolve(value, specs)
    error = info.value
    assert isinstance(error, ValueError) and isinstance(error, ReportToError)
    assert error.suggestion == suggestion
    message = str(error)
    assert repr(value.lower()) in message
    if suggestion:
        assert f"Did you mean {suggestion!r}" in message
    else:
        assert "Did you mean" not in message
    for name in specs:
        assert name in message
    assert error.known == sorted(specs)


def test_unknown_name_in_a_list(specs: dict[str, TrackerSpec]) -> None:
    with pytest.raises(UnknownTrackerError, match="'nope'"):
        resolve(["tensorboard", "nope"], specs)


def test_known_name_with_missing_sdk(specs: dict[str, TrackerSpec]) -> None:
    with pytest.raises(TrackerUnavailableError) as info:
        resolve("tensorboard,comet_ml", specs)
    error = info.value
    assert isinstance(error, ValueError) and not isinstance(error, UnknownTrackerError)
    assert error.install_hint == 'pip install "tracklink[comet]"'
    assert 'pip install "tracklink[comet]"' in str(error) and "comet_ml" in str(error)
    assert MISSING_SDK in str(error)


def test_known_name_with_too_old_sdk(specs: dict[str, TrackerSpec]) -> None:
    with pytest.raises(TrackerUnavailableError) as info:
        resolve("neptune", specs)
    message = str(info.value)
    assert importlib.metadata.version("pluggy") in message and "999.0" in message
    assert 'pip install "tracklink[neptune]"' in message


def test_install_hint_of_plain_plugins() -> None:
    class Plain:  # not a Tracker: no install_hint classmethod
        sdk = MISSING_SDK

    builtin = make_spec("dvclive", Plain)
    third = make_spec("acme2", Plain, builtin=False)
    with pytest.raises(TrackerUnavailableError, match=r'pip install "tracklink\[dvclive\]"'):
        resolve("dvclive", {"dvclive": builtin})
    with pytest.raises(TrackerUnavailableError, match="pip install acme-tracklink"):
        resolve("acme2", {"acme2": third})


@pytest.mark.parametrize("value", ["none,wandb", ["none", "tensorboard"], "all,none"])
def test_none_mixed_with_names(value: Any, specs: dict[str, TrackerSpec]) -> None:
    with pytest.raises(ReportToError, match="'none'") as info:
        resolve(value, specs)
    assert not isinstance(info.value, (UnknownTrackerError, TrackerUnavailableError))


@pytest.mark.parametrize("value", [[], ()])
def test_empty_list_means_none(value: Any, specs: dict[str, TrackerSpec]) -> None:
    # an empty list is what a resolved "none" looks like (args.report_to after report_to="none")
    assert resolve(value, specs).names == []


@pytest.mark.parametrize("value", ["", "   ", ",", " , ,"])
def test_empty_values(value: Any, specs: dict[str, TrackerSpec]) -> None:
    with pytest.raises(ReportToError, match="names nothing"):
        resolve(value, specs)


@pytest.mark.parametrize("value", [5, 1.5, True, {"wandb"}, {"wandb": 1}, b"wandb", object()])
def test_wrong_types(value: Any, specs: dict[str, TrackerSpec]) -> None:
    with pytest.raises(ReportToError) as info:
        resolve(value, specs)
    message = str(info.value)
    assert type(value).__name__ in message and "accepted" in message and "'all'" in message


@pytest.mark.parametrize("value", [["wandb", 3], ["wandb", None], ("tensorboard", ["acme"])])
def test_wrong_item_types(value: Any, specs: dict[str, TrackerSpec]) -> None:
    with pytest.raises(ReportToError, match="contains"):
        resolve(value, specs)


def test_unknown_name_in_tracklink_disable(specs: dict[str, TrackerSpec]) -> None:
    with pytest.raises(ReportToError, match=r"TRACKLINK_DISABLE.*nosuch") as info:
        resolve("all", specs, TRACKLINK_DISABLE="tensorboard,nosuch")
    assert "tensorboard" in str(info.value)


# -- TRACKLINK_REPORT_TO ---------------------------------------------------------------------------


def test_env_used_only_when_argument_not_given(specs: dict[str, TrackerSpec]) -> None:
    env = {"TRACKLINK_REPORT_TO": "acme,tensorboard"}
    assert resolve_report_to(env=env, specs=specs).names == ["acme", "tensorboard"]
    assert resolve_report_to(NOT_GIVEN, env=env, specs=specs).names == ["acme", "tensorboard"]
    assert resolve_report_to("tensorboard", env=env, specs=specs).names == ["tensorboard"]
    assert resolve_report_to("none", env=env, specs=specs).names == []
    assert resolve_report_to(None, env=env, specs=specs).names == []  # explicit None is "none", not "not given"
    assert resolve_report_to("all", env=env, specs=specs).names == ["dagshub", "tensorboard", "codecarbon", "acme"]


def test_default_is_all_when_env_unset_or_blank(specs: dict[str, TrackerSpec]) -> None:
    everything = resolve("all", specs).names
    assert resolve_report_to(env={}, specs=specs).names == everything
    assert resolve_report_to(env={"TRACKLINK_REPORT_TO": "  "}, specs=specs).names == everything


def test_invalid_env_value_names_the_variable(specs: dict[str, TrackerSpec]) -> None:
    with pytest.raises(ReportToError, match="TRACKLINK_REPORT_TO"):
        resolve_report_to(env={"TRACKLINK_REPORT_TO": "none,tensorboard"}, specs=specs)
    with pytest.raises(UnknownTrackerError, match="wandb"):
        resolve_report_to(env={"TRACKLINK_REPORT_TO": "wandbb"}, specs=specs)
    # an invalid env value does not matter when the argument is given
    assert resolve_report_to("tensorboard", env={"TRACKLINK_REPORT_TO": "wandbb"}, specs=specs).names == [
        "tensorboard"]


# -- tracker settings ------------------------------------------------------------------------------


def test_env_problems_of_selected_trackers_raise(specs: dict[str, TrackerSpec]) -> None:
    with pytest.raises(ReportToError) as info:
        resolve("acme", specs, ACME_MODE="sideways")
    message = str(info.value)
    assert "ACME_MODE" in message and "'sideways'" in message and "online, offline" in message
    with pytest.raises(ReportToError, match="ACME_MODE"):
        resolve("all", specs, ACME_MODE="sideways")
    # values are compared case-insensitively; a tracker that is not selected is not checked
    assert resolve("acme", specs, ACME_MODE="OFFLINE").names == ["acme"]
    assert resolve("tensorboard", specs, ACME_MODE="sideways").names == ["tensorboard"]
    assert resolve("all", specs, ACME_MODE="sideways", TRACKLINK_DISABLE="acme").names == [
        "dagshub", "tensorboard", "codecarbon"]


def test_resolution_reads_os_environ_by_default(specs: dict[str, TrackerSpec],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_REPORT_TO", "acme")
    monkeypatch.setenv("TRACKLINK_DISABLE", "tensorboard")
    assert resolve_report_to(specs=specs).names == ["acme"]
    assert "tensorboard" not in resolve_report_to("all", specs=specs).names


def test_unknown_name_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import tracklink

    monkeypatch.setenv("TRACKLINK_REPORT_TO", "tensorbord")
    with pytest.raises(tracklink.UnknownTrackerError, match="TRACKLINK_REPORT_TO='tensorbord' names unknown tracker"):
        tracklink.resolve_report_to()


# -- aliases: the extras' names ------------------------------------------------------------------------


@pytest.fixture
def installed_specs(specs: dict[str, TrackerSpec]) -> dict[str, TrackerSpec]:
    """The fake trackers plus installed ``comet_ml`` and ``azure_ml`` (the ones the extras' names alias)."""
    specs["comet_ml"] = make_spec("comet_ml", fake_tracker("comet_ml", extra="comet"))
    specs["azure_ml"] = make_spec("azure_ml", fake_tracker("azure_ml", extra="azureml"))
    return specs


@pytest.mark.parametrize(("value", "expected"), [
    ("comet", ["comet_ml"]),
    ("azureml", ["azure_ml"]),
    ("Comet, AzureML", ["comet_ml", "azure_ml"]),
    (["comet", "comet_ml", "tensorboard"], ["comet_ml", "tensorboard"]),  # one tracker, named twice
    ("azure_ml,azureml", ["azure_ml"]),
])
def test_extra_names_are_aliases(value: Any, expected: list[str], installed_specs: dict[str, TrackerSpec]) -> None:
    resolution = resolve(value, installed_specs)
    assert resolution.names == expected
    assert resolution.requested == expected
    assert resolution.banner() == "trackers: " + ", ".join(expected)
    assert [s.name for s in resolution.selected_specs()] == expected
    assert "comet" not in resolution.skipped and "azureml" not in resolution.skipped


def test_aliases_in_the_environment(installed_specs: dict[str, TrackerSpec]) -> None:
    assert resolve(NOT_GIVEN, installed_specs, TRACKLINK_REPORT_TO="comet").names == ["comet_ml"]
    resolution = resolve("comet_ml,azure_ml,tensorboard", installed_specs, TRACKLINK_DISABLE="comet, AZUREML")
    assert resolution.names == ["tensorboard"]
    assert resolution.skipped["comet_ml"] == resolution.skipped["azure_ml"] == "disabled by TRACKLINK_DISABLE"
    everything = resolve("all", installed_specs, TRACKLINK_DISABLE="azureml")
    assert "azure_ml" not in everything.names and "comet_ml" in everything.names
    assert everything.skipped["azure_ml"] == "disabled by TRACKLINK_DISABLE"


def test_alias_of_a_tracker_whose_sdk_is_missing_names_the_tracker(specs: dict[str, TrackerSpec]) -> None:
    with pytest.raises(TrackerUnavailableError) as info:
        resolve("comet", specs)  # the fake comet_ml's SDK is not installed
    assert "'comet_ml'" in str(info.value) and MISSING_SDK in str(info.value)
    assert resolve("comet,tensorboard", specs, TRACKLINK_DISABLE="comet").names == ["tensorboard"]


def test_alias_without_its_tracker_is_unknown(specs: dict[str, TrackerSpec]) -> None:
    assert "azure_ml" not in specs
    with pytest.raises(UnknownTrackerError) as info:
        resolve("azureml", specs)
    assert info.value.suggestion is None
    with pytest.raises(ReportToError, match="TRACKLINK_DISABLE names unknown tracker 'azureml'"):
        resolve("tensorboard", specs, TRACKLINK_DISABLE="azureml")


def test_a_plugin_registered_under_an_alias_name_wins(installed_specs: dict[str, TrackerSpec]) -> None:
    installed_specs["comet"] = make_spec("comet", fake_tracker("comet"), builtin=False)
    assert resolve("comet", installed_specs).names == ["comet"]
    assert resolve("comet,comet_ml", installed_specs).names == ["comet", "comet_ml"]


def test_builtin_extras_name_every_tracker_and_its_alias() -> None:
    """pyproject.toml has an extra under each built-in tracker's report_to name (``comet_ml`` as
    ``comet-ml``), and one under each alias (the older extra names ``comet`` and ``azureml`` keep working)."""
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    from tracklink.resolve import ALIASES

    def normalized(name: str) -> str:  # extra names as metadata and pip >= 23.3 compare them (PEP 685)
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    extras = {normalized(name): requirements for name, requirements in project["optional-dependencies"].items()}
    names = {normalized(name) for name in project["entry-points"]["tracklink.trackers"]}
    assert names <= set(extras), sorted(names - set(extras))
    # written with "-" in pyproject.toml: pip 23.2.1 does not normalize a requested [comet_ml]
    assert not [name for name in project["optional-dependencies"] if "_" in name]
    for alias, name in ALIASES.items():
        assert normalized(name) in names and alias in extras
        assert sorted(extras[alias]) == sorted(extras[normalized(name)]), f"[{alias}] and [{name}] differ"


def test_install_hint_of_a_plain_builtin_plugin_names_the_extra_as_written() -> None:
    class Plain:  # not a Tracker: the hint is derived from the report_to name
        sdk = MISSING_SDK

    with pytest.raises(TrackerUnavailableError, match=r'pip install "tracklink\[azure-ml\]"'):
        resolve("azure_ml", {"azure_ml": make_spec("azure_ml", Plain)})
