"""A model's files, as transformers writes them: ``model.safetensors`` and a redacted ``config.json``.

Used by the trainer's checkpoints and by trackers that upload a final model without a checkpoint (W&B).
safetensors (and with it torch) is imported only when a model is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_path, atomic_write_text
from .redact import current_secrets, redact
from .shaping import plain_value

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "save_config", "save_model"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _config_json(model: Any) -> str | None:
    """The model config as JSON, with secrets redacted (checkpoints may be uploaded by trackers)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    to_json = getattr(config, "to_json_string", None)
    text = str(to_json()) if callable(to_json) else None
    data = json.loads(text) if text is not None else plain_value(config)
    if not isinstance(data, dict):
        return text
    clean = redact(data, current_secrets())
    if text is not None and clean == data:
        return text
    return json.dumps(clean, indent=2, sort_keys=True) + "\n"


def save_model(model: Any, directory: str | os.PathLike[str]) -> None:
    """Write ``model.safetensors`` (shared tensors de-duplicated) and ``config.json``."""
    from safetensors.torch import save_model as save_safetensors  # lazy: it imports torch

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / WEIGHTS_NAME) as temporary:
        save_safetensors(model, str(temporary))
    save_config(model, path)


def save_config(model: Any, directory: str | os.PathLike[str]) -> None:
    """Write the model's redacted ``config.json`` (when it has a config)."""
    config = _config_json(model)
    if config is not None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / CONFIG_NAME, config)
