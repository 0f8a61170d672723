"""Training state and control flags, compatible with transformers' ``trainer_state.json``.

:class:`TrainerState` carries transformers v5's fields with the same defaults and the same JSON form
(``indent=2``, sorted keys, trailing newline), so a state file written by either system loads in the
other. :class:`TrainerControl` holds the five flags the loop obeys. Both are plain dataclasses; the
hub (``tracklink.CallbackHandler``) performs the per-event flag resets.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from .atomic import atomic_write_text

logger = logging.getLogger("tracklink")

__all__ = [
    "HUB_STATE_KEY",
    "INTERNAL_STATE_KEYS",
    "SEARCH_STATE_KEY",
    "CorruptStateError",
    "ExportableState",
    "TrainerControl",
    "TrainerState",
    "saved_attributes",
    "state_key",
]

# tracklink's own entries in ``TrainerState.stateful_callbacks``. The names are part of the
# ``trainer_state.json`` format: checkpoints written by earlier versions are read back under them.
#: The hub's entry: ``{"tracker_failures": {tracker name: summary}}``, written when a tracker failed.
HUB_STATE_KEY = "TracklinkHub"
#: The running hyper-parameter search (``SearchContext``): study name, backend, direction, trial.
SEARCH_STATE_KEY = "TracklinkSearch"
#: Keys no user callback is stored under, so restoring a checkpoint never reports them as unmatched.
INTERNAL_STATE_KEYS = frozenset({HUB_STATE_KEY, SEARCH_STATE_KEY})


@runtime_checkable
class ExportableState(Protocol):
    """An object whose state is saved in checkpoints and restored on resume.

    ``state()`` returns ``{"args": {...constructor kwargs...}, "attributes": {...}}``. An object may
    define ``state_key`` (a string) to choose the key it is stored under in
    ``TrainerState.stateful_callbacks``; the default is its class name, as in transformers.
    """

    def state(self) -> dict[str, Any]: ...


def state_key(obj: object) -> str:
    """The key under which ``obj``'s exported state is stored (its ``state_key`` or class name)."""
    key = getattr(obj, "state_key", None)
    return key if isinstance(key, str) and key else type(obj).__name__


def saved_attributes(state: Any, key: str) -> dict[str, Any]:
    """A copy of the ``attributes`` of the entry stored under ``key`` in ``state.stateful_callbacks``.

    When several objects shared the key (a list of entries), the first one's. Anything missing or
    malformed (no ``stateful_callbacks``, no such entry, an entry or ``attributes`` that is not a
    mapping, an empty list) gives an empty dict, so a hand-edited or foreign ``trainer_state.json``
    never breaks the reader.
    """
    entries = getattr(state, "stateful_callbacks", None)
    entry = entries.get(key) if isinstance(entries, Mapping) else None
    if isinstance(entry, list):
        entry = entry[0] if entry else None
    attributes = entry.get("attributes") if isinstance(entry, Mapping) else None
    return dict(attributes) if isinstance(attributes, Mapping) else {}


