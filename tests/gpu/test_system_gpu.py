"""System metrics on a real NVIDIA GPU (``pytest -m gpu``; benchmarks/gpu_check.sh runs it on a lent machine).

The CPU suite tests the GPU readings through a stand-in NVML module (tests/unit/test_system_metrics.py); this
one reads the device through the real NVML. Bad behaviours caught: no ``system/gpu0/...`` metric on a machine
with a GPU and nvidia-ml-py, a reading outside its range (utilisation or memory percentage outside 0-100, a
negative power), memory that does not grow when the test allocates 1 GiB on the device, and the sampler
thread outliving its run. Skips without CUDA, psutil or nvidia-ml-py (the GPU machine cannot install them).
"""

from __future__ import annotations

import importlib.util
import threading
import time
from typing import Any

import pytest
import torch

import tracklink
from tracklink import TrainerCallback
from tracklink.system import THREAD_NAME

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("psutil") is None, reason="needs psutil"),
    pytest.mark.skipif(importlib.util.find_spec("pynvml") is None, reason="needs nvidia-ml-py (pynvml)"),
]


class Logs(TrainerCallback):
    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        self.logged.append(dict(logs or {}))


def test_gpu_readings_come_from_nvml(tmp_path: Any) -> None:
    device = torch.cuda.current_device()
    logs = Logs()
    with tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=[logs], system_metrics=0.1) as run:
        assert run.system is not None
        assert run.system.wait(10)
        run.log({"loss": 1.0}, step=1)
        block = torch.empty(2**30, dtype=torch.uint8, device=device)  # 1 GiB
        torch.cuda.synchronize()
        time.sleep(0.5)  # five sampling intervals: the newest sample is taken after the allocation
        assert run.system.wait(10)
        run.log({"loss": 0.5}, step=2)
        del block
    assert not [t for t in threading.enumerate() if t.name == THREAD_NAME]
    first, second = (entry for entry in logs.logged if "loss" in entry)
    prefix = f"system/gpu{device}/"
    gpu = {key[len(prefix):]: value for key, value in second.items() if key.startswith(prefix)}
    assert {"utilization", "memory_used_mb", "memory_percent"} <= set(gpu), sorted(second)
    assert 0 <= gpu["utilization"] <= 100 and 0 <= gpu["memory_percent"] <= 100
    assert gpu.get("power_w", 0) >= 0 and gpu.get("temperature_c", 20) > 0
    grown = gpu["memory_used_mb"] - first[f"{prefix}memory_used_mb"]
    assert grown >= 900, f"memory used grew by {grown} MiB after allocating 1024 MiB"
