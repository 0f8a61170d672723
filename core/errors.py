"""Exceptions raised by tracklink."""

from __future__ import annotations

__all__ = [
    "PluginRegistrationError",
    "ReportToError",
    "Terminated",
    "TrackerError",
    "TrackerSetupError",
    "TrackerUnavailableError",
    "UnknownTrackerError",
]


class ReportToError(ValueError):
    """``report_to`` (or ``TRACKLINK_REPORT_TO``) has a value that cannot be resolved."""


class UnknownTrackerError(ReportToError):
    """``report_to`` names a tracker that no installed plugin provides."""

    def __init__(self, name: str, known: list[str], suggestion: str | None = None):
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        super().__init__(
            f"report_to names unknown tracker {name!r}.{hint} Known trackers: {', '.join(known)}; "
            "also accepted: 'all', 'none'."
        )
        self.name = name
        self.known = known
        self.suggestion = suggestion


class TrackerUnavailableError(ReportToError):
    """``report_to`` names a known tracker whose SDK is missing or too old."""

    def __init__(self, name: str, problem: str, install_hint: str):
        super().__init__(f"report_to names {name!r}, but {problem}. Install it with: {install_hint}")
        self.name = name
        self.install_hint = install_hint


class PluginRegistrationError(ValueError):
    """A plugin could not be registered (misspelt hook, unknown argument, wrapper implementation)."""


class TrackerError(RuntimeError):
    """A tracker plugin failed and ``TRACKLINK_ON_ERROR=raise`` asked for training to stop."""

    def __init__(self, tracker: str, event: str, error: BaseException):
        super().__init__(f"tracker {tracker!r} failed in {event}: {type(error).__name__}: {error}")
        self.tracker = tracker
        self.event = event
        self.error = error


class TrackerSetupError(RuntimeError):
    """A tracker could not start (or re-attach to) its run. The hub switches the tracker off at once:
    its setup is not retried for every later event (a server that does not answer would cost the
    SDK's whole retry time again and again)."""

    def __init__(self, tracker: str, error: BaseException):
        super().__init__(f"{type(error).__name__}: {error}")
        self.tracker = tracker
        self.error = error


class Terminated(SystemExit):
    """Raised in the training thread when the process receives SIGTERM during ``train()``.

    It is a ``SystemExit`` with status 143 (128 + SIGTERM): ``on_exception`` fires, trackers flush
    and close their runs as killed, and the process exits non-zero without a traceback.
    """

    def __init__(self, signum: int = 15):
        super().__init__(128 + signum)
        self.signum = signum
