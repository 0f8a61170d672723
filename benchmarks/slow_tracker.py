"""Slow-tracker benchmark: what a tracker that blocks 20 ms per call costs the training run.

Three configurations train the same MLP with tracklink's Trainer, logging every 10 steps, interleaved
in one process so machine noise hits them alike:

* ``baseline``  no tracker;
* ``async``     a tracker whose every call sleeps 20 ms, delivered the default way (worker thread);
* ``inline``    the same tracker declared ``inline = True`` (what a synchronous hub would cost).

Printed: median seconds per run and ratios against the baseline, both for the whole ``train()`` call
(which includes draining the tracker queue at the end) and up to the last optimizer step. Not a test:
nothing is asserted. ``--json PATH`` writes the numbers.
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

from tracklink import Tracker, TrainerCallback
from tracklink.trainer import Trainer, TrainingArguments


class SleepyTracker(Tracker):
    name = "sleepy"

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0

    def setup(self, run: Any) -> None:
        time.sleep(self.delay)

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self.calls += 1
        time.sleep(self.delay)


class InlineSleepyTracker(SleepyTracker):
    name = "sleepy-inline"
    inline = True


class LastStep(TrainerCallback):
    def __init__(self) -> None:
        self.at = 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps:
            self.at = time.perf_counter()


def run(kind: str, steps: int, delay: float, size: tuple[int, int, int], batch: int) -> tuple[float, float]:
    features, hidden, classes = size
    torch.manual_seed(0)
    last = LastStep()
    callbacks: list[Any] = [last]
    if kind == "async":
        callbacks.append(SleepyTracker(delay))
    elif kind == "inline":
        callbacks.append(InlineSleepyTracker(delay))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, report_to="none", max_steps=steps, per_device_train_batch_size=batch,
            logging_steps=10, save_strategy="no", disable_tqdm=True, use_cpu=True,
        )
        trainer = Trainer(MLP(features, hidden, classes), args, train_dataset=Data(batch * 64, features, classes),
                          callbacks=callbacks)
        start = time.perf_counter()
        trainer.train()
        end = time.perf_counter()
    return end - start, last.at - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--delay", type=float, default=0.020)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="128,512,16", help="features,hidden,classes of the MLP")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", default=None)
    ns = parser.parse_args(argv)
    size = tuple(int(v) for v in ns.size.split(","))
    assert len(size) == 3
    torch.set_num_threads(1)
    kinds = ("baseline", "async", "inline")
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    run("baseline", 20, ns.delay, size, ns.batch)  # warm-up
    for _ in range(ns.repeats):
        for kind in kinds:
            results[kind].append(run(kind, ns.steps, ns.delay, size, ns.batch))
    base_total = statistics.median(t for t, _ in results["baseline"])
    base_loop = statistics.median(t for _, t in results["baseline"])
    rows = {}
    print(f"{ns.steps} steps, MLP {size}, batch {ns.batch}, log every 10 steps, tracker delay {ns.delay * 1000:.0f} ms")
    print(f"{'config':<10} {'train() s':>10} {'ratio':>7} {'to last step s':>15} {'ratio':>7}")
    for kind in kinds:
        total = statistics.median(t for t, _ in results[kind])
        loop = statistics.median(t for _, t in results[kind])
        rows[kind] = {"train_s": total, "train_ratio": total / base_total, "loop_s": loop, "loop_ratio": loop / base_loop}
        print(f"{kind:<10} {total:>10.3f} {total / base_total:>7.3f} {loop:>15.3f} {loop / base_loop:>7.3f}")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"benchmark": "slow_tracker", "steps": ns.steps, "delay_s": ns.delay, "size": size,
                       "batch": ns.batch, "python": sys.version.split()[0], "torch": torch.__version__,
                       "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
