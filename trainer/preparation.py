"""Model preparation for training: gradient checkpointing (before wrapping) and ``torch.compile`` (after).

Both follow transformers' arguments: ``gradient_checkpointing`` calls the model's own
``activation_checkpointing_enable(activation_checkpointing_kwargs=...)`` (transformers >= 5.x) or
``gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)``; ``torch_compile`` compiles the
(possibly DDP/FSDP-wrapped) training model with ``torch_compile_backend`` and ``torch_compile_mode``.
The trainer keeps the uncompiled model as ``trainer.model``, so checkpoints and ``save_model`` write
the plain weights (no ``_orig_mod.`` prefixes).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ModelCompiler", "check_compile_backend", "check_gradient_checkpointing", "enable_gradient_checkpointing"]


_ENABLE_METHODS = ("activation_checkpointing_enable", "gradient_checkpointing_enable")


def check_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Raise unless ``model`` can turn on gradient checkpointing the transformers way."""
    if not any(callable(getattr(model, name, None)) for name in _ENABLE_METHODS):
        raise ValueError(
            f"TrainingArguments.gradient_checkpointing=True, but the model ({type(model).__name__}) has no "
            "gradient_checkpointing_enable(gradient_checkpointing_kwargs=...) or "
            "activation_checkpointing_enable(activation_checkpointing_kwargs=...) method; use a transformers "
            "PreTrainedModel that supports it, add such a method (e.g. wrapping blocks in "
            "torch.utils.checkpoint.checkpoint), or set gradient_checkpointing=False"
        )
    if getattr(model, "supports_gradient_checkpointing", True) is False:
        raise ValueError(
            f"TrainingArguments.gradient_checkpointing=True, but {type(model).__name__} declares "
            "supports_gradient_checkpointing=False; set gradient_checkpointing=False"
        )


def enable_gradient_checkpointing(model: torch.nn.Module, kwargs: dict[str, Any] | None) -> None:
    """Turn on gradient checkpointing the way transformers' Trainer does (the newer method first)."""
    check_gradient_checkpointing(model)
    options = dict(kwargs or {})
    enable = getattr(model, "activation_checkpointing_enable", None)
    if callable(enable):
        # transformers' own keys of the new method; the rest goes to torch.utils.checkpoint
        own = {key: options.pop(key) for key in ("every_n_layers", "offload") if key in options}
        enable(activation_checkpointing_kwargs=options or None, **own)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options or None)  # type: ignore[operator]


def check_compile_backend(backend: str) -> None:
    """Raise unless ``backend`` names a registered ``torch._dynamo`` backend (imports ``torch._dynamo``)."""
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        common = torch._dynamo.list_backends()
        raise ValueError(
            f"TrainingArguments.torch_compile_backend={backend!r} is not a torch._dynamo backend; accepted: "
            f"{', '.join(repr(b) for b in common)} (or a debugging backend: "
            f"{', '.join(repr(b) for b in known if b not in common)})"
        )


class ModelCompiler:
    """``torch.compile`` of the training model, compiled once per model object and reused afterwards."""

    def __init__(self) -> None:
        self._source: torch.nn.Module | None = None
        self._compiled: torch.nn.Module | None = None

    def __call__(self, model: torch.nn.Module, backend: str | None, mode: str | None) -> torch.nn.Module:
        if self._source is not model or self._compiled is None:
            compiled = torch.compile(model, backend=backend or "inductor", mode=mode)
            assert isinstance(compiled, torch.nn.Module)
            self._source, self._compiled = model, compiled
        return self._compiled
