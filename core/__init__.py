"""tracklink: a plugin-based experiment-tracking hub for PyTorch training.

``import tracklink`` is light: it imports neither torch nor any tracker SDK. The trainer lives in
``tracklink.trainer`` and the tracker plugins in ``tracklink.integrations``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .callback import TrainerCallback
from .callbacks import EarlyStoppingCallback, PrinterCallback, ProgressCallback
from .errors import (
    PluginRegistrationError,
    ReportToError,
    Terminated,
    TrackerError,
    TrackerUnavailableError,
    UnknownTrackerError,
)
from .flow import DefaultFlowCallback
from .handler import CallbackHandler
from .hookspecs import hookimpl, hookspec
from .media import Artifact, Figure, File, Histogram, Image, Media, MediaError, Table, Text
from .state import ExportableState, TrainerControl, TrainerState
from .tracker import EnvVar, RunEnd, RunInfo, Tracker

if TYPE_CHECKING:
    from .resolve import Resolution, resolve_report_to
    from .run import Run, init

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "CallbackHandler",
    "DefaultFlowCallback",
    "EarlyStoppingCallback",
    "EnvVar",
    "ExportableState",
    "Figure",
    "File",
    "Histogram",
    "Image",
    "Media",
    "MediaError",
    "PluginRegistrationError",
    "PrinterCallback",
    "ProgressCallback",
    "ReportToError",
    "Resolution",
    "Run",
    "RunEnd",
    "RunInfo",
    "Table",
    "Terminated",
    "Text",
    "Tracker",
    "TrackerError",
    "TrackerUnavailableError",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
    "UnknownTrackerError",
    "hookimpl",
    "hookspec",
    "init",
    "resolve_report_to",
]


def __getattr__(name: str) -> Any:
    # report_to resolution reads package metadata (importlib.metadata); load it on first use only
    if name in ("resolve_report_to", "Resolution"):
        from . import resolve

        return getattr(resolve, name)
    if name in ("init", "Run"):  # the run API resolves report_to: loaded on first use, like it
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'tracklink' has no attribute {name!r}")
