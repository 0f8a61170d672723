"""Environment variables a tracker reads: their declaration (:class:`EnvVar`) and how their values are
checked before training (``choices`` or a ``kind``), plus transformers' notion of a true value."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FALSE_VALUES", "KINDS", "TRUE_VALUES", "EnvVar", "env_snapshot", "truthy"]

TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})
FALSE_VALUES = frozenset({"0", "OFF", "NO", "FALSE", ""})

def truthy(value: str | None) -> bool:
    """transformers' notion of a true environment string: 1, ON, YES or TRUE (any case)."""
    return value is not None and value.strip().upper() in TRUE_VALUES


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: What an :class:`EnvVar` of each ``kind`` accepts (a non-empty value; an empty one counts as unset).
KINDS: dict[str, str] = {
    "int": "a whole number",
    "number": "a number",
    "bool": "a boolean: 1, 0, true, false, yes, no, on or off",
    "url": "an http(s):// URL with a host",
    "log_level": "a log level (debug, info, warning, error, critical) or its number",
}


def _kind_problem(kind: str, value: str, minimum: float | None) -> str | None:
    text = value.strip()
    if kind in ("int", "number"):
        expected = KINDS[kind] + (f" >= {minimum:g}" if minimum is not None else "")
        try:
            number = int(text) if kind == "int" else float(text)
        except ValueError:
            return expected
        if kind == "number" and not math.isfinite(number):
            return f"a finite number{expected[len(KINDS[kind]):]}"
        if minimum is not None and number < minimum:
            return expected
        return None
    if kind == "bool":
        return None if text.upper() in TRUE_VALUES | FALSE_VALUES else KINDS[kind]
    if kind == "url":
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            return KINDS[kind]
        return None if parts.scheme.lower() in ("http", "https") and parts.hostname else KINDS[kind]
    if kind == "log_level":
        return None if text.lower() in _LOG_LEVELS or text.isdigit() else KINDS[kind]
    raise ValueError(f"EnvVar kind {kind!r} is unknown; accepted: {', '.join(KINDS)}")


@dataclass(frozen=True)
class EnvVar:
    """An environment variable a tracker reads (declared for ``tracklink doctor`` and the docs).

    ``choices`` lists the accepted values (compared case-insensitively); ``kind`` (one of :data:`KINDS`:
    ``int``, ``number``, ``bool``, ``url``, ``log_level``, with an optional ``minimum`` for numbers) says
    what shape the value must have. Either way a bad value is reported before training starts, also for
    variables the SDK reads itself (``read_by="sdk"``), whose bad values would otherwise surface as an
    SDK error that names nothing.
    """

    name: str
    default: str | None = None
    help: str = ""
    secret: bool = False
    choices: tuple[str, ...] | None = None
    read_by: str = "tracklink"
    kind: str | None = None
    minimum: float | None = None

    def problem(self, env: Mapping[str, str]) -> str | None:
        value = env.get(self.name)
        if value is None:
            return None
        if self.choices is not None and value.strip().lower() not in {c.lower() for c in self.choices}:
            accepted = ", ".join(c if c else "'' (empty)" for c in self.choices)
            return f"{self.name}={value!r} is not accepted; accepted values: {accepted}"
        if self.kind is not None and value.strip():
            expected = _kind_problem(self.kind, value, self.minimum)
            if expected:
                shown = "<redacted>" if self.secret else repr(value)
                return f"{self.name}={shown} is not accepted; expected {expected}"
        return None




def env_snapshot() -> dict[str, str]:
    """A copy of the environment (what readiness and disable checks read)."""
    return dict(os.environ)
