"""Per-step overhead of tracklink's Trainer against a hand-written PyTorch loop and transformers' Trainer.

Three small MLP classifiers (tiny 32→64→2 batch 32, medium 128→512→16 batch 64, large 512→2048→512
batch 64) are trained with identical settings by:

* ``floor``: a hand-written loop: AdamW, a linear schedule through ``LambdaLR``, gradient clipping at 1.0,
  ``zero_grad(set_to_none=True)``, batches from a ``DataLoader`` over the same dataset, ``loss.item()`` at
  each logging step;
* ``tracklink``: ``tracklink.trainer.Trainer`` with ``report_to="none"`` and ``disable_tqdm=True``;
* ``transformers``: ``transformers.Trainer`` (when installed) with the same arguments and the same
  (non-fused) AdamW (``optim="adamw_torch"``).

Runs are interleaved in one process (each configuration repeats every runner ``--repeats`` times, the
order rotating), and only the steady state is timed: from the end of step ``--warmup`` to the end of the
last step, so set-up and the final summary are excluded. Every runner logs every ``--logging-steps``
steps. A second, untimed run per trainer counts the calls that force a host-device synchronisation
(``Tensor.item``/``__float__``/``__int__``/``__bool__``/``cpu``/``tolist``/``numpy``/...,
``torch.cuda.synchronize``) made on steps that do not log, the same way ``tests/trainer/test_no_sync.py``
does.

    python benchmarks/training_overhead.py [--configs tiny,medium,large] [--repeats 3] [--json results.json]

Results are printed as a table (milliseconds per step, ratio to the floor); nothing is asserted.
``--floor-two-groups`` adds a reference floor whose AdamW has the two parameter groups (decay / no
decay) both trainers create: on the tiny model that second optimizer pass (about 70 µs, ~5% of a CPU
step, in a micro-benchmark) is a large part of the trainers' distance to the floor. On a shared or busy machine pass ``--threads 1`` and read
the CPU-time columns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TRACKLINK_LOG_LEVEL", "warning")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from syncs import counting_syncs

CONFIGS = {  # name: (in, hidden, out, batch, timed steps)
    "tiny": (32, 64, 2, 32, 600),
    "medium": (128, 512, 16, 64, 300),
    "large": (512, 2048, 512, 64, 80),
}
LEARNING_RATE = 5e-5


class MLP(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Items(torch.utils.data.Dataset):
    def __init__(self, size: int, n_in: int, n_out: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, n_in, generator=generator)
        self.labels = torch.randint(0, n_out, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.labels[i]}


@dataclass
class Job:
    name: str
    n_in: int
    hidden: int
    n_out: int
    batch: int
    warmup: int
    steps: int
    logging_steps: int
    device: str

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    def dataset(self) -> Items:
        return Items(self.batch * self.total_steps, self.n_in, self.n_out)  # exactly one epoch

    def model(self) -> MLP:
        torch.manual_seed(1)
        return MLP(self.n_in, self.hidden, self.n_out)


class StepClock:
    """Wall-clock and process CPU time at the end of the warm-up step and of the last step.

    On a CPU run with one thread the CPU time is the better measure on a shared machine: it does not
    count the time the process waited for a core.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.marks: dict[int, tuple[float, float]] = {}

    def tick(self, step: int) -> None:
        if step == self.job.warmup or step == self.job.total_steps:
            if self.job.device.startswith("cuda"):
                torch.cuda.synchronize()
            self.marks[step] = (time.perf_counter(), time.process_time())

    def seconds_per_step(self, cpu: bool = False) -> float:
        index = 1 if cpu else 0
        return (self.marks[self.job.total_steps][index] - self.marks[self.job.warmup][index]) / self.job.steps


# -- the runners ------------------------------------------------------------------------------------


def run_floor(job: Job, clock: StepClock, sync_probe: Callable[[int], None] | None = None,
              two_groups: bool = False) -> None:
    device = torch.device(job.device)
    model = job.model().to(device)
    params: Any = list(model.parameters())
    if two_groups:  # transformers' (and tracklink's) layout: weights / biases, both weight_decay 0 here
        params = [{"params": [p for n, p in model.named_parameters() if not n.endswith("bias")]},
                  {"params": [p for n, p in model.named_parameters() if n.endswith("bias")]}]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    total = job.total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (total - s) / total))
    generator = torch.Generator().manual_seed(42)
    loader = torch.utils.data.DataLoader(job.dataset(), batch_size=job.batch, shuffle=True, generator=generator)
    model.train()
    step = 0
    for batch in loader:
        if sync_probe is not None:
            sync_probe(step + 1)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss = model(**batch)["loss"]
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % job.logging_steps == 0:
            loss.item()
        clock.tick(step)
        if step >= total:
            break


