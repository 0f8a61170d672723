"""Parameter and metric shaping: how a run's configuration and logs become what trackers send.

``hyperparameters`` builds the redacted configuration every tracker logs (the model config merged under the
arguments), ``flatten`` nests it into ``a.b.c`` keys, ``rewrite_logs`` is transformers' metric naming
(``eval_x`` -> ``eval/x``), ``plain_value`` turns a value into JSON-friendly data, and ``param_text`` /
``param_value`` are the one way a parameter value becomes text for a backend that stores text.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from typing import Any

from .redact import current_secrets, redact, redact_text
from .system import PREFIX as SYSTEM_PREFIX

__all__ = [
    "SUMMARY_KEYS", "args_dict", "flatten", "hyperparameters", "model_config", "num_parameters", "param_text",
    "param_value", "plain_value", "redacted_name", "rewrite_logs",
]

SUMMARY_KEYS = frozenset(
    {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"}
)


def rewrite_logs(logs: Mapping[str, Any]) -> dict[str, Any]:
    """transformers' metric naming: ``eval_x`` -> ``eval/x``, ``test_x`` -> ``test/x``, else ``train/x``;
    system metrics (``system/...``, which transformers never logs) keep their own section."""
    out: dict[str, Any] = {}
    for key, value in logs.items():
        if key.startswith("eval_"):
            out["eval/" + key[5:]] = value
        elif key.startswith("test_"):
            out["test/" + key[5:]] = value
        elif key.startswith(SYSTEM_PREFIX):
            out[key] = value
        else:
            out["train/" + key] = value
    return out


def flatten(mapping: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Flatten nested mappings into ``a.b.c`` keys."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def plain_value(value: Any) -> Any:
    """JSON-friendly form of a config value."""
    if isinstance(value, enum.Enum):
        return plain_value(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_value(dataclasses.asdict(value))
    return str(value)


def args_dict(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    to_dict = getattr(args, "to_dict", None)
    if callable(to_dict):
        data = to_dict()
    elif dataclasses.is_dataclass(args) and not isinstance(args, type):
        data = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    else:
        data = dict(vars(args))
    return {k: plain_value(v) for k, v in data.items()}


def model_config(model: Any) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if config is None:
        return {}
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        data = to_dict()
    elif isinstance(config, Mapping):
        data = dict(config)
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        data = dataclasses.asdict(config)
    else:
        return {}
    return {k: plain_value(v) for k, v in data.items()}


def num_parameters(model: Any) -> int | None:
    parameters = getattr(model, "parameters", None)
    if not callable(parameters):
        return None
    try:
        return int(sum(p.numel() for p in parameters()))
    except Exception:
        return None


def hyperparameters(args: Any, model: Any = None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The redacted hyper-parameter views ``(config, args_config, model_config)``: ``config`` is the model
    config merged under the training arguments (arguments win on clashes, as in transformers) plus
    ``model/num_parameters``."""
    secrets = current_secrets()
    args_view = redact(args_dict(args), secrets)
    model_view = redact(model_config(model), secrets)
    merged: dict[str, Any] = {**model_view, **args_view}
    count = num_parameters(model)
    if count is not None:
        merged["model/num_parameters"] = count
    return merged, args_view, model_view


def redacted_name(name: Any) -> str | None:
    if name is None:
        return None
    return redact_text(str(name), current_secrets())



def param_text(value: Any, json_scalars: bool = True) -> str:
    """A parameter value as text: a string as it is, containers as JSON (sorted keys); numbers, bools and
    ``None`` as JSON (``true``, ``null``) or, with ``json_scalars=False``, as Python writes them (``True``,
    ``None``: what MLflow shows for transformers' parameters)."""
    if isinstance(value, str):
        return value
    if not json_scalars and (value is None or isinstance(value, (bool, int, float))):
        return str(value)
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def param_value(value: Any, keep_none: bool = False) -> Any:
    """A parameter as a backend that keeps scalars takes it: bools, numbers and strings as they are (``None``
    too with ``keep_none``), anything else as :func:`param_text`."""
    if isinstance(value, (bool, int, float, str)) or (keep_none and value is None):
        return value
    return param_text(value)