def collect_states(objects: Iterable[object]) -> dict[str, Any]:
    """Build a ``stateful_callbacks`` mapping from exportable objects.

    One object per key gives a dict; several objects sharing a key give a list with one entry per
    object, in order. The mapping is rebuilt from scratch at each save, so it never grows (transformers
    appends to the list at every save and restores stale entries).
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        if not callable(getattr(obj, "state", None)):
            raise TypeError(
                f"stateful callbacks must implement state(); {type(obj).__name__} does not"
            )
        grouped.setdefault(state_key(obj), []).append(obj.state())  # type: ignore[attr-defined]
    return {key: states[0] if len(states) == 1 else states for key, states in grouped.items()}


class CorruptStateError(ValueError):
    """A ``trainer_state.json`` that cannot be read (truncated, empty or not a trainer state)."""


def json_fallback(value: Any) -> Any:
    """``json.dumps(default=...)``: numbers from tensors and NumPy values, ``str()`` for the rest."""
    item = getattr(value, "item", None)
    size = getattr(value, "numel", None) or getattr(value, "size", None)
    count = size() if callable(size) else size
    if callable(item) and (count is None or count == 1):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    logger.warning("tracklink: trainer state holds a %s, which JSON cannot represent; saved as its text",
                   type(value).__name__)
    return str(value)


@dataclasses.dataclass
class TrainerState:
    """Progress of a training run; saved as ``trainer_state.json`` in every checkpoint.

    One *step* is one optimizer update. ``log_history`` holds one dict per ``log()`` call (the logged
    values plus ``"step"``). ``stateful_callbacks`` maps a stable key (the class name by default) to an
    exported state, or a list of states when several objects share the key; tracklink stores tracker
    run identities there, never as new top-level keys.
    """

    epoch: float = 0
    global_step: int = 0
    max_steps: int = 0
    logging_steps: int = 500
    eval_steps: int = 500
    save_steps: int = 500
    train_batch_size: int | None = None
    num_train_epochs: int = 0
    num_input_tokens_seen: int = 0
    total_flos: float = 0
    log_history: list[dict[str, Any]] = None  # type: ignore[assignment]
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: str | None = None
    trial_params: dict[str, Any] | None = None
    stateful_callbacks: dict[str, Any] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.log_history is None:
            self.log_history = []
        if self.stateful_callbacks is None:
            self.stateful_callbacks = {}
        elif not isinstance(self.stateful_callbacks, dict):
            self.stateful_callbacks = collect_states(self.stateful_callbacks)

    def to_json_string(self) -> str:
        """The exact text transformers writes: sorted keys, indent 2, trailing newline.

        Values JSON cannot hold are converted rather than failing the save: one-element tensors and
        NumPy scalars become numbers, arrays lists, anything else its ``str()`` (with a warning)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=json_fallback) + "\n"

    def save_to_json(self, json_path: str) -> None:
        """Write the state to ``json_path`` (byte-compatible with transformers), atomically: the text is
        serialised first and renamed into place, so a failure never leaves a partial file."""
        atomic_write_text(json_path, self.to_json_string())

    @classmethod
    def load_from_json(cls, json_path: str) -> TrainerState:
        """Read a state written by tracklink or transformers.

        Unknown top-level keys (from a newer format) are dropped with a warning instead of failing. A file
        that is not a JSON object (truncated, empty, hand-edited) raises :class:`CorruptStateError` naming it.
        """
        try:
            with open(json_path, encoding="utf-8") as f:
                data = json.load(f)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptStateError(f"{json_path} is not valid JSON ({exc}); the file is truncated or damaged") from None
        if not isinstance(data, dict) or not isinstance(data.get("global_step", 0), int):
            raise CorruptStateError(
                f"{json_path} is not a trainer state (expected a JSON object with an integer global_step)"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("%s: ignoring unknown trainer-state keys %s", json_path, unknown)
        return cls(**{k: v for k, v in data.items() if k in known})

    def compute_steps(self, args: Any, max_steps: int) -> None:
        """Turn ratio intervals (floats below 1) of ``args`` into absolute step counts."""
        for kind in ("logging", "eval", "save"):
            value = getattr(args, f"{kind}_steps", None)
            if value is None:
                continue
            if value < 1:
                value = math.ceil(max_steps * value)
            setattr(self, f"{kind}_steps", int(value))


_FLAGS = ("should_training_stop", "should_epoch_stop", "should_save", "should_evaluate", "should_log")


@dataclasses.dataclass
class TrainerControl:
    """Flags through which callbacks steer the training loop.

    ``should_training_stop`` ends training after the current step; ``should_epoch_stop`` ends the
    current epoch; ``should_log``, ``should_evaluate`` and ``should_save`` are acted on in the
    log/evaluate/save check that follows ``on_step_end`` and ``on_epoch_end``. The hub resets them
    before the events transformers resets them at (see ``CallbackHandler``).
    """

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    def _new_training(self) -> None:
        self.should_training_stop = False

    def _new_epoch(self) -> None:
        self.should_epoch_stop = False

    def _new_step(self) -> None:
        self.should_save = False
        self.should_evaluate = False
        self.should_log = False

    def state(self) -> dict[str, Any]:
        """Exported state: the five flags as ``args``, no attributes."""
        return {"args": {name: getattr(self, name) for name in _FLAGS}, "attributes": {}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TrainerControl:
        control = cls(**state.get("args", {}))
        for name, value in state.get("attributes", {}).items():
            setattr(control, name, value)
        return control