def _trainer_kwargs(job: Job, output_dir: str) -> dict[str, Any]:
    return dict(
        output_dir=output_dir, report_to="none", disable_tqdm=True, max_steps=job.total_steps,
        per_device_train_batch_size=job.batch, learning_rate=LEARNING_RATE, logging_steps=job.logging_steps,
        save_strategy="no", use_cpu=job.device == "cpu", dataloader_pin_memory=job.device != "cpu",
    )


def _callbacks(base: type, clock: StepClock, sync_probe: Callable[[int], None] | None) -> list[Any]:
    """The step timer (and the sync probe's step marker) as callbacks of a trainer's ``TrainerCallback``."""

    class Timer(base):  # type: ignore[misc,valid-type]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.tick(state.global_step)

    class Probe(base):  # type: ignore[misc,valid-type]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync_probe(state.global_step + 1)  # type: ignore[misc]

    return [Timer()] + ([Probe()] if sync_probe else [])


def run_tracklink(job: Job, clock: StepClock, sync_probe: Callable[[int], None] | None = None) -> None:
    from tracklink import TrainerCallback
    from tracklink.trainer import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        callbacks = _callbacks(TrainerCallback, clock, sync_probe)
        trainer = Trainer(model=job.model(), args=TrainingArguments(**_trainer_kwargs(job, out)),
                          train_dataset=job.dataset(), callbacks=callbacks)
        trainer.train()


def run_transformers(job: Job, clock: StepClock, sync_probe: Callable[[int], None] | None = None) -> None:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        callbacks = _callbacks(TrainerCallback, clock, sync_probe)
        args = TrainingArguments(**_trainer_kwargs(job, out), optim="adamw_torch")
        trainer = Trainer(model=job.model(), args=args, train_dataset=job.dataset(), callbacks=callbacks)
        trainer.train()


def run_floor_two_groups(job: Job, clock: StepClock, sync_probe: Callable[[int], None] | None = None) -> None:
    run_floor(job, clock, sync_probe, two_groups=True)


RUNNERS: dict[str, Callable[..., None]] = {
    "floor": run_floor, "tracklink": run_tracklink, "transformers": run_transformers,
}
#: reference only (``--floor-two-groups``): the floor with the two optimizer parameter groups (decay / no
#: decay) both trainers use; AdamW makes one pass per group, which costs a few percent on tiny models
EXTRA_RUNNERS: dict[str, Callable[..., None]] = {"floor_2groups": run_floor_two_groups}

# -- host-device synchronisation count -------------------------------------------------------------

def syncs_per_quiet_step(runner: Callable[..., None], job: Job) -> float:
    """Average syncing calls on steps that do not log (a short, untimed run)."""
    probe_job = Job(job.name, job.n_in, job.hidden, job.n_out, job.batch, warmup=1, steps=39,
                    logging_steps=20, device=job.device)
    calls: list[int] = []
    current = [0]

    def probe(step: int) -> None:
        current[0] = step

    with counting_syncs(lambda method, caller: calls.append(current[0])):
        runner(probe_job, StepClock(probe_job), sync_probe=probe)
    quiet = [s for s in range(1, probe_job.total_steps + 1) if s % probe_job.logging_steps != 0]
    return sum(1 for step in calls if step in set(quiet)) / len(quiet)


