"""Run-journal benchmark: what the journal (tracklink.journal) costs and how fast it and ``tracklink sync`` are.

Five measurements, each a ratio from one run on this machine:

* ``log_call``  the training thread's time per ``run.log`` call (10 scalars) with the journal on and off
  (``TRACKLINK_JOURNAL``), one no-op tracker and TensorBoard selected, rounds interleaved so machine noise hits
  both alike; median wall and thread CPU time per call.
* ``media``  the training thread's time per ``run.log`` of a 512x512 RGB image (TensorBoard selected) with the
  journal on and off (the journal stores its PNG beside it, on its writer thread), and the disk per image.
* ``throughput``  events per second the journal's writer thread stores (recorded on one thread as fast as it
  can, until the last commit returned), for events of 1 and 10 scalars.
* ``size``  bytes of journal per million scalar metrics (1 and 10 scalars per event).
* ``sync``  ``tracklink sync`` of an offline run of ``--metrics`` scalar metrics (10 per step) into MLflow
  with a local SQLite store, against MLflow's own ``MlflowClient.log_batch`` loop sending the same values
  (1,000 per request, as MLflow allows) into a fresh store.

``--json PATH`` writes the numbers. Not a test: nothing is asserted.
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

WIDTH = 10


def _env(root: Path) -> None:
    os.environ.update({"HOME": str(root / "home"), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                       "TRACKLINK_LOG_LEVEL": "error"})
    (root / "home").mkdir(parents=True, exist_ok=True)


def _values(step: int, width: int = WIDTH) -> dict[str, float]:
    return {f"metric_{i}": 1.0 / (step + i + 1) for i in range(width)}


def log_call(root: Path, steps: int, rounds: int) -> dict[str, Any]:
    import tracklink

    class Noop(tracklink.Tracker):
        name = "noop"

        def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
            pass

    samples: dict[str, dict[str, list[float]]] = {}
    for round_ in range(rounds):
        for journal in ("on", "off"):
            os.environ["TRACKLINK_JOURNAL"] = "1" if journal == "on" else "0"
            for trackers in ("noop", "tensorboard"):
                report_to = ["tensorboard"] if trackers == "tensorboard" else "none"
                callbacks = [Noop()] if trackers == "noop" else []
                run = tracklink.init(report_to=report_to, callbacks=callbacks,
                                     dir=root / f"log-{journal}-{trackers}-{round_}")
                run.log(_values(0), step=0)
                run.wait()
                wall, cpu = [], []
                for step in range(1, steps + 1):
                    values = _values(step)
                    w0, c0 = time.perf_counter(), time.thread_time()
                    run.log(values, step=step)
                    wall.append(time.perf_counter() - w0)
                    cpu.append(time.thread_time() - c0)
                run.finish()
                key = f"{trackers}/journal-{journal}"
                entry = samples.setdefault(key, {"wall": [], "cpu": []})
                entry["wall"].append(statistics.median(wall) * 1e6)
                entry["cpu"].append(statistics.median(cpu) * 1e6)
    os.environ.pop("TRACKLINK_JOURNAL", None)
    out: dict[str, Any] = {k: {"wall_us": statistics.median(v["wall"]), "cpu_us": statistics.median(v["cpu"])}
                           for k, v in samples.items()}
    for trackers in ("noop", "tensorboard"):
        on, off = out[f"{trackers}/journal-on"], out[f"{trackers}/journal-off"]
        out[f"{trackers}/ratio_wall"] = on["wall_us"] / off["wall_us"]
        out[f"{trackers}/ratio_cpu"] = on["cpu_us"] / off["cpu_us"]
    return out


def media(root: Path, calls: int, rounds: int) -> dict[str, Any]:
    """The training thread's time per ``run.log`` of one 512x512 RGB float image (TensorBoard selected) with the
    journal on and off, and the journal's disk use per image (its PNG beside the journal)."""
    import numpy as np

    import tracklink

    pixels = np.random.default_rng(0).random((512, 512, 3), dtype=np.float32)
    samples: dict[str, list[float]] = {"on": [], "off": []}
    stored: list[int] = []
    for round_ in range(rounds):
        for journal in ("on", "off"):
            os.environ["TRACKLINK_JOURNAL"] = "1" if journal == "on" else "0"
            directory = root / f"media-{journal}-{round_}"
            run = tracklink.init(report_to=["tensorboard"], dir=directory)
            run.log({"loss": 1.0}, step=0)
            run.wait()
            wall = []
            for step in range(1, calls + 1):
                start = time.perf_counter()
                run.log({"samples": tracklink.Image(pixels)}, step=step)
                wall.append(time.perf_counter() - start)
                time.sleep(0.1)  # a step that logs an image now and then
            run.finish()
            samples[journal].append(statistics.median(wall) * 1e3)
            if journal == "on":
                stored.append(sum(p.stat().st_size for p in directory.rglob("*.png") if ".media" in str(p.parent)))
    os.environ.pop("TRACKLINK_JOURNAL", None)
    on, off = statistics.median(samples["on"]), statistics.median(samples["off"])
    return {"log_ms_journal_on": on, "log_ms_journal_off": off, "ratio": on / off,
            "journal_bytes_per_image": statistics.median(stored) / calls}


