"""The tracker contract, checked for every registered tracker plugin (built-in and third-party).

For each entry point of ``tracklink.trackers``: its declarations (name, SDK, extra, environment
variables, rank policy, docs page), lazy import (no SDK imported by importing the plugin), rank gating
(never constructed on a rank its policy excludes), and — for ``Tracker`` subclasses — isolation,
close-once, redaction and the resume hooks. The lifecycle checks replace the SDK-facing methods
(``setup``, ``log_*``, ``finish``, ``run_identity``) with recorders, so they test the tracker's event
plumbing on top of the base class without a backend; the real SDKs are exercised in
``tests/integration``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import tracklink
from helpers import SECRET_ENV, SECRET_ENV_VAR, SECRETS, make_trainer, raise_at, stop_at
from tracklink.process import RANK_POLICIES, ProcessInfo
from tracklink.redact import is_secret_key
from tracklink.registry import BUILTIN_ORDER, discover
from tracklink.tracker import EnvVar, Tracker

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SPECS = discover()
SDK_MODULES = ("wandb", "mlflow", "comet_ml", "neptune", "clearml", "dvclive", "dvc", "codecarbon", "azureml",
               "dagshub", "flytekit", "tensorboard", "tensorboardX", "trackio", "swanlab", "torch", "transformers")

# Environment some trackers need just to be selectable (they check it before training).
SELECT_ENV = {"dagshub": {"MLFLOW_TRACKING_URI": "https://dagshub.com/owner/repo.mlflow"}}


def _spec_params(filter_fn: Any = None) -> list[Any]:
    return [pytest.param(spec, id=name) for name, spec in SPECS.items() if filter_fn is None or filter_fn(spec)]


def _is_tracker_class(spec: Any) -> bool:
    obj = spec.load()
    return isinstance(obj, type) and issubclass(obj, Tracker)


def test_every_builtin_tracker_is_registered() -> None:
    builtins = {name for name, spec in SPECS.items() if spec.source == "builtin"}
    assert builtins == set(BUILTIN_ORDER)


@pytest.mark.parametrize("spec", _spec_params())
def test_declarations(spec: Any) -> None:
    obj = spec.load()
    assert spec.load_error is None, spec.load_error
    assert spec.rank_policy in RANK_POLICIES
    if not _is_tracker_class(spec):
        return  # a plain hookimpl plugin gets the defaults: ready, main rank, no SDK
    assert obj.name == spec.name, "the class's name must be its report_to name"
    for var in obj.env_vars:
        assert isinstance(var, EnvVar) and var.name and var.help, var
        if is_secret_key(var.name):
            assert var.secret, f"{var.name} looks secret but is not declared secret"
        assert var.read_by in ("tracklink", "sdk")
    names = [var.name for var in obj.env_vars]
    assert len(names) == len(set(names)), "each variable declared once"
    # media: the kinds log_media renders are known ones, and a tracker that declares any implements log_media
    assert set(obj.media) <= {"image", "histogram", "table", "figure"}, obj.media
    assert not obj.media or obj.log_media is not Tracker.log_media, "declares media without log_media"
    assert all(isinstance(p, str) and p for p in obj.media_reserved)
    assert obj.max_image_bytes is None or obj.max_image_bytes > 0
    if spec.source != "builtin":
        return
    extras = PYPROJECT["project"]["optional-dependencies"]
    if obj.sdk is None:  # a tracker that needs no SDK (kubeflow speaks HTTPS with the standard library)
        assert obj.extra is None and obj.sdk_module is None and obj.sdk_min_version is None
        assert extras.get(spec.name.replace("_", "-"), []) == [], "its extra, if any, installs nothing"
    else:
        assert obj.sdk and obj.extra and obj.sdk_module, "built-in trackers declare their SDK and extra"
        _check_extra(obj)
    page = ROOT / "docs" / "trackers" / f"{spec.name}.md"
    assert page.is_file(), f"no docs page {page}"
    assert f"{{tracklink-env-vars}} {spec.name}" in page.read_text()
    assert f"{{tracklink-media}} {spec.name}" in page.read_text(), "the page shows what media values become"
    assert obj.__module__.startswith("tracklink.integrations.")
    assert getattr(tracklink.integrations, type(obj).__name__ if not isinstance(obj, type) else obj.__name__) is obj


def _check_extra(obj: Any) -> None:
    sdk = obj.sdk if isinstance(obj.sdk, str) else obj.sdk[0]  # the preferred one of alternatives
    assert isinstance(obj.sdk, str) or (obj.sdk and all(isinstance(d, str) and d for d in obj.sdk)), obj.sdk
    extras = PYPROJECT["project"]["optional-dependencies"]
    requirement = next((r for r in extras[obj.extra] if re.split(r"[<>=!~\[ ;]", r)[0].lower() == sdk.lower()), None)
    assert requirement is not None, f"extra [{obj.extra}] does not install {sdk}"
    minimum = obj.sdk_min_version.get(sdk) if isinstance(obj.sdk_min_version, dict) else obj.sdk_min_version
    if minimum:  # the extra installs the preferred distribution at its declared minimum
        assert f">={minimum}" in requirement, (requirement, minimum)
    assert any(re.split(r"[<>=!~\[ ;]", r)[0].lower() == sdk.lower() for r in extras["all"]), "missing from [all]"


def test_importing_plugins_imports_no_sdk() -> None:
    code = f"""
