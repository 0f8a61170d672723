"""benchmarks/gpu.py runs end to end: it skips cleanly without a GPU, and its CPU smoke mode measures all
three systems and writes the JSON with ratios. Only the structure is checked, never a speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def _run(args: list[str], cwd: Path, timeout: float, hide_gpus: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_without_a_gpu_it_says_so_writes_nothing_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    completed = _run(["--out", str(out)], cwd=tmp_path, timeout=120, hide_gpus=True)
    assert completed.returncode == 0, completed.stderr
    assert "no CUDA GPU: skipped" in completed.stdout
    assert not out.exists()


@pytest.mark.interop
@pytest.mark.slow
def test_cpu_smoke_run_measures_the_three_systems_and_writes_ratios(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "results" / "gpu.json"
    completed = _run(["--device", "cpu", "--quick", "--budget", "240", "--out", str(out)], cwd=tmp_path,
                     timeout=280)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "tracklink" in completed.stdout and "speed vs hand" in completed.stdout

    results = json.loads(out.read_text())
    assert results["device"] == "cpu"
    assert results["versions"]["torch"] and results["versions"]["transformers"]
    assert results["device_name"]
    runs = results["configs"]["compile_off"]
    assert set(runs) == {"hand_loop", "tracklink", "transformers"}
    for system, run in runs.items():
        assert run["steps_per_s"] > 0, (system, run)
        assert run["ms_per_step"] > 0
        assert run["host_syncs_per_quiet_step"] >= 0
        assert run["quiet_steps_counted"] > 0
        assert run["peak_memory_gib"] is None  # CUDA only
    ratios = results["ratios"]["compile_off"]
    assert set(ratios) == {"tracklink/hand_loop", "transformers/hand_loop"}
    for ratio in ratios.values():
        assert ratio["steps_per_s"] > 0
    assert results["notes"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # nothing else written where it ran
