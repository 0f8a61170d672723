"""Event names, the arguments every event carries, and the control-flag resets performed before each.

The hook specifications with their documentation live in :mod:`tracklink.hookspecs`; this module holds
the same facts as plain data for the hub's hot path.
"""

from __future__ import annotations

__all__ = ["EVENTS", "EXTRAS", "RESETS", "STANDARD_ARGS"]

#: Every event, in the order a training run first fires them.
EVENTS: tuple[str, ...] = (
    "on_init_end",
    "on_train_begin",
    "on_epoch_begin",
    "on_step_begin",
    "on_substep_end",
    "on_pre_optimizer_step",
    "on_optimizer_step",
    "on_step_end",
    "on_epoch_end",
    "on_log",
    "on_evaluate",
    "on_prediction_step",
    "on_predict",
    "on_save",
    "on_train_end",
    "on_exception",
    "on_push_begin",
)

#: Arguments every hook may name.
STANDARD_ARGS: tuple[str, ...] = (
    "args",
    "state",
    "control",
    "model",
    "processing_class",
    "tokenizer",
    "optimizer",
    "lr_scheduler",
    "train_dataloader",
    "eval_dataloader",
)

#: Event-specific arguments.
EXTRAS: dict[str, tuple[str, ...]] = {
    "on_log": ("logs",),
    "on_evaluate": ("metrics",),
    "on_predict": ("metrics",),
    "on_save": ("checkpoint_dir",),
    "on_exception": ("exception",),
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
