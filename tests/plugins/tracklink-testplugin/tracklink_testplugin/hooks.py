"""pluggy-style plugin: module-level ``@tracklink.hookimpl`` functions naming only what they use."""

from __future__ import annotations

import threading
from typing import Any

import tracklink

from . import record


@tracklink.hookimpl
def on_train_begin(state: Any) -> None:
    record("hooks", call="on_train_begin", step=state.global_step, thread=threading.current_thread().name)


@tracklink.hookimpl
def on_step_end(state: Any) -> None:
    record("hooks", call="on_step_end", step=state.global_step)


@tracklink.hookimpl
def on_log(logs: dict[str, Any], state: Any) -> None:
    record("hooks", call="on_log", step=state.global_step, logs=logs)


@tracklink.hookimpl
def on_train_end(state: Any) -> None:
    record("hooks", call="on_train_end", step=state.global_step)
