"""An Accelerate training script for ``test_accelerate.py`` (run as a subprocess, or by ``torchrun``).

    python accelerate_script.py --dir RUN_DIR [--mode finish|raise|forever] [--steps N] [--start S] [--resume]

It trains a tiny model on CPU with ``Accelerator(cpu=True, log_with=[TracklinkTracker(...)])`` and logs
``loss = 1 / (step + 1)`` (a value the test can predict) and the process index at every step, printing
``LOGGED <step>`` after each ``accelerator.log``. ``raise`` raises after step 2 without calling
``end_training()``; ``forever`` logs until it is stopped (by SIGTERM). The trackers come from ``--report-to``
(default ``mlflow``; the MLflow store is ``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import argparse
import time

import torch
from accelerate.accelerator import Accelerator

from tracklink.integrations.accelerate import TracklinkTracker

parser = argparse.ArgumentParser()
parser.add_argument("--dir", required=True)
parser.add_argument("--mode", choices=["finish", "raise", "forever"], default="finish")
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--start", type=int, default=0)
parser.add_argument("--resume", action="store_true")
parser.add_argument("--report-to", default="mlflow")
args = parser.parse_args()

tracker = TracklinkTracker(report_to=args.report_to.split(","), run_name="accelerate-script", dir=args.dir,
                           resume=True if args.resume else None)
accelerator = Accelerator(cpu=True, log_with=[tracker])
accelerator.init_trackers("accelerate-script", config={"lr": 0.1, "processes": accelerator.num_processes})

torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model, optimizer = accelerator.prepare(model, optimizer)

step = args.start
while args.mode == "forever" or step < args.start + args.steps:
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    loss = torch.nn.functional.mse_loss(model(x), y)
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad()
    accelerator.log({"loss": 1.0 / (step + 1), "process": accelerator.process_index}, step=step)
    if accelerator.is_main_process:
        print("LOGGED", step, flush=True)
    if args.mode == "raise" and step == 2:
        raise RuntimeError("the loop crashed (planted)")
    if args.mode == "forever":
        time.sleep(0.02)
    step += 1

accelerator.end_training()
