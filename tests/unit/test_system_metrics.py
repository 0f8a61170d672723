"""System metrics (``TRACKLINK_SYSTEM_METRICS``, ``tracklink.init(system_metrics=...)``): CPU and memory through
psutil and GPUs through NVML, sampled on a background thread and logged with the next log to every tracker.

Bad behaviours caught:
- sampling on the training thread (psutil is called only on ``tracklink-system-metrics``);
- metrics missing from what trackers receive, in the Trainer or in a plain loop, or logged twice (each sample
  goes out with one log);
- system metrics in ``state.log_history`` / ``trainer_state.json`` (transformers-compatible checkpoints), in the
  caller's ``logs`` or in the metrics ``evaluate()`` returns;
- the feature on by default, or psutil/pynvml imported when it is off;
- a sampler thread left running after the run ended (also after an exception);
- a crash without psutil (the feature says so once and stays off) or without NVML (GPU metrics absent);
- GPUs numbered by NVML instead of CUDA (``CUDA_VISIBLE_DEVICES`` order and UUIDs), an unsupported reading (a
  MIG slice has no utilisation) stopping the GPU's other readings;
- the wrong processes sampling under torchrun (one sampler per node for the Trainer, the world main process
  for a plain loop) or metrics not named by node.

Bad inputs tried here: ``TRACKLINK_SYSTEM_METRICS`` = ``sometimes``, ``-1``, ``0.01`` (below the 0.1 s minimum),
``nan``, ``inf``; ``system_metrics=`` ``"yes"``, ``[1]``, ``0``, ``-5``, ``0.05``, ``nan`` (each an error naming the
value and what is accepted, before any step; a plain run's directory is not even created).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path
from typing import Any

import pytest

import tracklink
from tracker_doubles import RecordingTracker, read_records
from tracklink import TrainerCallback, system
from tracklink.process import ProcessInfo
from tracklink.system import (
    DEFAULT_INTERVAL,
    THREAD_NAME,
    SystemSampler,
    system_metrics_interval,
    system_prefix,
)

try:
    import psutil
except ImportError:  # the core test environment: the tests that sample are skipped (sdk marker)
    psutil = None

#: psutil is installed in the full test environment (where a missing one is an error, see conftest.py)
needs_psutil = pytest.mark.sdk("psutil")

HOST_KEYS = {"cpu_percent", "memory_percent", "memory_used_mb", "memory_available_mb", "process_cpu_percent",
             "process_rss_mb"}


class RawRecorder(RecordingTracker):
    """A recording tracker that keeps the logged names (like MLflow): ``system/...`` arrives as it is logged."""

    name = "raw-recording"
    metric_style = "raw"


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


@pytest.fixture(autouse=True)
def _no_setting(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv(system.ENV_SYSTEM_METRICS, raising=False)
    yield
    assert _sampler_threads() == [], "a system-metrics thread outlived its run"


@pytest.fixture
def psutil_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads psutil's CPU reading was called on: the training (main) thread and tracklink's
    own threads. Other libraries' threads are left out: an SDK's monitor an earlier test left running (Neptune's
    reporting threads poll psutil too) is not what these tests are about."""
    seen: list[str] = []
    real = psutil.cpu_percent

    def spy(*args: Any, **kwargs: Any) -> Any:
        thread = threading.current_thread()
        if thread is threading.main_thread() or thread.name.startswith("tracklink"):
            seen.append(thread.name)
        return real(*args, **kwargs)

    monkeypatch.setattr(psutil, "cpu_percent", spy)
    return seen


def _metrics(path: Path) -> list[tuple[int, dict[str, Any], str]]:
    return [(r["step"], r["metrics"], r["thread"]) for r in read_records(path) if r["kind"] == "metrics"]


def _system_keys(metrics: dict[str, Any], prefix: str = "system/") -> set[str]:
    return {k[len(prefix):] for k in metrics if k.startswith(prefix)}


# -- the setting -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "expected"), [
    (None, None), ("", None), ("0", None), ("false", None), ("OFF", None), ("no", None),
    ("1", DEFAULT_INTERVAL), ("true", DEFAULT_INTERVAL), ("TRUE", DEFAULT_INTERVAL), ("yes", DEFAULT_INTERVAL),
    ("on", DEFAULT_INTERVAL), ("2.5", 2.5), (" 30 ", 30.0), ("1.0", 1.0), ("0.1", 0.1),
])
def test_the_variable(monkeypatch: pytest.MonkeyPatch, env: str | None, expected: float | None) -> None:
    if env is not None:
        monkeypatch.setenv(system.ENV_SYSTEM_METRICS, env)
    assert system_metrics_interval(None) == expected


