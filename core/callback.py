"""``TrainerCallback``: the transformers-style way to write a plugin.

Subclass it and override the events you need; each method is called as
``on_<event>(args, state, control, **kwargs)`` with the keyword arguments listed in
:mod:`tracklink.hookspecs`. Only overridden methods are registered with the hub, so an event no plugin
implements costs nothing. Returning a ``TrainerControl`` replaces the current one (transformers'
rule); returning ``None`` keeps it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainerCallback"]


class TrainerCallback:
    """Base class for callbacks that observe and steer the training loop (same interface as
    ``transformers.TrainerCallback``, plus ``on_exception``)."""

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """End of ``Trainer.__init__``."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Start of ``train()``, after a checkpoint (if any) was restored."""

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """End of ``train()``."""

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Start of an epoch."""

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """End of an epoch."""

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Before the first batch of an optimizer step."""

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """After gradient clipping, before ``optimizer.step()``."""

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """After ``optimizer.step()``, before ``zero_grad()``."""

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """After a gradient-accumulation batch that does not end a step."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """After an optimizer step (``global_step`` updated)."""

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """After an evaluation (``metrics`` keyword)."""

    def on_predict(self, args: Any, state: Any, control: Any, metrics: Any, **kwargs: Any) -> Any:
        """After ``predict()``."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """After a checkpoint was written (``checkpoint_dir`` keyword)."""

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """After logging (``logs`` keyword)."""

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """After an evaluation or prediction batch."""

    def on_exception(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Training raised, was interrupted or got SIGTERM (``exception`` keyword)."""

    def on_push_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """transformers v5's push event; tracklink's trainer never fires it."""
