"""Media benchmark: what logging a 512x512 image and a histogram of 1M values costs the training thread.

The same values, in one process and interleaved so machine noise hits them alike, go to:

* ``tracklink``    ``tracklink.init(report_to=[tensorboard, wandb]).log({"img": tracklink.Image(x)}, step=...)``
                   (the snapshot is taken on the training thread; PNG encoding and binning happen on the
                   trackers' worker threads);
* ``wandb``        ``wandb_run.log({"img": wandb.Image(x)}, step=...)``, W&B's own synchronous call;
* ``tensorboard``  ``SummaryWriter.add_image("img", x, step, dataformats="HWC")`` / ``add_histogram``,
                   TensorBoard's own synchronous call (torch's writer).

Inputs: a 512x512x3 float32 image in [0, 1] (what a model or a transform produces) and 1,000,000 float32
values (a layer's weights). Between two calls the loop pauses (``--pause``, default 0.3 s: a training step
that logs rarely), so each call is measured with the workers idle: the number is the training thread's
own cost. Printed: the median wall time per call and the thread's CPU time, the ratio of tracklink to each
SDK's call, and how long tracklink's ``finish()`` then waited for the workers (the work is moved off the
training thread, not gone). ``--json PATH`` writes the numbers. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TRACKERS = ["tensorboard", "wandb"]


def _offline_env(root: Path) -> None:
    os.environ.update({
        "HOME": str(root / "home"), "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
        "WANDB_DIR": str(root / "wandb"), "WANDB_DISABLE_GIT": "true", "TRACKLINK_LOG_LEVEL": "warning",
        "MPLCONFIGDIR": str(root / "mpl"), "TENSORBOARD_LOGGING_DIR": str(root / "tl-tb"),
    })
    for name in ("home", "wandb", "mpl"):
        (root / name).mkdir(parents=True, exist_ok=True)


def _inputs(seed: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"image": rng.random((512, 512, 3), dtype=np.float32),
            "histogram": rng.standard_normal(1_000_000, dtype=np.float32)}


def _time(call: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    call()
    return time.perf_counter() - wall, time.thread_time() - cpu


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=15, help="calls per system and kind")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between two calls")
    parser.add_argument("--json", type=Path, help="write the results here")
    ns = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tracklink-media-bench-") as tmp:
        root = Path(tmp)
        _offline_env(root)
        import numpy as np
        from torch.utils.tensorboard import SummaryWriter

        import tracklink
        import wandb

        run = tracklink.init(project="bench", name="tracklink", report_to=TRACKERS, dir=root / "tracklink")
        run.log({"warm": tracklink.Image(np.zeros((8, 8, 3)))}, step=0)
        run.wait()  # set-up done: measure steady state
        writer = SummaryWriter(str(root / "sdk-tb"))
        wb = wandb.init(project="bench-sdk", dir=str(root / "wandb"), reinit="create_new")

        systems: dict[str, dict[str, Callable[[Any, int], None]]] = {
            "tracklink": {
                "image": lambda x, s: run.log({"img": tracklink.Image(x)}, step=s),
                "histogram": lambda x, s: run.log({"hist": tracklink.Histogram(x)}, step=s),
            },
            "wandb": {
                "image": lambda x, s: wb.log({"img": wandb.Image(x)}, step=s),
                "histogram": lambda x, s: wb.log({"hist": wandb.Histogram(x)}, step=s),
            },
            "tensorboard": {
                "image": lambda x, s: writer.add_image("img", x, s, dataformats="HWC"),
                "histogram": lambda x, s: writer.add_histogram("hist", x, s),
            },
        }
        times: dict[str, dict[str, list[tuple[float, float]]]] = {n: {"image": [], "histogram": []} for n in systems}
        for step in range(1, ns.calls + 1):
            inputs = _inputs(step)
            for kind in ("image", "histogram"):
                for name, calls in systems.items():
                    value = inputs[kind]
                    call = calls[kind]
                    times[name][kind].append(_time(lambda call=call, value=value, step=step: call(value, step)))
                    time.sleep(ns.pause)
        start = time.perf_counter()
        run.finish()
        drain = time.perf_counter() - start
        writer.close()
        wb.finish()

    summary: dict[str, Any] = {"calls": ns.calls, "pause_s": ns.pause, "trackers": TRACKERS,
                               "inputs": {"image": "512x512x3 float32", "histogram": "1,000,000 float32"},
                               "tracklink_finish_s": drain}
    for name, kinds in times.items():
        summary[name] = {kind: {"wall_ms": statistics.median(w for w, _ in rows) * 1e3,
                                "cpu_ms": statistics.median(c for _, c in rows) * 1e3}
                         for kind, rows in kinds.items()}
    print(f"training-thread cost of one log call (median of {ns.calls}; tracklink reports to {', '.join(TRACKERS)})")
    print(f"{'kind':<10} {'system':<12} {'wall ms':>9} {'cpu ms':>8} {'tracklink / this':>17}")
    for kind in ("image", "histogram"):
        ours = summary["tracklink"][kind]["wall_ms"]
        for name in systems:
            row = summary[name][kind]
            row["tracklink_ratio"] = ours / row["wall_ms"]
            print(f"{kind:<10} {name:<12} {row['wall_ms']:>9.2f} {row['cpu_ms']:>8.2f} {row['tracklink_ratio']:>16.3f}x")
    print(f"tracklink finish() waited {drain:.2f} s for its worker threads")
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
