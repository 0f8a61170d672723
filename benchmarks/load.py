"""Load benchmark: heavy logging through tracklink's Trainer, with real trackers, offline.

Scenarios (each run in a fresh interpreter, compared with the same training with ``report_to="none"``):

* ``sustained``  logging every step for ``--steps`` steps to TensorBoard, MLflow (sqlite store), W&B (offline),
  DVCLive and Comet (offline);
* ``wide``       2,000 extra keys in every log (``--wide-steps`` steps, logging every 10), same five trackers;
* ``slow``       a tracker that takes 2 ms per call, logging every step for ``--slow-steps`` steps, with the
  default queue and with ``TRACKLINK_QUEUE_SIZE=100``: peak memory (RSS) against the run without it;
* ``runs``       200 short runs in one process (the plain run API, TensorBoard and MLflow): threads, open files
  and memory after the first 20 and after all 200;
* ``torchrun``   two CPU processes (gloo) logging every step to TensorBoard and MLflow;
* ``processes``  the sustained and wide scenarios with ``TRACKLINK_DELIVERY=process`` (each tracker in a process
  of its own, following the run journal);
* ``alone``      the same two, with each of the five trackers alone in its process: on a 2-core machine training
  and the follower then have a core each, as all five would on a machine with a core per tracker.

Printed and written (``--json``): wall time of ``train()`` and its ratio to ``report_to="none"``, the process's
CPU time during ``train()`` (its ratio, and the lowest wall-time ratio that CPU time allows on this machine's
cores however it is scheduled: CPU seconds / cores / the ``none`` run's wall time), the time
the loop took to its last step, how long ``train()`` then waited for the trackers (drain), peak RSS, and how
many logged points each tracker's own files hold afterwards (read back with the test suite's readers). The
sustained scenario is also run with 50 steps, which tells the SDKs' setup and teardown apart from the cost
of the steps in between. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
FIVE = ["tensorboard", "mlflow", "wandb", "dvclive", "comet_ml"]
SCENARIOS = ("sustained", "wide", "slow", "runs", "torchrun", "processes", "alone")


def offline_env(root: Path) -> dict[str, str]:
    env = {
        "HOME": str(root / "home"), "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
        "WANDB_DIR": str(root / "wandb"), "WANDB_DISABLE_GIT": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "COMET_START_ONLINE": "0", "COMET_OFFLINE_DIRECTORY": str(root / "comet"), "COMET_ERROR_TRACKING_ENABLE": "false",
        "COMET_AUTO_LOG_ENV_DETAILS": "false", "COMET_AUTO_LOG_ENV_HOST": "false", "COMET_AUTO_LOG_CO2": "false",
        "COMET_DISABLE_AUTO_LOGGING": "1", "DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "1",
        "TRACKLINK_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
    }
    for name in ("home", "wandb", "comet"):
        (root / name).mkdir(parents=True, exist_ok=True)
    return env


# -- one measured training, run in a child process -----------------------------------------------------

CHILD = textwrap.dedent('''
    import json, os, resource, sys, time
    sys.path.insert(0, sys.argv[2])
    import torch
    from torch import nn
    from tracklink import Tracker, TrainerCallback
    from tracklink.trainer import Trainer, TrainingArguments

    spec = json.loads(sys.argv[1])
    torch.manual_seed(0)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 4096
        def __getitem__(self, i):
            return {"x": torch.full((8,), float(i % 17) / 17), "labels": i % 2}

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(8, 2)
        def forward(self, x, labels):
            return {"loss": nn.functional.cross_entropy(self.net(x), labels)}

    class Wide(TrainerCallback):
        def __init__(self, width):
            self.width = width
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    class SlowTracker(Tracker):
        name = "slow"
        def __init__(self, delay):
            self.delay, self.points = delay, 0
        def log_metrics(self, metrics, step, epoch):
            time.sleep(self.delay)
            self.points += 1

    class Clock(TrainerCallback):
        last_step_at = None
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == state.max_steps:
                Clock.last_step_at = time.perf_counter()

    class WideTrainer(Trainer):
        def log(self, logs, start_time=None):
            if spec.get("width") and "loss" in logs:
                logs.update({f"metric_{i:04d}": float(i) for i in range(spec["width"])})
            super().log(logs, start_time)

    callbacks = [Clock()]
    if spec.get("slow"):
        callbacks.append(SlowTracker(spec["slow"]))
    args = TrainingArguments(
        output_dir=spec["out"], report_to=spec["report_to"], max_steps=spec["steps"],
        logging_steps=spec["logging_steps"], save_strategy="no", per_device_train_batch_size=8,
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
    )
    trainer = WideTrainer(model=Model(), args=args, train_dataset=Data(), callbacks=callbacks)
    def cpu_now():  # this process and its children (trackers in processes of their own, once reaped)
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    usage = cpu_now()
    start = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    cpu = cpu_now() - usage
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        out = {"train_s": end - start, "train_cpu_s": cpu, "loop_s": (Clock.last_step_at or end) - start,
               "drain_s": end - (Clock.last_step_at or end),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "failures": trainer.callback_handler.tracker_failures()}
        print("RESULT " + json.dumps(out), flush=True)
''')


def measure(spec: dict[str, Any], env: dict[str, str], torchrun: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tracklink-load-") as tmp:
        root = Path(tmp)
        spec = {**spec, "out": str(root / "out")}
        script = root / "child.py"
        script.write_text(CHILD)
        run_env = {**os.environ, **offline_env(root), **env}
        command = [sys.executable, str(script), json.dumps(spec), str(TESTS)]
        if torchrun:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *command[1:]]
        proc = subprocess.run(command, capture_output=True, text=True, env=run_env, cwd=root, timeout=3600)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        result = json.loads(lines[-1][len("RESULT "):])
        result["points"] = read_back(root, spec) if spec["report_to"] != "none" else {}
        return result


def read_back(root: Path, spec: dict[str, Any]) -> dict[str, int]:
    """How many ``loss`` points each tracker's own files hold."""
    sys.path.insert(0, str(TESTS))
    points: dict[str, int] = {}
    names = spec["report_to"]
    if "tensorboard" in names:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        count = 0
        for path in root.rglob("events.out.tfevents.*"):
            acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
            acc.Reload()
            if "train/loss" in acc.Tags()["scalars"]:
                count += len(acc.Scalars("train/loss"))
        points["tensorboard"] = count
    if "mlflow" in names:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        points["mlflow"] = sum(len(client.get_metric_history(r.info.run_id, "loss")) for r in runs)
    if "wandb" in names:
        from readers.wandb import read_runs

        points["wandb"] = sum(len(run.series("train/loss")) for run in read_runs(root / "wandb"))
    if "dvclive" in names:
        from readers.dvclive import series

        live = root / "dvclive"
        name = "loss" if (live / "plots" / "metrics" / "loss.tsv").is_file() else "train/loss"
        points["dvclive"] = len(series(live, name)) if (live / "plots" / "metrics" / f"{name}.tsv").is_file() else 0
    if "comet_ml" in names:
        from readers.comet import read_archives

        points["comet_ml"] = sum(len([m for m in a.metrics if m.get("metricName") == "train/loss"])
                                 for a in read_archives(root / "comet"))
    return points