def throughput(root: Path, events: int) -> dict[str, Any]:
    from tracklink.journal import Journal

    out: dict[str, Any] = {}
    for width in (1, WIDTH):
        journal = Journal.create(root / f"throughput-{width}", {"noop": True}, interval=0.2)
        assert journal is not None
        payloads = [{"logs": _values(step, width)} for step in range(1000)]
        start = time.perf_counter()
        for step in range(events):
            journal.record("on_log", step, None, payloads[step % 1000])
        recorded = time.perf_counter() - start
        journal.commit(timeout=None)
        elapsed = time.perf_counter() - start
        journal.close()
        size = journal.path.stat().st_size
        out[f"{width}_scalars"] = {
            "events": events, "events_per_s": events / elapsed, "record_us_per_event": recorded / events * 1e6,
            "scalars_per_s": events * width / elapsed,
            "bytes_per_million_scalars": size / (events * width) * 1e6,
        }
    return out


def sync_vs_log_batch(root: Path, metrics: int) -> dict[str, Any]:
    import tracklink
    from tracklink.sync import sync

    steps = metrics // WIDTH
    # a run recorded offline
    os.environ["TRACKLINK_OFFLINE"] = "1"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'sync-mlflow.db'}"
    directory = root / "offline-run"
    start = time.perf_counter()
    with tracklink.init(project="bench", name="offline", report_to=["mlflow"], dir=directory) as run:
        for step in range(steps):
            run.log(_values(step), step=step)
    record_s = time.perf_counter() - start
    os.environ.pop("TRACKLINK_OFFLINE")
    # MLflow creates its tables on first use: do it before timing, for both
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"]).search_experiments()
    start = time.perf_counter()
    sent = sync(directory, progress=False)
    sync_s = time.perf_counter() - start
    # MLflow's own loop: the same values, 1,000 per log_batch request
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'loop-mlflow.db'}")
    experiment = client.create_experiment("bench")
    run_id = client.create_run(experiment).info.run_id
    start = time.perf_counter()
    batch: list[Any] = []
    now = int(time.time() * 1000)
    for step in range(steps):
        for key, value in _values(step).items():
            batch.append(Metric(key, value, now, step))
        if len(batch) >= 1000:
            client.log_batch(run_id, metrics=batch)
            batch = []
    if batch:
        client.log_batch(run_id, metrics=batch)
    client.set_terminated(run_id)
    loop_s = time.perf_counter() - start
    return {"metrics": steps * WIDTH, "record_s": record_s, "sync_s": sync_s, "log_batch_loop_s": loop_s,
            "ratio": sync_s / loop_s, "events_sent": sent.get("mlflow")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="log calls per round (log_call)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=200_000, help="events written (throughput)")
    parser.add_argument("--metrics", type=int, default=1_000_000, help="scalar metrics synced (sync)")
    parser.add_argument("--images", type=int, default=15, help="image log calls per round (media)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: log_call,media,throughput,sync")
    parser.add_argument("--json", type=Path, default=None)
    ns = parser.parse_args()
    skip = {s.strip() for s in ns.skip.split(",") if s.strip()}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tracklink-journal-bench-") as tmp:
        root = Path(tmp)
        _env(root)
        if "log_call" not in skip:
            results["log_call"] = log_call(root, ns.steps, ns.rounds)
            print(json.dumps({"log_call": results["log_call"]}, indent=2), flush=True)
        if "media" not in skip:
            results["media"] = media(root, ns.images, ns.rounds)
            print(json.dumps({"media": results["media"]}, indent=2), flush=True)
        if "throughput" not in skip:
            results["throughput"] = throughput(root, ns.events)
            print(json.dumps({"throughput": results["throughput"]}, indent=2), flush=True)
        if "sync" not in skip:
            results["sync"] = sync_vs_log_batch(root, ns.metrics)
            print(json.dumps({"sync": results["sync"]}, indent=2), flush=True)
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
