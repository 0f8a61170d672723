"""tracklink's logger ("tracklink") and its default console output."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["ensure_default_logging"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    logger._tracklink_configured = True  # type: ignore[attr-defined]
