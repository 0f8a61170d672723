"""``tracklink demo``: the trainer package's subcommand, added to the ``tracklink`` command line through the
``tracklink.commands`` entry-point group. This module does not import torch: the demo does, when it runs."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_demo"]


def add_demo(subparsers: Any) -> None:
    demo = subparsers.add_parser("demo", help="train a small model with the embedded default trackers")
    demo.add_argument("--output-dir", default="tracklink-demo", help="where checkpoints and logs go")
    demo.add_argument("--report-to", default=None,
                      help="trackers to use (default: tensorboard and mlflow when installed)")
    demo.add_argument("--max-steps", type=int, default=300, help="optimizer steps to train (default 300)")
    demo.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    demo.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                      help="stop when eval accuracy has not improved for PATIENCE evaluations")
    demo.set_defaults(handler=_run_demo)


def _run_demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo  # lazy: the demo imports torch

    return run_demo(output_dir=ns.output_dir, report_to=ns.report_to, max_steps=ns.max_steps, device=ns.device,
                    early_stopping=ns.early_stopping)
