"""Test-only third-party tracklink plugin: a Tracker and a hookimpl module that record to JSONL."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

OUT_ENV = "TRACKLINK_TESTPLUGIN_OUT"
SECRET_ENV = "TRACKLINK_TESTPLUGIN_API_KEY"
#: A setting outside tracklink's own ``TRACKLINK_`` namespace, as a third-party tracker's would be.
PROJECT_ENV = "TESTRECORDER_PROJECT"
DELAY_ENV = "TRACKLINK_TESTPLUGIN_DELAY"

_lock = threading.Lock()


def record(source: str, **fields: Any) -> None:
    """Append one JSON line ``{"source": ..., **fields}`` to ``$TRACKLINK_TESTPLUGIN_OUT`` (if set)."""
    path = os.environ.get(OUT_ENV)
    if not path:
        return
    line = json.dumps({"source": source, **fields}, sort_keys=True, default=str)
    with _lock, open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