import sys, json, importlib
from tracklink.registry import discover
specs = discover()
for spec in specs.values():
    spec.load()
import tracklink.integrations as integrations
for name in integrations.__all__:
    if name not in integrations.DRIVERS:  # the drivers for other loops import their framework by design
        getattr(integrations, name)
print(json.dumps(sorted(m for m in {list(SDK_MODULES)!r} if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("spec", _spec_params(lambda s: s.availability() is None))
@pytest.mark.parametrize("rank,local_rank", [(1, 1), (1, 0), (0, 0)])
def test_rank_gating(spec: Any, rank: int, local_rank: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    process = ProcessInfo(rank=rank, local_rank=local_rank, world_size=2)
    monkeypatch.setattr(ProcessInfo, "from_env", classmethod(lambda cls: process))
    for key, value in SELECT_ENV.get(spec.name, {}).items():
        monkeypatch.setenv(key, value)
    created: list[Any] = []
    real_create = type(spec).create
    monkeypatch.setattr(type(spec), "create", lambda self: created.append(self.name) or real_create(self))
    expected = process.allows(spec.rank_policy)
    if spec.name == "flyte" and expected:
        pytest.skip("FlyteCallback can only be built inside a Flyte task (tests/integration/test_flyte.py)")
    if spec.name == "testrecorder":
        monkeypatch.setenv("TRACKLINK_TESTPLUGIN_OUT", str(tmp_path / "rec.jsonl"))
    trainer = make_trainer(tmp_path / "out", [spec.name], max_steps=1, eval_strategy="no", save_strategy="no")
    assert (spec.name in trainer.callback_handler.trackers) is expected
    assert (spec.name in created) is expected, "a tracker is never constructed on a rank its policy excludes"


# -- lifecycle of Tracker subclasses, with the SDK-facing methods replaced by recorders -------------------


class _Calls:
    def __init__(self) -> None:
        self.setups: list[Any] = []
        self.finishes: list[str] = []
        self.metrics: list[tuple[dict[str, float], int]] = []


def _instrument(cls: type[Tracker], monkeypatch: pytest.MonkeyPatch, calls: _Calls, fail_metrics: bool = False) -> None:
    def setup(self: Tracker, run: Any) -> None:
        calls.setups.append(run)

    def log_metrics(self: Tracker, metrics: dict[str, float], step: int, epoch: Any = None) -> None:
        if fail_metrics:
            raise RuntimeError("planted backend failure")
        calls.metrics.append((dict(metrics), step))

    def finish(self: Tracker, status: str) -> None:
        calls.finishes.append(status)

    def nothing(self: Tracker, *args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(cls, "setup", setup)
    monkeypatch.setattr(cls, "log_metrics", log_metrics)
    # a backlog handed over at once goes through log_metrics too (the tracker's own batch path is checked
    # against the real SDK in tests/integration/test_batching.py)
    monkeypatch.setattr(cls, "log_metrics_batch", Tracker.log_metrics_batch)
    monkeypatch.setattr(cls, "finish", finish)
    monkeypatch.setattr(cls, "run_identity", lambda self: {"id": "contract-run"})
    for name in ("log_summary", "log_text", "log_checkpoint"):
        monkeypatch.setattr(cls, name, nothing)
    monkeypatch.setattr(cls, "final_metrics", lambda self: None)


def _instance(spec: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Tracker:
    for key, value in SELECT_ENV.get(spec.name, {}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TRACKLINK_TESTPLUGIN_OUT", str(tmp_path / "rec.jsonl"))
    cls = spec.load()
    try:
        return cls()
    except Exception:
        # e.g. FlyteCallback, which refuses to be built outside a Flyte task, or DagsHubCallback without
        # MLflow installed; the contract below only exercises the base-class plumbing, which needs no
        # constructor state (a subclass's check_args may read some: use the base one)
        monkeypatch.setattr(cls, "check_args", Tracker.check_args)
        return cls.__new__(cls)


@pytest.mark.parametrize("spec", _spec_params(_is_tracker_class))
def test_isolation_and_close_once(spec: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _Calls()
    cls = spec.load()
    _instrument(cls, monkeypatch, calls, fail_metrics=True)
    tracker = _instance(spec, monkeypatch, tmp_path)
    trainer = make_trainer(tmp_path / "out", callbacks=[tracker])
    assert trainer.train().global_step == 20, "a failing tracker must not stop training"
    assert spec.name in trainer.callback_handler.tracker_failures()
    assert len(calls.finishes) == 1, calls.finishes
    tracker.close("success")
    tracker.on_exception(trainer.args, trainer.state, trainer.control, exception=RuntimeError("late"))
    assert len(calls.finishes) == 1, "a run is closed exactly once"


@pytest.mark.parametrize("spec", _spec_params(_is_tracker_class))
def test_status_on_exception(spec: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _Calls()
    _instrument(spec.load(), monkeypatch, calls)
    tracker = _instance(spec, monkeypatch, tmp_path)

    with pytest.raises(RuntimeError, match="training failed"):
        make_trainer(tmp_path / "out", callbacks=[tracker, raise_at(7, RuntimeError("training failed"))]).train()
    assert calls.finishes == ["failed"]
    assert [step for _, step in calls.metrics] == [5]


@pytest.mark.parametrize("spec", _spec_params(_is_tracker_class))
def test_redacted_run_info(spec: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _Calls()
    _instrument(spec.load(), monkeypatch, calls)
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    tracker = _instance(spec, monkeypatch, tmp_path)
    make_trainer(tmp_path / "out", callbacks=[tracker], secrets=True, max_steps=5, eval_strategy="no",
                 save_strategy="no").train()
    run = calls.setups[0]
    text = json.dumps([run.params, run.config, run.args_config, run.model_config, run.name], default=str)
    assert not [secret for secret in SECRETS if secret in text]
    assert run.params["learning_rate"] == 0.1


@pytest.mark.parametrize("spec", _spec_params(_is_tracker_class))
def test_resume_hooks(spec: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _Calls()
    cls = spec.load()
    _instrument(cls, monkeypatch, calls)
    out = tmp_path / "out"

    make_trainer(out, callbacks=[_instance(spec, monkeypatch, tmp_path), stop_at(15)]).train()
    saved = tracklink.TrainerState.load_from_json(str(out / "checkpoint-10" / "trainer_state.json"))
    assert saved.stateful_callbacks[cls.__name__]["attributes"]["run"] == {"id": "contract-run"}
    calls.setups.clear()
    calls.metrics.clear()
    make_trainer(out, callbacks=[_instance(spec, monkeypatch, tmp_path)]).train(
        resume_from_checkpoint=str(out / "checkpoint-10")
    )
    assert calls.setups[0].resume == {"id": "contract-run"}
    assert calls.setups[0].start_step == 10
    assert [step for m, step in calls.metrics if any(k.endswith("loss") and "eval" not in k for k in m)][:2] == [15, 20]
