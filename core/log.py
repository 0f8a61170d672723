"""tracklink's logger ("tracklink") and its default console output.

The default handler writes through tqdm while a progress bar is open (``tqdm.write``: the bar is cleared,
the message printed on its own line, the bar redrawn), so a message logged during training, from the
training loop or a tracker's worker thread, never lands on the end of the bar's line.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["ProgressAwareHandler", "ensure_default_logging"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _open_bars() -> bool:
    """Whether a tqdm progress bar is open (without importing tqdm when nothing did)."""
    module = sys.modules.get("tqdm.std")
    instances = getattr(getattr(module, "tqdm", None), "_instances", None)
    return bool(instances)


class ProgressAwareHandler(logging.StreamHandler):
    """A stream handler that writes through ``tqdm.write`` while a tqdm bar is open."""

    def emit(self, record: logging.LogRecord) -> None:
        if not _open_bars():
            super().emit(record)
            return
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:  # pragma: no cover - as logging.StreamHandler does
            raise
        except Exception:
            self.handleError(record)


def ensure_default_logging(process: Any = None) -> None:
    """Give the "tracklink" logger a stderr handler when the application configured none.

    The level comes from ``TRACKLINK_LOG_LEVEL`` (debug, info, warning, error; default ``info`` on the
    world main process and ``warning`` on the others). An application that configures logging itself
    (a handler on the root logger or on "tracklink") is left alone.
    """
    logger = logging.getLogger("tracklink")
    if logger.handlers or logging.getLogger().handlers or getattr(logger, "_tracklink_configured", False):
        return
    raw = os.environ.get("TRACKLINK_LOG_LEVEL", "").strip().lower()
    if raw and raw not in _LEVELS:
        raise ValueError(f"TRACKLINK_LOG_LEVEL={raw!r} is invalid; accepted: {', '.join(_LEVELS)}")
    main = process is None or getattr(process, "is_world_main", True)
    level = _LEVELS[raw] if raw else (logging.INFO if main else logging.WARNING)
    handler = ProgressAwareHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    logger._tracklink_configured = True  # type: ignore[attr-defined]
