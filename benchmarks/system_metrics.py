"""System-metrics benchmark: what sampling CPU, memory and GPUs on a background thread costs the training loop.

The same MLP is trained with tracklink's Trainer, logging every 10 steps, in three configurations interleaved
in one process so machine noise hits them alike:

* ``off``    system metrics off (the default);
* ``on``     ``TRACKLINK_SYSTEM_METRICS=0.5``: a sample every 0.5 s, so a run of a few seconds logs several;
* ``fast``   ``TRACKLINK_SYSTEM_METRICS=0.1``: the shortest interval accepted (the worst case).

A counting tracker (delivered on its worker thread, like any tracker) checks that the samples really reach
the trackers. Printed: median seconds per run and the ratio against ``off``, for the whole ``train()`` call
(which includes starting and stopping the sampler) and up to the last optimizer step, and the samples logged.
The default interval (10 s) samples 20 to 100 times less often than these. Not a test: nothing is asserted.
``--json PATH`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

os.environ.setdefault("TRACKLINK_LOG_LEVEL", "warning")

from mlp import MLP, Data

from tracklink import PrinterCallback, Tracker, TrainerCallback
from tracklink.trainer import Trainer, TrainingArguments

SETTINGS = {"off": None, "on": "0.5", "fast": "0.1"}


class SampleCounter(Tracker):
    """Counts the logs that carry system metrics."""

    name = "sample-counter"
    metric_style = "raw"

    def __init__(self) -> None:
        self.samples = 0

    def setup(self, run: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self.samples += any(key.startswith("system/") for key in metrics)


class LastStep(TrainerCallback):
    def __init__(self) -> None:
        self.at = 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps:
            self.at = time.perf_counter()


def run(kind: str, steps: int, size: tuple[int, int, int], batch: int) -> tuple[float, float, int]:
    features, hidden, classes = size
    setting = SETTINGS[kind]
    if setting is None:
        os.environ.pop("TRACKLINK_SYSTEM_METRICS", None)
    else:
        os.environ["TRACKLINK_SYSTEM_METRICS"] = setting
    torch.manual_seed(0)
    last, counter = LastStep(), SampleCounter()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, report_to="none", max_steps=steps, per_device_train_batch_size=batch,
            logging_steps=10, save_strategy="no", disable_tqdm=True, use_cpu=True,
        )
        trainer = Trainer(MLP(features, hidden, classes), args, train_dataset=Data(batch * 64, features, classes),
                          callbacks=[last, counter])
        trainer.remove_callback(PrinterCallback)  # no console lines in the timings
        start = time.perf_counter()
        trainer.train()
        end = time.perf_counter()
    os.environ.pop("TRACKLINK_SYSTEM_METRICS", None)
    return end - start, last.at - start, counter.samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", default="128,512,16", help="features,hidden,classes of the MLP")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", default=None)
    ns = parser.parse_args(argv)
    size = tuple(int(v) for v in ns.size.split(","))
    assert len(size) == 3
    torch.set_num_threads(1)
    kinds = tuple(SETTINGS)
    results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in kinds}
    run("fast", 20, size, ns.batch)  # warm-up (imports psutil once)
    for repeat in range(ns.repeats):
        order = kinds if repeat % 2 == 0 else kinds[::-1]  # neither configuration always runs first
        for kind in order:
            results[kind].append(run(kind, ns.steps, size, ns.batch))
    base_total = statistics.median(t for t, _, _ in results["off"])
    base_loop = statistics.median(t for _, t, _ in results["off"])
    rows = {}
    print(f"{ns.steps} steps, MLP {size}, batch {ns.batch}, log every 10 steps, {ns.repeats} interleaved repeats")
    print(f"{'config':<6} {'interval':>8} {'train() s':>10} {'ratio':>7} {'to last step s':>15} {'ratio':>7} "
          f"{'samples logged':>15}")
    for kind in kinds:
        total = statistics.median(t for t, _, _ in results[kind])
        loop = statistics.median(t for _, t, _ in results[kind])
        samples = statistics.median(n for _, _, n in results[kind])
        spread = [round(t / base_total, 3) for t, _, _ in results[kind]]
        rows[kind] = {"interval_s": SETTINGS[kind], "train_s": total, "train_ratio": total / base_total,
                      "loop_s": loop, "loop_ratio": loop / base_loop, "samples_logged": samples,
                      "train_ratios_each": spread}
        print(f"{kind:<6} {SETTINGS[kind] or '-':>8} {total:>10.3f} {total / base_total:>7.3f} {loop:>15.3f} "
              f"{loop / base_loop:>7.3f} {samples:>15g}")
    off = [t for t, _, _ in results["off"]]
    noise = (max(off) - min(off)) / statistics.median(off)
    print(f"noise: the 'off' runs spread over {noise:.1%} of their median")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"benchmark": "system_metrics", "steps": ns.steps, "size": size, "batch": ns.batch,
                       "repeats": ns.repeats, "python": sys.version.split()[0], "torch": torch.__version__,
                       "off_spread": noise, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