# -- scenarios ---------------------------------------------------------------------------------------------


def _pair(name: str, spec: dict[str, Any], env: dict[str, str] | None = None, torchrun: bool = False) -> dict[str, Any]:
    base = measure({**spec, "report_to": "none", "slow": None}, {}, torchrun)
    loaded = measure(spec, env or {}, torchrun)
    row = {"scenario": name, "none": base, "trackers": loaded,
           "train_ratio": loaded["train_s"] / base["train_s"], "loop_ratio": loaded["loop_s"] / base["loop_s"],
           "drain_s": loaded["drain_s"], "peak_rss_growth_mb": loaded["peak_rss_mb"] - base["peak_rss_mb"]}
    if "train_cpu_s" in loaded:
        # the process's CPU time during train(): on this machine's cores, no scheduling of that work (threads or
        # processes) can finish train() sooner than this bound
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        row["cpu_ratio"] = loaded["train_cpu_s"] / base["train_cpu_s"]
        row["wall_ratio_bound"] = loaded["train_cpu_s"] / cores / base["train_s"]
    print(f"{name:<22} train() {loaded['train_s']:7.2f} s vs {base['train_s']:6.2f} s  ({row['train_ratio']:5.2f}x)  "
          f"loop {row['loop_ratio']:5.2f}x  drain {row['drain_s']:6.2f} s  RSS +{row['peak_rss_growth_mb']:6.1f} MB  "
          f"CPU {row.get('cpu_ratio', 0):5.2f}x (bound {row.get('wall_ratio_bound', 0):5.2f}x)  "
          f"points {loaded['points']}  failures {loaded['failures'] or '-'}", flush=True)
    return row


