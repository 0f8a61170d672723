"""``DefaultFlowCallback``: turns the logging/evaluation/saving strategies into control flags.

It follows transformers v5's rules, which fixed 4.45's defects: the end-of-training save only applies
to ``save_strategy="steps"`` (no double save with ``"epoch"``), and a step-based evaluation also runs at
``max_steps`` when ``max_steps`` is not a multiple of ``eval_steps``.
"""

from __future__ import annotations

from typing import Any

from .callback import TrainerCallback

__all__ = ["DefaultFlowCallback"]


class DefaultFlowCallback(TrainerCallback):
    """Sets ``should_log``/``should_evaluate``/``should_save``/``should_training_stop`` from the
    arguments' strategies at ``on_step_end`` and ``on_epoch_end``. It only ever raises flags."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        step = state.global_step
        if step == 1 and args.logging_first_step:
            control.should_log = True
        if args.logging_strategy == "steps" and step % state.logging_steps == 0:
            control.should_log = True
        step_eval = args.eval_strategy == "steps" and args.eval_delay <= step
        if step_eval and step % state.eval_steps == 0:
            control.should_evaluate = True
        if args.save_strategy == "steps" and state.save_steps > 0 and step % state.save_steps == 0:
            control.should_save = True
        if step >= state.max_steps:
            control.should_training_stop = True
            if step_eval and step % state.eval_steps != 0:
                control.should_evaluate = True
            if args.save_strategy == "steps":
                control.should_save = True
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if args.logging_strategy == "epoch":
            control.should_log = True
        if args.eval_strategy == "epoch" and args.eval_delay <= state.epoch:
            control.should_evaluate = True
        if args.save_strategy == "epoch":
            control.should_save = True
        return control
