"""Per-step event-dispatch cost: tracklink's hub vs transformers' CallbackHandler vs a plain loop.

Scenario (the issue's): 11 tracker plugins that implement only ``on_log``; the loop fires, per training
step, the events transformers' loop fires (``on_step_begin``, ``on_pre_optimizer_step``,
``on_optimizer_step``, ``on_step_end``) plus ``on_log`` every 10th step. ``DefaultFlowCallback`` is
registered in every variant (a real run always has it), and each log is appended to ``log_history`` as the
trainer does.

Variants:

* ``tracklink-trackers``: the 11 plugins registered with ``add_tracker`` (snapshots, one worker thread per
  tracker). Timed on the training thread; the queues are drained after each timed block. The column
  ``incl. drain`` adds the time to drain them (the work the worker threads do, which competes for the GIL).
  ``train-thread CPU`` is the CPU time of the training thread alone: the wall time above it is the worker
  threads' own work, which this loop (it never releases the GIL) serialises, while in real training the
  workers run while torch computes without the GIL.
* ``tracklink-callbacks``: the same plugins registered with ``add_callback`` (called inline).
* ``transformers``: transformers' ``CallbackHandler`` with 11 equivalent ``transformers.TrainerCallback``
  subclasses (skipped when transformers is not installed).
* ``plain-loop``: calling the bound methods that exist directly (the floor).

Repetitions of the variants are interleaved (round-robin, rotating the start) and the median per-step cost
is reported. Nothing is asserted; the numbers are printed (and written as JSON with ``--json PATH``).

    python benchmarks/dispatch.py [--steps 20000] [--repeats 7] [--json benchmarks/results/dispatch.json]
    python benchmarks/dispatch.py --profile tracklink-trackers
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tracklink
from tracklink import CallbackHandler, DefaultFlowCallback, TrainerCallback, TrainerControl, TrainerState

N_TRACKERS = 11
LOG_EVERY = 10
STEP_EVENTS = ("on_step_begin", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end")


def make_args() -> Any:
    return types.SimpleNamespace(logging_first_step=False, logging_strategy="steps", eval_strategy="no",
                                 eval_delay=0, save_strategy="no", logging_steps=LOG_EVERY)


class LogOnly(TrainerCallback):
    """A tracker that only implements on_log (cheap work: remembers the last loss)."""

    def __init__(self) -> None:
        self.count = 0
        self.last: Any = None

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        self.count += 1
        self.last = logs.get("loss")


def _transformers_classes() -> tuple[Any, Any] | None:
    try:
        from transformers import trainer_callback as hf
    except Exception:  # pragma: no cover - transformers missing or broken
        return None

    class HFLogOnly(hf.TrainerCallback):
        def __init__(self) -> None:
            self.count = 0
            self.last: Any = None

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            self.count += 1
            self.last = logs.get("loss")

    return hf, HFLogOnly


# -- the loops ----------------------------------------------------------------------------------------


def run_handler(handler: Any, state: Any, control: Any, args: Any, steps: int) -> Any:
    """The events a training loop fires, through a handler with transformers' API."""
    log_history = state.log_history
    for _ in range(steps):
        control = handler.on_step_begin(args, state, control)
        control = handler.on_pre_optimizer_step(args, state, control)
        control = handler.on_optimizer_step(args, state, control)
        state.global_step += 1
        control = handler.on_step_end(args, state, control)
        if state.global_step % LOG_EVERY == 0:
            logs = {"loss": 0.5, "grad_norm": 1.0, "learning_rate": 1e-3, "epoch": state.global_step / 1000}
            log_history.append({**logs, "step": state.global_step})
            control = handler.on_log(args, state, control, logs=logs)
    return control