def sustained(steps: int, short: int = 50) -> dict[str, Any]:
    row = _pair("sustained (5 trackers)", {"report_to": FIVE, "steps": steps, "logging_steps": 1})
    # the same with a few steps: what the five SDKs' setup and teardown cost (imports, stores, files), so the
    # ratio of the steps in between (setup paid) can be told apart from it
    first = _pair(f"sustained, {short} steps", {"report_to": FIVE, "steps": short, "logging_steps": 1})
    none_s = row["none"]["train_s"] - first["none"]["train_s"]
    row["setup"] = {"steps": short, "extra_s": first["trackers"]["train_s"] - first["none"]["train_s"],
                    "extra_cpu_s": first["trackers"]["train_cpu_s"] - first["none"]["train_cpu_s"],
                    "marginal_ratio": (row["trackers"]["train_s"] - first["trackers"]["train_s"]) / none_s,
                    "marginal_cpu_ratio": (row["trackers"]["train_cpu_s"] - first["trackers"]["train_cpu_s"])
                    / (row["none"]["train_cpu_s"] - first["none"]["train_cpu_s"])}
    print(f"{'':<22} setup and teardown of the SDKs: +{row['setup']['extra_s']:.2f} s wall, "
          f"+{row['setup']['extra_cpu_s']:.2f} s CPU; the {steps - short} steps after: "
          f"{row['setup']['marginal_ratio']:.2f}x wall, {row['setup']['marginal_cpu_ratio']:.2f}x CPU", flush=True)
    return row


def wide(steps: int) -> dict[str, Any]:
    return _pair("wide (2,000 keys)", {"report_to": FIVE, "steps": steps, "logging_steps": 10, "width": 2000})


def processes(steps: int, wide_steps: int) -> list[dict[str, Any]]:
    """The sustained and wide scenarios with each tracker in a process of its own (``TRACKLINK_DELIVERY=process``):
    CPU time then includes the followers' (reaped when ``train()`` ends); peak RSS is the training process's."""
    env = {"TRACKLINK_DELIVERY": "process"}
    return [_pair("sustained, processes", {"report_to": FIVE, "steps": steps, "logging_steps": 1}, env),
            _pair("wide, processes", {"report_to": FIVE, "steps": wide_steps, "logging_steps": 10, "width": 2000},
                  env)]


def alone(steps: int, wide_steps: int) -> list[dict[str, Any]]:
    """Each tracker alone in a process of its own, sustained and wide: training, the journal's writer and one
    follower share this machine's cores (a core for the follower on 2 cores)."""
    env = {"TRACKLINK_DELIVERY": "process"}
    rows = []
    for name in FIVE:
        rows.append(_pair(f"{name} alone, processes", {"report_to": [name], "steps": steps, "logging_steps": 1},
                          env))
    for name in FIVE:
        rows.append(_pair(f"{name} alone, wide, processes",
                          {"report_to": [name], "steps": wide_steps, "logging_steps": 10, "width": 2000}, env))
    return rows


