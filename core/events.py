"""Event names, the arguments every event carries, and the control-flag resets performed before each.

The hook specifications in :mod:`tracklink.hookspecs` are the one source of the event list: the names,
their order and their arguments are read from them here, as plain data for the hub's hot path. Adding an
event means adding its specification (and its ``TrainerCallback`` method); everything else derives from it.
"""

from __future__ import annotations

from . import hookspecs

__all__ = ["EVENTS", "EXTRAS", "RESETS", "STANDARD_ARGS"]


def _specs() -> list[tuple[str, tuple[str, ...]]]:
    """The hook specifications, in the order :mod:`tracklink.hookspecs` defines them, with their arguments."""
    found = []
    for name, function in vars(hookspecs).items():
        if callable(function) and hasattr(function, f"{hookspecs.PROJECT}_spec"):
            code = function.__code__  # the specs are plain functions: their parameters, without importing inspect
            found.append((name, tuple(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])))
    return found


_SPECS = _specs()

#: Every event, in the order a training run first fires them (the order of the hook specifications).
EVENTS: tuple[str, ...] = tuple(name for name, _ in _SPECS)

#: Arguments every hook may name (those every specification has, in their order).
STANDARD_ARGS: tuple[str, ...] = tuple(
    arg for arg in _SPECS[0][1] if all(arg in params for _, params in _SPECS)
)

#: Event-specific arguments.
EXTRAS: dict[str, tuple[str, ...]] = {
    name: extra for name, params in _SPECS if (extra := tuple(a for a in params if a not in STANDARD_ARGS))
}

#: Control flags the hub clears before plugins see the event (transformers' rules).
RESETS: dict[str, tuple[str, ...]] = {
    "on_train_begin": ("should_training_stop",),
    "on_epoch_begin": ("should_epoch_stop",),
    "on_step_begin": ("should_log", "should_evaluate", "should_save"),
    "on_evaluate": ("should_evaluate",),
    "on_save": ("should_save",),
    "on_log": ("should_log",),
}
