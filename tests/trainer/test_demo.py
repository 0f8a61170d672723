"""``tracklink demo``, run as a user runs it (a subprocess).

Bad behaviours caught: a non-zero exit, no ``loss.png`` or checkpoints, no prediction images or weight
histogram in TensorBoard and MLflow, commands printed for trackers that
are not installed (or missing for installed ones), TensorBoard event files not where the printed command
looks (also when the output directory is under the working directory), a traceback (instead of a one-line error naming the value and what is accepted) for a bad
``--device`` or ``--max-steps``, output created before a bad argument is rejected.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
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
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(out / "runs" / "demo"), size_guidance={"images": 0, "histograms": 0})
        acc.Reload()
        assert [e.step for e in acc.Images("eval/predictions")][:2] == [50, 60], "prediction samples as images"
        assert [e.step for e in acc.Histograms("eval/hidden_weights")][:2] == [50, 60], "a weight histogram"
    mlflow = installed("mlflow")
    if mlflow and "mlflow failed" not in stdout:
        assert f"mlflow ui --backend-store-uri sqlite:///{out / 'mlflow.db'}" in stdout
        assert (out / "mlflow.db").is_file()
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        images = {a.path.split("+")[0] for a in client.list_artifacts(run.info.run_id, "images")}
        assert images == {"images/eval_predictions", "images/eval_hidden_weights"}, images
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


# -- the demo as a person sees it: in a terminal ----------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = re.compile(r"\d+%\|[^|\r\n]*\|\s*\d+/\d+ \[[^\]\r\n]*\]")
MLFLOW_STORE_LINES = ("Creating initial MLflow database tables", "alembic.runtime.migration", "Context impl SQLiteImpl")


def run_in_terminal(argv: list[str], cwd: Path, columns: int = 140, timeout: float = 600,
                    env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal ``columns`` wide; everything it
    wrote (escape sequences and carriage returns included) and its exit status."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, start_new_session=True,
        env={**os.environ, "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm-256color",
             "OMP_NUM_THREADS": "1", **(env or {})},
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"{argv} did not finish in {timeout} s")
    finally:
        os.close(master)
    return process.wait(30), b"".join(chunks).decode("utf-8", "replace")


def glued_lines(output: str) -> list[str]:
    """Screen lines on which something was written onto a progress bar (before or after it) without a
    carriage return or newline in between; cursor movements count as separators."""
    glued = []
    for segment in re.split(r"[\r\n]", ANSI.sub("\r", output)):
        for match in BAR.finditer(segment):
            if segment[:match.start()].strip() or segment[match.end():].strip():
                glued.append(segment)
                break
    return glued


def test_glued_lines_detects_a_message_written_onto_the_bar() -> None:
    bar = " 33%|███▎      | 50/150 [00:01<00:02, 40.20it/s]"
    assert glued_lines(f"\r{bar}tracklink: deleting older checkpoint x\n") != []
    assert glued_lines(f"\r{bar}\r{' ' * 60}\rtracklink: deleting older checkpoint x\n\r{bar}") == []
    assert glued_lines(f"\r{bar}\x1b[A\rnext line\n") == []


def test_demo_output_is_readable_in_a_140_column_terminal(tmp_path: Path) -> None:
    """Messages logged while the progress bar runs go through the bar's writer, on lines of their own; a
    local MLflow store is created before the bar starts (its table-creation lines never appear mid-run)."""
    out = tmp_path / "demo-out"
    code, output = run_in_terminal(
        [sys.executable, "-m", "tracklink.cli", "demo", "--output-dir", str(out), "--max-steps", "160"], tmp_path,
    )
    assert code == 0, output[-5000:]
    assert "tracklink demo finished: 160 steps" in output
    assert "deleting older checkpoint" in output  # save_total_limit=2 with 4 checkpoints: a message mid-run
    assert glued_lines(output) == []
    bars = [m.start() for m in BAR.finditer(output)]
    assert bars, "no progress bar was drawn"
    for line in MLFLOW_STORE_LINES:
        at = output.rfind(line)
        assert at < bars[0], f"{line!r} appeared after the progress bar started"
    if installed("mlflow"):
        assert "MLflow UI:" in output
        assert f"sqlite:///{out / 'mlflow.db'}" in output


# -- same arguments, same training ---------------------------------------------------------------------


def _losses(output_dir: Path) -> tuple[list[tuple[int, float]], str | None]:
    states = sorted(output_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    state = json.loads(states[-1].read_text())
    losses = [(h["step"], h[key]) for h in state["log_history"] for key in ("loss", "eval_loss") if key in h]
    best = state["best_model_checkpoint"]
    return losses, best and Path(best).name


def test_demo_twice_with_the_same_arguments_trains_the_same(tmp_path: Path) -> None:
    """The model is built after the seed is set: a second run in the same process (whose global random
    state the first run moved on) logs the same losses and picks the same best checkpoint."""
    import torch

    from tracklink.trainer.demo import run_demo

    results = []
    for name, unrelated_seed in (("first", 1), ("second", 2)):
        torch.manual_seed(unrelated_seed)  # whatever ran before the demo must not matter
        assert run_demo(output_dir=str(tmp_path / name), report_to="none", max_steps=60) == 0
        results.append(_losses(tmp_path / name))
    (first, first_best), (second, second_best) = results
    assert first and first == second
    assert first_best is not None and first_best == second_best