def slow(steps: int) -> list[dict[str, Any]]:
    spec = {"report_to": "none", "steps": steps, "logging_steps": 1, "slow": 0.002}
    return [_pair("slow tracker", spec), _pair("slow tracker, queue 100", spec, {"TRACKLINK_QUEUE_SIZE": "100"})]


RUNS_CHILD = textwrap.dedent('''
    import json, os, resource, sys, threading
    import tracklink

    def snapshot():
        return {"threads": threading.active_count(), "open_files": len(os.listdir("/proc/self/fd")),
                "rss_mb": int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20}

    marks = {}
    for i in range(200):
        with tracklink.init(name=f"run-{i}", report_to=["tensorboard", "mlflow"], dir=f"runs/run-{i}") as run:
            for step in range(20):
                run.log({"loss": 1.0 / (step + 1)}, step=step)
        if i + 1 in (20, 200):
            marks[i + 1] = snapshot()
    print("RESULT " + json.dumps(marks), flush=True)
''')


def many_runs() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tracklink-runs-") as tmp:
        root = Path(tmp)
        (root / "child.py").write_text(RUNS_CHILD)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(root / "child.py")], capture_output=True, text=True,
                              env={**os.environ, **offline_env(root)}, cwd=root, timeout=3600)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"child failed:\n{proc.stderr[-3000:]}")
        marks = json.loads(lines[-1][len("RESULT "):])
        dirs = len(list(root.rglob("events.out.tfevents.*")))
    row = {"scenario": "200 short runs", "after_20": marks["20"], "after_200": marks["200"],
           "tensorboard_event_files": dirs, "wall_s": time.perf_counter() - start}
    print(f"{'200 short runs':<22} threads {marks['20']['threads']} -> {marks['200']['threads']}, open files "
          f"{marks['20']['open_files']} -> {marks['200']['open_files']}, RSS {marks['20']['rss_mb']:.0f} -> "
          f"{marks['200']['rss_mb']:.0f} MB, {dirs} TensorBoard event files", flush=True)
    return row


def torchrun(steps: int) -> dict[str, Any]:
    return _pair("torchrun (2 processes)", {"report_to": ["tensorboard", "mlflow"], "steps": steps,
                                            "logging_steps": 1}, torchrun=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5000, help="steps of the sustained scenario")
    parser.add_argument("--wide-steps", type=int, default=200)
    parser.add_argument("--slow-steps", type=int, default=20000)
    parser.add_argument("--torchrun-steps", type=int, default=1000)
    parser.add_argument("--only", nargs="*", default=None,
                        choices=[*SCENARIOS], help="run only these scenarios (the others are kept in --json)")
    parser.add_argument("--json", type=Path, help="write the results here")
    ns = parser.parse_args(argv)
    wanted = set(ns.only or SCENARIOS)
    results: dict[str, Any] = {}
    if ns.only and ns.json and ns.json.is_file():  # a partial run updates the scenarios it ran
        results = json.loads(ns.json.read_text())
    if "sustained" in wanted:
        results["sustained"] = sustained(ns.steps)
    if "wide" in wanted:
        results["wide"] = wide(ns.wide_steps)
    if "slow" in wanted:
        results["slow"] = slow(ns.slow_steps)
    if "runs" in wanted:
        results["runs"] = many_runs()
    if "torchrun" in wanted:
        results["torchrun"] = torchrun(ns.torchrun_steps)
    if "processes" in wanted:
        results["processes"] = processes(ns.steps, ns.wide_steps)
    if "alone" in wanted:
        results["alone"] = alone(ns.steps, ns.wide_steps)
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