# -- main -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per runner and configuration")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps before the timed window")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply the timed steps")
    parser.add_argument("--logging-steps", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (use 1 on a shared or busy machine: idle-spinning intra-op "
                             "threads can make small models 50x slower and the comparison meaningless)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    parser.add_argument("--no-sync-count", action="store_true", help="skip the sync-count runs")
    parser.add_argument("--floor-two-groups", action="store_true",
                        help="also time the floor with the trainers' two optimizer parameter groups")
    ns = parser.parse_args(argv)

    if ns.threads:
        torch.set_num_threads(ns.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    runners = dict(RUNNERS)
    if ns.floor_two_groups:
        runners.update(EXTRA_RUNNERS)
    try:
        import transformers  # noqa: F401
    except ImportError:
        runners.pop("transformers")
        print("transformers is not installed: comparing with the floor only")

    results: dict[str, Any] = {"device": ns.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                               "configs": {}}
    names = [n.strip() for n in ns.configs.split(",") if n.strip()]
    for name in names:
        if name not in CONFIGS:
            parser.error(f"--configs: unknown configuration {name!r}; accepted: {', '.join(CONFIGS)}")
    for name in names:
        n_in, hidden, n_out, batch, steps = CONFIGS[name]
        job = Job(name, n_in, hidden, n_out, batch, ns.warmup, max(10, int(steps * ns.steps_scale)),
                  ns.logging_steps, ns.device)
        timings: dict[str, list[float]] = {runner: [] for runner in runners}
        cpu_timings: dict[str, list[float]] = {runner: [] for runner in runners}
        order = list(runners)
        for repeat in range(ns.repeats):
            for runner in order[repeat % len(order):] + order[:repeat % len(order)]:
                clock = StepClock(job)
                with contextlib.redirect_stdout(open(os.devnull, "w")):
                    runners[runner](job, clock)
                timings[runner].append(clock.seconds_per_step())
                cpu_timings[runner].append(clock.seconds_per_step(cpu=True))
        entry: dict[str, Any] = {"batch": batch, "timed_steps": job.steps, "ms_per_step": {}, "ratio": {},
                                 "all_ms": {}, "cpu_ms_per_step": {}, "cpu_ratio": {}, "all_cpu_ms": {},
                                 "syncs_per_quiet_step": {}}
        floor = statistics.median(timings["floor"])
        cpu_floor = statistics.median(cpu_timings["floor"])
        for runner, values in timings.items():
            median = statistics.median(values)
            entry["ms_per_step"][runner] = median * 1e3
            entry["all_ms"][runner] = [v * 1e3 for v in values]
            entry["ratio"][runner] = median / floor
            cpu_median = statistics.median(cpu_timings[runner])
            entry["cpu_ms_per_step"][runner] = cpu_median * 1e3
            entry["all_cpu_ms"][runner] = [v * 1e3 for v in cpu_timings[runner]]
            entry["cpu_ratio"][runner] = cpu_median / cpu_floor
            # each round's ratio to the floor of the same round (robust to slow drifts of the machine's load)
            paired = sorted(t / f for t, f in zip(cpu_timings[runner], cpu_timings["floor"]))
            entry.setdefault("paired_cpu_ratio", {})[runner] = statistics.median(paired)
            entry.setdefault("paired_cpu_ratio_range", {})[runner] = [paired[0], paired[-1]]
        if not ns.no_sync_count:
            for runner in runners:
                if runner in RUNNERS and runner != "floor":
                    with contextlib.redirect_stdout(open(os.devnull, "w")):
                        entry["syncs_per_quiet_step"][runner] = syncs_per_quiet_step(runners[runner], job)
        results["configs"][name] = entry
        print(_row(name, entry), flush=True)

    print()
    print(_table(results))
    if ns.json_path:
        with open(ns.json_path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


def _row(name: str, entry: dict[str, Any]) -> str:
    parts = [f"{name}:"] + [
        f"{r} {ms:.3f} ms ({entry['ratio'][r]:.3f}x; cpu {entry['cpu_ms_per_step'][r]:.3f} ms, "
        f"{entry['cpu_ratio'][r]:.3f}x)" for r, ms in entry["ms_per_step"].items()]
    return "  ".join(parts)


def _table(results: dict[str, Any]) -> str:
    runners = list(next(iter(results["configs"].values()))["ms_per_step"]) if results["configs"] else []
    others = [r for r in runners if r != "floor"]
    header = ["config", "batch"] + [f"{r} ms/step (cpu)" for r in runners]
    counted = [r for r in others if r in RUNNERS]
    header += [f"{r}/floor wall (cpu) [paired]" for r in others] + [f"{r} syncs/quiet step" for r in counted]
    rows = [header]
    for name, entry in results["configs"].items():
        row = [name, str(entry["batch"])]
        row += [f"{entry['ms_per_step'][r]:.3f} ({entry['cpu_ms_per_step'][r]:.3f})" for r in runners]
        row += [f"{entry['ratio'][r]:.3f}x ({entry['cpu_ratio'][r]:.3f}x) [{entry['paired_cpu_ratio'][r]:.3f}x]"
                for r in others]
        row += [f"{entry['syncs_per_quiet_step'].get(r, math.nan):.2f}" for r in counted]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"(device {results['device']}, torch {results['torch']}, {results['threads']} threads; median of "
                 "the repeats, steady state only; [paired] = median over rounds of the CPU-time ratio to the "
                 "floor of the same round)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
