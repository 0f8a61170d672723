"""``remove_unused_columns``: the batch keys the model's ``forward`` takes (transformers' rule), and a clear
error on the first batch when ``forward`` then lacks a required input."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("tracklink")

__all__ = ["InputFilter"]


class InputFilter:
    """Keeps the batch keys the model's ``forward`` accepts (plus the label names). ``dropped`` names the keys
    the first batch lost (``None`` before the first batch)."""

    def __init__(self) -> None:
        self.accepted: set[str] | None = None
        self.dropped: list[str] | None = None

    def filter(self, batch: Mapping[str, Any], model: Any, label_names: list[str] | None) -> Mapping[str, Any]:
        accepted = self._accepted(model, label_names)
        if accepted is None:
            return batch
        if self.dropped is None:
            self._check_first(batch, accepted, model)
        return {k: v for k, v in batch.items() if k in accepted}

    def _accepted(self, model: Any, label_names: list[str] | None) -> set[str] | None:
        if self.accepted is None:
            try:
                params = inspect.signature(model.forward).parameters
            except (TypeError, ValueError):
                return None
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                self.accepted = set()
            else:
                self.accepted = set(params) | set(label_names or [])
        return self.accepted or None

    def _check_first(self, batch: Mapping[str, Any], accepted: set[str], model: Any) -> None:
        """Name the keys dropped, and fail clearly when ``forward`` then lacks a required input (instead of
        the model's bare ``TypeError``)."""
        self.dropped = sorted(k for k in batch if k not in accepted)
        if self.dropped:
            logger.info("tracklink: remove_unused_columns drops batch keys the model's forward does not take: %s",
                        ", ".join(self.dropped))
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            return
        required = [name for name, p in params.items() if p.default is inspect.Parameter.empty
                    and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        missing = [name for name in required if name not in batch]
        if missing:
            dropped = (f"; remove_unused_columns=True dropped {', '.join(map(repr, self.dropped))} "
                       "(not parameters of forward)") if self.dropped else ""
            raise ValueError(
                f"the model's forward requires {', '.join(map(repr, missing))}, but the batch has only "
                f"{', '.join(map(repr, batch)) or 'no keys'}{dropped}. Rename the dataset's keys to forward's "
                "parameters, or set remove_unused_columns=False and take them in forward(**kwargs)"
            )
