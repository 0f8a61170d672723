"""``tracklink demo``, run as a user runs it (a subprocess).

Bad behaviours caught: a non-zero exit, no ``loss.png`` or checkpoints, commands printed for trackers that
are not installed (or missing for installed ones), TensorBoard event files not where the printed command
looks (also when the output directory is under the working directory), a traceback (instead of a one-line error naming the value and what is accepted) for a bad
``--device`` or ``--max-steps``, output created before a bad argument is rejected.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def demo(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracklink.cli", "demo", *args], capture_output=True, text=True, timeout=600,
        cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_demo_trains_plots_checkpoints_and_prints_where_to_look(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    result = demo("--output-dir", str(out), "--max-steps", "60", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Traceback" not in result.stderr
    stdout = result.stdout
    assert "tracklink demo finished: 60 steps" in stdout
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-50", "checkpoint-60"]
    assert (out / "checkpoint-60" / "trainer_state.json").is_file()
    if installed("matplotlib"):
        assert (out / "loss.png").stat().st_size > 1000
        assert f"loss curves:  {out / 'loss.png'}" in stdout
    else:
        assert "loss curves:  not drawn" in stdout

    tensorboard = installed("tensorboard")
    assert ("TensorBoard:  tensorboard --logdir" in stdout) == tensorboard
    if tensorboard:
        assert f"tensorboard --logdir {out / 'runs'}" in stdout
        assert list((out / "runs").rglob("events.out.tfevents.*")), "no event files under the printed logdir"
    mlflow = installed("mlflow")
    if mlflow and "mlflow failed" not in stdout:
        assert f"mlflow ui --backend-store-uri sqlite:///{out / 'mlflow.db'}" in stdout
        assert (out / "mlflow.db").is_file()
    if not mlflow:
        assert "MLflow UI" not in stdout


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "--device 'tpu' is invalid; accepted: cpu, cuda, cuda:N, mps"),
    (["--max-steps", "0"], "--max-steps 0 is invalid; accepted: an integer >= 1"),
    (["--max-steps", "-5"], "--max-steps -5 is invalid; accepted: an integer >= 1"),
    (["--early-stopping", "0"], "--early-stopping 0 is invalid; accepted: an integer >= 1"),
])
def test_bad_arguments_give_one_clear_error(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "never-created"
    result = demo("--output-dir", str(out), "--report-to", "none", *args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_cuda_requested_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = demo("--output-dir", str(tmp_path / "x"), "--report-to", "none", "--device", "cuda", cwd=tmp_path)
    assert result.returncode != 0 and "--device cuda: CUDA is not available here" in result.stderr


@pytest.mark.skipif(not installed("tensorboard"), reason="tensorboard is not installed")
def test_event_files_land_in_logging_dir_under_the_working_directory(tmp_path: Path) -> None:
    """Regression: the shell's ``PWD`` variable was once taken for a secret ("pwd"), so every path under the
    working directory was redacted in the arguments trackers receive and TensorBoard wrote to
    ``<redacted>/...`` instead of ``logging_dir``."""
    result = demo("--output-dir", "out", "--max-steps", "5", "--report-to", "tensorboard", cwd=tmp_path,
                  env={"PWD": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "out" / "runs").rglob("events.out.tfevents.*"))