@pytest.mark.parametrize(("value", "env", "expected"), [
    (True, None, DEFAULT_INTERVAL), (False, "1", None), (True, "0", DEFAULT_INTERVAL), (0.5, "1", 0.5),
    (3, None, 3.0), (None, "4", 4.0),
])
def test_the_argument_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch, value: Any, env: str | None,
                                             expected: float | None) -> None:
    if env is not None:
        monkeypatch.setenv(system.ENV_SYSTEM_METRICS, env)
    assert system_metrics_interval(value) == expected


@pytest.mark.parametrize("env", ["sometimes", "-1", "0.01", "nan", "inf"])
def test_a_bad_variable_fails_before_the_first_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: str) -> None:
    from helpers import make_trainer

    monkeypatch.setenv(system.ENV_SYSTEM_METRICS, env)
    expected = rf"TRACKLINK_SYSTEM_METRICS='{env}' is not accepted; accepted: unset, 0 or false .*>= 0.1"
    with pytest.raises(ValueError, match=expected):
        make_trainer(tmp_path / "out")
    with pytest.raises(ValueError, match=expected):
        tracklink.init(report_to="none", dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("value", "error"), [
    ("yes", TypeError), ([1], TypeError), (0, ValueError), (-5, ValueError), (0.05, ValueError),
    (math.nan, ValueError),
])
def test_a_bad_argument_is_refused(tmp_path: Path, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"system_metrics=.* is not accepted; accepted: None .*False, True .* >= 0.1"):
        tracklink.init(report_to="none", dir=tmp_path / "run", system_metrics=value)
    assert not (tmp_path / "run").exists()


def test_names_by_node_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GROUP_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert system_prefix(ProcessInfo()) == "system/"
    assert system_prefix(ProcessInfo(rank=0, local_rank=0, world_size=2)) == "system/node0/"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert system_prefix(ProcessInfo(rank=2, local_rank=0, world_size=4)) == "system/node1/"
    monkeypatch.setenv("GROUP_RANK", "3")  # torchrun's node rank wins
    assert system_prefix(ProcessInfo(rank=2, local_rank=0, world_size=4)) == "system/node3/"


