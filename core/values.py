"""Logged values: what counts as a number, and the plain form a log takes before anyone stores it.

Users log what their code has at hand: Python numbers, one-element tensors (``loss.detach()``), NumPy
scalars (``np.float32(0.25)``), strings, and media values (:mod:`tracklink.media`: ``tracklink.Image``,
``Histogram``, ``Table``, ``Text``, ``Figure``, ``File``). :func:`plain_logs` turns every one-element tensor
or array into a Python number (so ``trainer_state.json`` and every tracker get a number), keeps strings,
takes the snapshot of each media value (copied off the device once; a value of the wrong form is left out
with a warning naming its key and the accepted form), and leaves out, with one warning per key, values that
are not a single number (a whole tensor, an array: wrap it in ``tracklink.Image`` or ``Histogram``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .media import Media, holding, release_logged

logger = logging.getLogger("tracklink")

__all__ = ["as_number", "plain_logs"]

_warned: set[str] = set()


def _count(value: Any) -> int | None:
    numel = getattr(value, "numel", None)
    if callable(numel):
        return int(numel())
    size = getattr(value, "size", None)
    return size if isinstance(size, int) else None


def as_number(value: Any) -> float | int | None:
    """``value`` as a Python number (bools as 0/1), or ``None`` when it is not a single number."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    item = getattr(value, "item", None)
    if callable(item) and _count(value) in (1, None):
        try:
            result = item()
        except (TypeError, ValueError, RuntimeError):
            return None
        if isinstance(result, bool):
            return int(result)
        return result if isinstance(result, (int, float)) else None
    return None


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f" of shape {tuple(shape)}" if shape is not None else ""


def plain_logs(logs: Mapping[str, Any], where: str = "log()") -> dict[str, Any]:
    """A copy of ``logs`` with numbers as Python numbers (see the module documentation).

    NaN and infinity stay as they are (logged as NaN, never disguised as 0). Strings, ``None`` and
    plain containers are kept; media values are replaced by their snapshot (:meth:`Media.freeze`), or left
    out with a warning when their form is wrong; tensors and arrays of more than one element are left out
    with one warning per key naming the value's type and shape and what is accepted.
    """
    out: dict[str, Any] = {}
    frozen: list[Media] = []
    for key, value in logs.items():
        if not isinstance(key, str):
            if repr(key) not in _warned:
                _warned.add(repr(key))
                logger.warning("tracklink: %s got the key %r (%s); metric names are strings, so it is logged as %r",
                               where, key, type(key).__name__, str(key))
            key = str(key)
        if value is None or isinstance(value, (str, bool, int, float, list, tuple, dict)):
            out[key] = value
            continue
        if isinstance(value, Media):
            snapshot = value.freeze()
            if snapshot.problem is not None:
                # every time, not once per key: a value the user meant to log is missing at this step
                logger.warning("tracklink: %s left out %r (%s): %s", where, key, type(value).__name__,
                               snapshot.problem)
                continue
            out[key] = snapshot
            frozen.append(snapshot)
            continue
        number = as_number(value)
        if number is not None:
            out[key] = number
            continue
        if hasattr(value, "item") or hasattr(value, "tolist"):
            if key not in _warned:
                _warned.add(key)
                logger.warning(
                    "tracklink: %s got %r = %s%s, which is not a single number; left out. Log a number, a "
                    "one-element tensor or array, or a string (e.g. tensor.mean().item()); or a media value: "
                    "tracklink.Image(...), tracklink.Histogram(...)",
                    where, key, type(value).__name__, _shape(value),
                )
            continue
        out[key] = value
    if frozen or holding():
        release_logged(frozen)  # the log history keeps descriptions; queued snapshots keep the data
    return out