def run_plain(methods: dict[str, list[Callable[..., Any]]], state: Any, control: Any, args: Any, steps: int,
              kwargs: dict[str, Any]) -> Any:
    """The floor: a loop over the bound methods that exist, no handler."""
    step_end = methods["on_step_end"]
    on_log = methods["on_log"]
    log_history = state.log_history
    for _ in range(steps):
        state.global_step += 1
        for method in step_end:
            method(args, state, control, **kwargs)
        if state.global_step % LOG_EVERY == 0:
            logs = {"loss": 0.5, "grad_norm": 1.0, "learning_rate": 1e-3, "epoch": state.global_step / 1000}
            log_history.append({**logs, "step": state.global_step})
            for method in on_log:
                method(args, state, control, logs=logs, **kwargs)
    return control


# -- variants -------------------------------------------------------------------------------------------


class Variant:
    def __init__(self, name: str, setup: Callable[[], tuple[Callable[[int], None], Callable[[], None]]]) -> None:
        self.name = name
        self.setup = setup
        self.per_step: list[float] = []
        self.per_step_drained: list[float] = []
        self.per_step_cpu: list[float] = []


def build_variants() -> list[Variant]:
    variants: list[Variant] = []
    args = make_args()

    def tracklink_trackers() -> tuple[Callable[[int], None], Callable[[], None]]:
        handler = CallbackHandler([DefaultFlowCallback])
        for i in range(N_TRACKERS):
            handler.add_tracker(LogOnly(), f"tracker{i}")
        state, box = TrainerState(max_steps=10**12), [TrainerControl()]

        def run(steps: int) -> None:
            state.log_history = []  # each timed block is a fresh run of `steps` steps
            box[0] = run_handler(handler, state, box[0], args, steps)

        return run, lambda: handler.wait_for_trackers()

    def tracklink_callbacks() -> tuple[Callable[[int], None], Callable[[], None]]:
        handler = CallbackHandler([DefaultFlowCallback] + [LogOnly() for _ in range(N_TRACKERS)])
        state, box = TrainerState(max_steps=10**12), [TrainerControl()]

        def run(steps: int) -> None:
            state.log_history = []  # each timed block is a fresh run of `steps` steps
            box[0] = run_handler(handler, state, box[0], args, steps)

        return run, lambda: None

    variants.append(Variant("tracklink-trackers", tracklink_trackers))
    variants.append(Variant("tracklink-callbacks", tracklink_callbacks))

    found = _transformers_classes()
    if found is not None:
        hf, hf_log_only = found

        def transformers_handler() -> tuple[Callable[[int], None], Callable[[], None]]:
            callbacks = [hf.DefaultFlowCallback()] + [hf_log_only() for _ in range(N_TRACKERS)]
            handler = hf.CallbackHandler(callbacks, None, None, None, None)
            state, box = hf.TrainerState(max_steps=10**12), [hf.TrainerControl()]

            def run(steps: int) -> None:
                box[0] = run_handler(handler, state, box[0], args, steps)

            return run, lambda: None

        variants.append(Variant("transformers", transformers_handler))

    def plain() -> tuple[Callable[[int], None], Callable[[], None]]:
        flow = DefaultFlowCallback()
        trackers = [LogOnly() for _ in range(N_TRACKERS)]
        methods = {"on_step_end": [flow.on_step_end], "on_log": [t.on_log for t in trackers]}
        kwargs = dict(model=None, processing_class=None, optimizer=None, lr_scheduler=None,
                      train_dataloader=None, eval_dataloader=None)
        state, box = TrainerState(max_steps=10**12), [TrainerControl()]

        def run(steps: int) -> None:
            state.log_history = []
            box[0] = run_plain(methods, state, box[0], args, steps, kwargs)

        return run, lambda: None

    variants.append(Variant("plain-loop", plain))
    return variants


def _quiet() -> None:
    """Registering 11 plugins of one class warns about duplicates in both systems; silence that."""
    import logging

    logging.getLogger("tracklink").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover - transformers missing
        pass


