"""SIGTERM during a run: turned into a :class:`~tracklink.errors.Terminated` exception in the main thread.

A cluster scheduler stops a job with SIGTERM. Raised as an exception in the training loop, it unwinds like
any other error: the loop's driver closes every tracker's run as ``killed`` after flushing what was logged,
and the process exits with status 143. Every driver (the trainer, the transformers bridge, a run used as a
context manager) uses this one guard.
"""

from __future__ import annotations

import signal
import threading
from types import TracebackType
from typing import Any

from .errors import Terminated
from .shutdown import note_exception

__all__ = ["SigtermGuard"]


def _raise_terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the flush short
    exception = Terminated(signum)
    note_exception(exception)  # a SystemExit: sys.excepthook never sees it; runs left open end as killed
    raise exception


class SigtermGuard:
    """While installed (``install()``/``restore()``, or as a context manager), SIGTERM raises
    :class:`Terminated` in the main thread. Outside the main thread it does nothing (Python delivers
    signals to the main thread only)."""

    def __init__(self) -> None:
        self._previous: Any = None
        self._installed = False

    def install(self, only_if_default: bool = False) -> None:
        """Turn SIGTERM into :class:`Terminated` (with ``only_if_default``: only when SIGTERM still has its
        default action, so a handler the program installed itself is left alone)."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        if only_if_default and signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        self._previous = signal.signal(signal.SIGTERM, _raise_terminated)
        self._installed = True

    def restore(self) -> None:
        if not self._installed or threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
        self._installed = False
        self._previous = None

    def __enter__(self) -> SigtermGuard:
        self.install()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.restore()


def ignoring_sigterm() -> Any:
    """While the driver closes its trackers after a failure: ignore SIGTERM (the flush must finish).
    Returns the previous handler for :func:`restore_sigterm`, or ``None`` outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, signal.SIG_IGN)


def restore_sigterm(previous: Any) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
