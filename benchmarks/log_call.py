"""Log-call benchmark: what one ``log`` call costs the training thread, with three trackers selected.

The same stream of metric dicts goes, in one process and interleaved so machine noise hits them alike, to:

* ``tracklink``   ``tracklink.init(report_to=[tensorboard, mlflow, wandb]).log(values, step=...)``;
* ``accelerate``  ``Accelerator(log_with=[tensorboard, mlflow, wandb])`` then ``accelerator.log(values, step=...)``;
* ``sdk``         the three SDKs called directly (``SummaryWriter.add_scalar`` per key, ``mlflow.log_metrics``,
  ``wandb.log``).

Every tracker runs offline into a temporary directory (MLflow: a local sqlite store; W&B: offline mode).
Printed: the median training-thread time per call (wall and the thread's own CPU time) and the ratio to
``accelerator.log``; for tracklink also how long ``finish()`` then waited for its worker threads, since the
trackers' work is not gone, only moved off the training thread. ``--json PATH`` writes the numbers. Not a
test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TRACKERS = ["tensorboard", "mlflow", "wandb"]


def _offline_env(root: Path) -> None:
    os.environ.update({
        "HOME": str(root / "home"), "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
        "WANDB_DIR": str(root / "wandb"), "WANDB_DISABLE_GIT": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true", "TRACKLINK_LOG_LEVEL": "warning",
    })
    for name in ("home", "wandb"):
        (root / name).mkdir(parents=True, exist_ok=True)


def _values(step: int, width: int) -> dict[str, float]:
    return {f"metric_{i}": 1.0 / (step + i + 1) for i in range(width)}


def _time_calls(log: Any, steps: int, width: int) -> tuple[float, float]:
    """Median wall and CPU seconds per call of ``log(values, step)``."""
    wall, cpu = [], []
    for step in range(steps):
        values = _values(step, width)
        w0, c0 = time.perf_counter(), time.thread_time()
        log(values, step)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.thread_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def run_tracklink(root: Path, steps: int, width: int) -> dict[str, float]:
    import tracklink

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'tl-mlflow.db'}"
    run = tracklink.init(project="bench", name="tracklink", report_to=TRACKERS, dir=root / "tracklink")
    run.log(_values(0, width), step=0)
    run.wait()  # set-up done: measure steady state
    wall, cpu = _time_calls(lambda v, s: run.log(v, step=s + 1), steps, width)
    start = time.perf_counter()
    run.finish()
    return {"wall_us": wall * 1e6, "cpu_us": cpu * 1e6, "drain_s": time.perf_counter() - start}


def run_accelerate(root: Path, steps: int, width: int) -> dict[str, float]:
    from accelerate import Accelerator

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'acc-mlflow.db'}"
    accelerator = Accelerator(log_with=TRACKERS, project_dir=str(root / "accelerate"), cpu=True)
    accelerator.init_trackers("bench", config={"lr": 0.1})
    accelerator.log(_values(0, width), step=0)
    wall, cpu = _time_calls(lambda v, s: accelerator.log(v, step=s + 1), steps, width)
    accelerator.end_training()
    return {"wall_us": wall * 1e6, "cpu_us": cpu * 1e6}


def run_sdk(root: Path, steps: int, width: int) -> dict[str, float]:
    from torch.utils.tensorboard import SummaryWriter

    import mlflow
    import wandb

    mlflow.set_tracking_uri(f"sqlite:///{root / 'sdk-mlflow.db'}")
    mlflow.start_run()
    writer = SummaryWriter(str(root / "sdk-tb"))
    wb = wandb.init(project="bench", dir=str(root / "wandb"))

    def log(values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            writer.add_scalar(key, value, step)
        mlflow.log_metrics(values, step=step)
        wb.log(values, step=step)

    log(_values(0, width), 0)
    wall, cpu = _time_calls(lambda v, s: log(v, s + 1), steps, width)
    writer.close()
    mlflow.end_run()
    wb.finish()
    return {"wall_us": wall * 1e6, "cpu_us": cpu * 1e6}


SYSTEMS = {"tracklink": run_tracklink, "accelerate": run_accelerate, "sdk": run_sdk}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="log calls per system and round")
    parser.add_argument("--width", type=int, default=8, help="metrics per call")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--json", type=Path, help="write the results here")
    ns = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in SYSTEMS}
    with tempfile.TemporaryDirectory(prefix="tracklink-logcall-") as tmp:
        _offline_env(Path(tmp))
        for round_ in range(ns.repeats):
            for name, bench in SYSTEMS.items():
                root = Path(tmp) / f"{name}-{round_}"
                root.mkdir()
                results[name].append(bench(root, ns.steps, ns.width))
    summary: dict[str, Any] = {"steps": ns.steps, "width": ns.width, "repeats": ns.repeats, "trackers": TRACKERS}
    for name, rounds in results.items():
        summary[name] = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    base = summary["accelerate"]["wall_us"]
    print(f"one log() call with {ns.width} metrics to {', '.join(TRACKERS)} (median of {ns.repeats} rounds x "
          f"{ns.steps} calls; training thread)")
    print(f"{'system':<12} {'wall us/call':>13} {'cpu us/call':>12} {'vs accelerate':>14}")
    for name in SYSTEMS:
        row = summary[name]
        row["vs_accelerate"] = row["wall_us"] / base
        print(f"{name:<12} {row['wall_us']:>13.1f} {row['cpu_us']:>12.1f} {row['vs_accelerate']:>13.3f}x")
    print(f"tracklink finish() waited {summary['tracklink']['drain_s']:.2f} s for its worker threads")
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