def measure(steps: int, repeats: int) -> list[Variant]:
    _quiet()
    variants = build_variants()
    runners = [v.setup() for v in variants]
    for run, drain in runners:  # warm up (first worker-thread start, caches)
        run(min(steps, 1000))
        drain()
    for rep in range(repeats):
        order = list(range(len(variants)))
        order = order[rep % len(order):] + order[: rep % len(order)]
        for index in order:
            run, drain = runners[index]
            start, start_cpu = time.perf_counter(), time.thread_time()
            run(steps)
            mid, cpu = time.perf_counter(), time.thread_time() - start_cpu
            drain()
            end = time.perf_counter()
            variants[index].per_step.append((mid - start) / steps * 1e6)
            variants[index].per_step_cpu.append(cpu / steps * 1e6)
            variants[index].per_step_drained.append((end - start) / steps * 1e6)
    return variants


def report(variants: list[Variant], steps: int, repeats: int) -> dict[str, Any]:
    rows = {}
    for v in variants:
        rows[v.name] = {
            "us_per_step_median": statistics.median(v.per_step),
            "us_per_step_min": min(v.per_step),
            "us_per_step_incl_drain_median": statistics.median(v.per_step_drained),
            "training_thread_cpu_us_per_step_median": statistics.median(v.per_step_cpu),
            "samples": v.per_step,
        }
    floor = rows["plain-loop"]["us_per_step_median"]
    hf = rows.get("transformers")
    print(f"tracklink {tracklink.__version__}, python {platform.python_version()}, {steps} steps x {repeats} "
          f"interleaved repeats, {N_TRACKERS} on_log-only trackers, on_log every {LOG_EVERY} steps")
    header = (f"{'variant':<22}{'us/step (median)':>18}{'min':>10}{'incl. drain':>14}{'train-thread CPU':>18}"
              f"{'vs transformers':>17}")
    print(header)
    print("-" * len(header))
    ratios: dict[str, float] = {}
    for name, row in rows.items():
        med = row["us_per_step_median"]
        ratio = f"{med / hf['us_per_step_median']:.3f}x" if hf else "n/a"
        if hf:
            ratios[f"{name}/transformers"] = med / hf["us_per_step_median"]
        print(f"{name:<22}{med:>18.2f}{row['us_per_step_min']:>10.2f}"
              f"{row['us_per_step_incl_drain_median']:>14.2f}"
              f"{row['training_thread_cpu_us_per_step_median']:>18.2f}{ratio:>17}")
    if hf:
        drained = rows["tracklink-trackers"]["us_per_step_incl_drain_median"] / hf["us_per_step_median"]
        ratios["tracklink-trackers(incl. drain)/transformers"] = drained
        ratios["tracklink-trackers(training-thread CPU)/transformers"] = (
            rows["tracklink-trackers"]["training_thread_cpu_us_per_step_median"] / hf["us_per_step_median"])
        over_floor = {n: r["us_per_step_median"] - floor for n, r in rows.items()}
        ratios["tracklink-trackers overhead/transformers overhead (above plain loop)"] = (
            over_floor["tracklink-trackers"] / over_floor["transformers"] if over_floor["transformers"] > 0
            else float("nan"))
        print()
        print("goal: tracklink <= 0.1x transformers' per-step dispatch cost")
        for key, value in ratios.items():
            print(f"  {key}: {value:.3f}")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tracklink": tracklink.__version__,
        "steps": steps,
        "repeats": repeats,
        "trackers": N_TRACKERS,
        "log_every": LOG_EVERY,
        "variants": rows,
        "ratios": ratios,
    }


def profile(name: str, steps: int) -> None:
    import cProfile
    import pstats

    _quiet()
    variant = next(v for v in build_variants() if v.name == name)
    run, drain = variant.setup()
    run(1000)
    drain()
    profiler = cProfile.Profile()
    profiler.enable()
    run(steps)
    profiler.disable()
    drain()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--profile", metavar="VARIANT", help="profile one variant instead of comparing")
    ns = parser.parse_args(argv)
    if ns.profile:
        profile(ns.profile, ns.steps)
        return 0
    result = report(measure(ns.steps, ns.repeats), ns.steps, ns.repeats)
    if ns.json:
        path = Path(ns.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