@needs_psutil
def test_which_processes_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Trainer (per_node) samples on each node's local main process, a plain run on the world main only;
    ``system_metrics_on`` is true on every process (the Trainer's gather depends on it)."""
    monkeypatch.setenv("GROUP_RANK", "1")
    none = tracklink.resolve_report_to("none")
    cases = [(ProcessInfo(rank=1, local_rank=1, world_size=4), True, False),
             (ProcessInfo(rank=2, local_rank=0, world_size=4), True, True),
             (ProcessInfo(rank=2, local_rank=0, world_size=4), False, False),
             (ProcessInfo(rank=0, local_rank=0, world_size=4), False, True)]
    for process, per_node, samples in cases:
        run = tracklink.Run(none, process=process, system_metrics=0.1)
        run.start_system_metrics(per_node=per_node)
        try:
            assert run.system_metrics_on
            assert (run.system is not None) == samples, (process, per_node)
            if samples:
                assert run.system.prefix == "system/node1/"
        finally:
            run.stop_system_metrics()
        assert not run.system_metrics_on and run.system is None


# -- the sampler -------------------------------------------------------------------------------------


@needs_psutil
def test_the_sampler_samples_on_its_own_thread(psutil_threads: list[str]) -> None:
    sampler = SystemSampler(0.1)
    assert sampler.start()
    try:
        assert sampler.wait(10)
        first = sampler.take()
        assert first is not None and _system_keys(first) >= HOST_KEYS
        assert sampler.take() is None, "a sample is handed out once"
        assert sampler.wait(10)
        second = sampler.take()
        assert second is not None and second is not first
    finally:
        sampler.stop()
    assert not sampler.running and _sampler_threads() == []
    assert psutil_threads and set(psutil_threads) == {THREAD_NAME}
    assert 0.0 <= first["system/cpu_percent"] <= 100.0
    assert 0.0 < first["system/memory_percent"] <= 100.0
    assert first["system/process_rss_mb"] > 1.0
    assert first["system/memory_used_mb"] > 0.0 and first["system/memory_available_mb"] > 0.0
    assert first["system/process_cpu_percent"] >= 0.0


@needs_psutil
def test_a_failing_reading_is_reported_once_and_sampling_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def broken() -> Any:
        calls.append(1)
        raise OSError("planted: /proc is gone")

    monkeypatch.setattr(psutil, "virtual_memory", broken)
    sampler = SystemSampler(0.1)
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        sampler.start()
        try:
            assert not sampler.wait(0.6)  # nothing to publish, but the thread keeps trying
            assert sampler.running and len(calls) >= 2
        finally:
            sampler.stop()
    failures = [r for r in caplog.records if "system-metrics sample failed" in r.getMessage()]
    assert len(failures) == 1 and "planted" in failures[0].getMessage()


def test_without_psutil_the_feature_says_so_once_and_stays_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` raises ImportError
    monkeypatch.setattr(system, "_warned_psutil", False)
    recorder = RawRecorder(tmp_path / "rec.jsonl")
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        for name in ("one", "two"):
            with tracklink.init(report_to="none", dir=tmp_path / name, callbacks=[recorder],
                                system_metrics=0.1) as run:
                assert run.system is None and run.system_metrics_on
                run.log({"loss": 1.0}, step=1)
    warnings = [r.getMessage() for r in caplog.records if "system metrics are off" in r.getMessage()]
    assert warnings == ["tracklink: system metrics are off: they need psutil, which is not installed "
                        "(pip install psutil; for GPU metrics also nvidia-ml-py)"]
    assert [m for _, m, _ in _metrics(recorder.path)] == [{"loss": 1.0}, {"loss": 1.0}]


# -- NVML ------------------------------------------------------------------------------------------


@needs_psutil
def test_gpu_metrics_through_the_real_nvml_or_absent_without_error() -> None:
    """Against the real NVML library when it can be loaded and initialised; where it cannot (no driver: this
    is the case on a CPU machine even with ``nvidia-ml-py`` installed), the GPU metrics are absent, the host
    metrics are there, and the real-NVML part is skipped."""
    sampler = SystemSampler(0.1)
    assert sampler.start()
    try:
        assert sampler.wait(10)
        sample = sampler.take()
    finally:
        sampler.stop()
    assert sample is not None and _system_keys(sample) >= HOST_KEYS
    gpu_keys = {k for k in sample if k.startswith("system/gpu")}
    if not sampler.gpus:
        assert gpu_keys == set() and sampler.gpu_problem
        pytest.skip(f"real-NVML part skipped: GPU metrics are absent without error here ({sampler.gpu_problem})")
    import pynvml

    pynvml.nvmlInit()
    try:
        visible = system._visible_gpus(pynvml)
    finally:
        pynvml.nvmlShutdown()
    assert sampler.gpus == len(visible) > 0
    for index in range(sampler.gpus):
        prefix = f"system/gpu{index}/"
        assert f"{prefix}memory_used_mb" in sample and 0.0 <= sample[f"{prefix}memory_percent"] <= 100.0
        if f"{prefix}utilization" in sample:  # a MIG slice has none
            assert 0.0 <= sample[f"{prefix}utilization"] <= 100.0
        if f"{prefix}power_w" in sample:
            assert 0.0 <= sample[f"{prefix}power_w"] < 5000.0
        if f"{prefix}temperature_c" in sample:
            assert 0.0 < sample[f"{prefix}temperature_c"] < 150.0


def _fake_nvml(devices: list[str], shutdowns: list[int]) -> types.ModuleType:
    """A stand-in for pynvml with ``devices`` (UUIDs); the second device has no utilisation reading (a MIG-like
    slice) and a device named ``GPU-busy`` fails every reading once with a generic NVML error."""
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # pynvml's name
        pass

    nvml.NVMLError = NVMLError
    nvml.NVMLError_NotSupported = NVMLError_NotSupported
    nvml.NVML_TEMPERATURE_GPU = 0
    nvml.nvmlInit = lambda: None
    nvml.nvmlShutdown = lambda: shutdowns.append(1)
    nvml.nvmlDeviceGetCount = lambda: len(devices)

    def by_index(i: int) -> str:
        return devices[i]

    def by_uuid(uuid: str) -> str:
        if uuid not in devices:
            raise NVMLError("Not Found")
        return uuid

    def utilization(handle: str) -> Any:
        if handle == devices[1]:
            raise NVMLError_NotSupported("Not Supported")
        return types.SimpleNamespace(gpu=10 * (devices.index(handle) + 1), memory=5)

    nvml.nvmlDeviceGetHandleByIndex = by_index
    nvml.nvmlDeviceGetHandleByUUID = by_uuid
    nvml.nvmlDeviceGetUtilizationRates = utilization
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(devices.index(h) + 1) * 2**30, total=8 * 2**30)
    nvml.nvmlDeviceGetPowerUsage = lambda h: 150_500
    nvml.nvmlDeviceGetTemperature = lambda h, sensor: 61
    return nvml


@pytest.mark.parametrize(("visible", "expected"), [
    (None, ["GPU-a", "GPU-b", "GPU-c"]),
    ("2,0", ["GPU-c", "GPU-a"]),  # CUDA's numbering: gpu0 is the first visible device
    ("GPU-b, 7, 0", ["GPU-b"]),  # read up to the first entry that names no device, as CUDA does
    ("MIG-x,0", []),
    ("", []),
    ("-1", []),
])
def test_visible_gpus_in_cuda_numbering(monkeypatch: pytest.MonkeyPatch, visible: str | None,
                                        expected: list[str]) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert system._visible_gpus(_fake_nvml(["GPU-a", "GPU-b", "GPU-c"], [])) == expected


@needs_psutil
def test_gpu_readings_through_a_stand_in_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path on a machine without a GPU: names, units, an unsupported reading left out, NVML shut
    down when the sampler stops."""
    shutdowns: list[int] = []
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(["GPU-a", "GPU-b"], shutdowns))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sampler = SystemSampler(0.1, prefix="system/node1/")
    assert sampler.start()
    try:
        assert sampler.wait(10)
        sample = sampler.take()
    finally:
        sampler.stop()
    assert sampler.gpus == 2 and shutdowns == [1]
    assert sample is not None
    gpu = {k: v for k, v in sample.items() if k.startswith("system/node1/gpu")}
    assert gpu == {
        "system/node1/gpu0/utilization": 10.0, "system/node1/gpu0/memory_used_mb": 1024.0,
        "system/node1/gpu0/memory_percent": 12.5, "system/node1/gpu0/power_w": 150.5,
        "system/node1/gpu0/temperature_c": 61.0,
        "system/node1/gpu1/memory_used_mb": 2048.0, "system/node1/gpu1/memory_percent": 25.0,
        "system/node1/gpu1/power_w": 150.5, "system/node1/gpu1/temperature_c": 61.0,
    }
    assert _system_keys(sample, "system/node1/") >= HOST_KEYS


@needs_psutil
def test_nvml_that_cannot_start_leaves_gpu_metrics_out(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = _fake_nvml(["GPU-a"], [])

    def fail() -> None:
        raise nvml.NVMLError("Driver Not Loaded")

    nvml.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    sampler = SystemSampler(0.1)
    assert sampler.start()
    try:
        assert sampler.wait(10)
        sample = sampler.take()
    finally:
        sampler.stop()
    assert sample is not None and not any("gpu" in k for k in sample)
    assert sampler.gpus == 0 and sampler.gpu_problem == "NVML cannot be initialised: Driver Not Loaded"


# -- a plain loop (tracklink.init) -----------------------------------------------------------------


@needs_psutil
def test_plain_loop_logs_each_sample_once_under_the_prefix(tmp_path: Path, psutil_threads: list[str]) -> None:
    recorder = RawRecorder(tmp_path / "raw.jsonl")
    styled = RecordingTracker(tmp_path / "hf.jsonl")  # transformers' naming (system/ keys excepted)
    with tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=[recorder, styled],
                        system_metrics=0.1) as run:
        assert run.system is not None and run.system.running
        for step in (1, 2):
            assert run.system.wait(10)
            run.log({"loss": 1.0 / step}, step=step)
        run.log({"loss": 0.25}, step=3)  # no new sample since the last log: nothing added
        assert run.system.wait(10)
        run.log({"loss": 0.2, "system/cpu_percent": -1.0}, step=4)
    assert run.system is None and _sampler_threads() == []
    logged = _metrics(recorder.path)
    assert [step for step, _, _ in logged] == [1, 2, 3, 4]
    for step, metrics, thread in logged:
        assert thread == "tracklink-raw-recording"
        if step != 3:
            assert _system_keys(metrics) >= HOST_KEYS
            assert next(iter(metrics)) == "loss", "the caller's keys come first"
    assert logged[2][1] == {"loss": 0.25}
    assert logged[3][1]["system/cpu_percent"] == -1.0, "a key the caller logged wins over the sample"
    hf = _metrics(styled.path)
    assert "system/cpu_percent" in hf[0][1] and "train/loss" in hf[0][1], "system metrics keep their section"
    assert not any(key.startswith("train/system/") for _, metrics, _ in hf for key in metrics)
    assert psutil_threads and set(psutil_threads) == {THREAD_NAME}


@needs_psutil
def test_plain_loop_stops_the_sampler_when_it_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="planted"), tracklink.init(
        report_to="none", dir=tmp_path / "run", system_metrics=0.1
    ) as run:
        assert run.system is not None
        raise RuntimeError("planted")
    assert run.system is None and _sampler_threads() == []


def test_off_by_default_and_nothing_imported(tmp_path: Path) -> None:
    """Without the variable or argument: no sampler, no system keys, and neither psutil nor pynvml imported
    (in a fresh interpreter: other tests and SDKs import psutil in this one)."""
    script = textwrap.dedent(f"""
        import json, sys, threading
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        import tracklink
        light = sorted(m for m in ("psutil", "pynvml") if m in sys.modules)
        from tracker_doubles import RecordingTracker, read_records
        rec = RecordingTracker({str(tmp_path / "rec.jsonl")!r})
        with tracklink.init(report_to="none", dir={str(tmp_path / "run")!r}, callbacks=[rec]) as run:
            on = [run.system_interval, run.system_metrics_on, run.system is None]
            run.log({{"loss": 1.0}}, step=1)
        metrics = [r["metrics"] for r in read_records(rec.path) if r["kind"] == "metrics"]
        print(json.dumps({{"after_import": light, "on": on, "metrics": metrics,
                          "loaded": sorted(m for m in ("psutil", "pynvml") if m in sys.modules),
                          "threads": [t.name for t in threading.enumerate()]}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != system.ENV_SYSTEM_METRICS}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"after_import": [], "on": [None, False, True], "metrics": [{"train/loss": 1.0}], "loaded": [],
                   "threads": ["MainThread"]}


# -- the Trainer -----------------------------------------------------------------------------------


class FreshSample(TrainerCallback):
    """Waits at every step end until the trainer's sampler has a sample not logged yet, so that every
    logging step finds one (the test does not depend on timing)."""

    def __init__(self) -> None:
        self.trainer: Any = None
        self.samplers: list[Any] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sampler = self.trainer.run.system
        self.samplers.append(sampler)
        assert sampler is not None and sampler.wait(10)


@needs_psutil
def test_trainer_logs_system_metrics_to_trackers_not_to_the_log_history(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, psutil_threads: list[str],
) -> None:
    from helpers import make_trainer

    monkeypatch.setenv(system.ENV_SYSTEM_METRICS, "0.1")
    recorder = RawRecorder(tmp_path / "rec.jsonl")
    fresh = FreshSample()
    trainer = make_trainer(tmp_path / "out", callbacks=[recorder, fresh], max_steps=6, logging_steps=2,
                           eval_steps=4, save_steps=4)
    assert trainer.run.system_interval == 0.1 and trainer.run.system is None  # sampled during train() only
    fresh.trainer = trainer
    trainer.train()
    assert trainer.run.system is None and _sampler_threads() == []
    assert len({id(s) for s in fresh.samplers}) == 1

    logged = _metrics(recorder.path)
    training = [(step, m) for step, m, _ in logged if "loss" in m]
    assert [step for step, _ in training] == [2, 4, 6]
    for _, metrics in training:
        assert _system_keys(metrics) >= HOST_KEYS
        assert next(iter(metrics)) == "loss", "the trainer's keys come first"
    assert psutil_threads and set(psutil_threads) == {THREAD_NAME}

    for entry in trainer.state.log_history:
        assert not [k for k in entry if k.startswith("system/")], entry
    saved = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert "system/" not in json.dumps(saved["log_history"])

    metrics = trainer.evaluate()  # after train(): no sampler, no system keys, no error
    assert not [k for k in metrics if k.startswith("system/")]


@needs_psutil
def test_trainer_stops_the_sampler_when_training_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from helpers import make_trainer

    class Boom(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 3:
                assert _sampler_threads(), "the sampler runs during training"
                raise RuntimeError("planted")

    monkeypatch.setenv(system.ENV_SYSTEM_METRICS, "1")
    trainer = make_trainer(tmp_path / "out", callbacks=[Boom()], max_steps=6, eval_strategy="no", save_strategy="no")
    with pytest.raises(RuntimeError, match="planted"):
        trainer.train()
    assert trainer.run.system is None and not trainer.run.system_metrics_on and _sampler_threads() == []


def test_trainer_without_the_setting_has_no_sampler(tmp_path: Path) -> None:
    from helpers import make_trainer

    recorder = RawRecorder(tmp_path / "rec.jsonl")
    seen = []

    class Look(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen.append(_sampler_threads())

    trainer = make_trainer(tmp_path / "out", callbacks=[recorder, Look()], max_steps=4, logging_steps=2,
                           eval_strategy="no", save_strategy="no")
    trainer.train()
    assert trainer.run.system_interval is None and seen == [[]] * 4
    assert all(not _system_keys(m) for _, m, _ in _metrics(recorder.path))
