"""The one exit-time clean-up: what runs at interpreter exit, in which order.

At exit, in this order (each step isolated: a failing step is logged and the next one runs):

1. ``runs``: runs that never finished are finished (a plain run, the transformers bridge): as ``failed``
   after an uncaught exception, else as ``success``;
2. ``drain``: every tracker queue is drained (within ``TRACKLINK_DRAIN_TIMEOUT`` seconds);
3. ``trackers``: tracker runs still open (a run opened by a standalone evaluation) are closed;
4. ``journals``: the run journals are committed and closed (tracklink.journal);
5. ``followers``: trackers in processes of their own finish what their journals hold, within
   ``TRACKLINK_DRAIN_TIMEOUT`` seconds; the ones still delivering then are stopped (tracklink.follow);
6. ``process-group``: the process group the trainer created is destroyed, after every tracker is done.

Modules add their step with :func:`on_exit`; the first call installs the handler and a ``sys.excepthook``
wrapper that remembers an uncaught exception (:func:`uncaught_exception`).
"""

from __future__ import annotations

import atexit
import logging
import sys
from collections.abc import Callable
from types import TracebackType

logger = logging.getLogger("tracklink")

__all__ = ["STEPS", "note_exception", "on_exit", "uncaught_exception"]

#: The steps, in the order they run at exit.
STEPS = ("runs", "drain", "trackers", "journals", "followers", "process-group")

_steps: dict[str, list[Callable[[], None]]] = {step: [] for step in STEPS}
_uncaught: list[BaseException] = []
_installed = False


def on_exit(step: str, function: Callable[[], None]) -> None:
    """Run ``function`` at interpreter exit, in ``step`` (one of :data:`STEPS`); registering the same
    function twice runs it once."""
    if step not in _steps:
        raise ValueError(f"exit step {step!r} is unknown; accepted: {', '.join(STEPS)}")
    if function not in _steps[step]:
        _steps[step].append(function)
    _install()
    # registered again, so it runs before the exit handlers registered since (``atexit`` runs the last
    # registered first): an SDK's or torch's own handlers then run after tracklink has finished with them
    atexit.unregister(_run_steps)
    atexit.register(_run_steps)


def uncaught_exception() -> BaseException | None:
    """The exception that is ending the program, if one escaped to the top (seen by ``sys.excepthook``) or was
    noted on its way there (SIGTERM's ``Terminated``, a ``SystemExit``, which ``sys.excepthook`` never sees)."""
    return _uncaught[-1] if _uncaught else None


def note_exception(exception: BaseException) -> None:
    """Remember ``exception`` as what is ending the program (see :func:`uncaught_exception`)."""
    _uncaught.append(exception)


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    previous = sys.excepthook

    def excepthook(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
        _uncaught.append(value)
        previous(kind, value, traceback)

    sys.excepthook = excepthook


def _run_steps() -> None:
    for step in STEPS:
        for function in list(_steps[step]):
            try:
                function()
            except Exception as exc:  # best effort at shutdown: the next step still runs
                logger.debug("tracklink: exit step %s (%s) failed: %r", step, getattr(function, "__name__", function),
                             exc)
