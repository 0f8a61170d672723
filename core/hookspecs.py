"""The hook contract: every training event tracklink fires, as pluggy hook specifications.

This module is the documented contract between the trainer and plugins. The training loop, in the
order events fire (one *step* is one optimizer update of ``gradient_accumulation_steps`` batches)::

    Trainer(...)                                     -> on_init_end
    train():
        on_train_begin
        [eval_on_start: EVALUATE]
        for each epoch:
            on_epoch_begin
            for each batch:
                if first batch of a step:            -> on_step_begin
                forward + backward
                if the batch ends a step:
                    clip gradients                   -> on_pre_optimizer_step
                    optimizer.step()                 -> on_optimizer_step
                    scheduler.step(); zero_grad(); global_step += 1
                                                     -> on_step_end
                    CHECK
                else:                                -> on_substep_end
                stop the epoch if control.should_epoch_stop or should_training_stop
            on_epoch_end
            CHECK
            stop if control.should_training_stop
        log(final training metrics)                  -> on_log
        on_train_end
        (if training raised, was interrupted or got SIGTERM: on_exception, then the error propagates)

    CHECK    := if should_log: log(train metrics) -> on_log;
                if should_evaluate: EVALUATE;
                if should_save: write checkpoint-<step>/ -> on_save
    EVALUATE := on_prediction_step per batch, log(eval metrics) -> on_log, on_evaluate
    predict():  on_prediction_step per batch, on_predict

Every hook receives keyword arguments; an implementation names only the ones it needs. The standard
arguments, available to every hook:

``args``
    The ``TrainingArguments`` of the run.
``state``
    The ``TrainerState`` (``global_step``, ``epoch``, ``log_history``, ``best_metric``, ...).
``control``
    The ``TrainerControl`` whose flags steer the loop. A plugin may set flags, or return a
    ``TrainerControl``, which then replaces the current one for later plugins and the loop (as in
    transformers). Tracker plugins receive a copy: they observe, they do not steer.
``model``, ``processing_class`` (alias ``tokenizer``), ``optimizer``, ``lr_scheduler``,
``train_dataloader``, ``eval_dataloader``
    The objects of the run; ``None`` where they do not exist yet.

Ranks: user callbacks run on every process. Tracker plugins run only on the ranks their
``rank_policy`` allows (world rank 0 by default), on a worker thread of their own unless they declare
``inline = True``; the hub isolates their errors.

Implement hooks either as methods of a ``TrainerCallback`` subclass
(``def on_log(self, args, state, control, logs=None, **kwargs)``) or as functions marked with
``@tracklink.hookimpl`` that name only the arguments they use (``def on_log(logs, state)``).
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "tracklink"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# fmt: off
# The standard arguments every hook may name; the per-event extras follow in each signature.


@hookspec
def on_init_end(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
                optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any) -> Any:
    """At the end of ``Trainer.__init__``, once per trainer.

    ``optimizer`` and ``lr_scheduler`` are ``None`` unless they were passed in; there are no dataloaders
    yet. A plugin may validate the arguments here and raise to refuse a configuration.
    """


@hookspec
def on_train_begin(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
                   optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any) -> Any:
    """At the start of ``train()``, after the optimizer, scheduler and state exist and a checkpoint
    (if any) was restored, before the first epoch. ``state.global_step`` is the restored step on resume.

    The hub clears ``control.should_training_stop`` before plugins run. Trackers start their run here.
    """


@hookspec
def on_epoch_begin(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
                   optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any) -> Any:
    """At the start of each epoch (including the first one after a resume).

    The hub clears ``control.should_epoch_stop`` before plugins run.
    """


@hookspec
def on_step_begin(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
                  optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any) -> Any:
    """Before the forward pass of the first batch of each optimizer step (``global_step`` is still the
    previous value).

    The hub clears ``should_log``, ``should_evaluate`` and ``should_save`` before plugins run; a flag a
    plugin sets here survives to the check after ``on_step_end``.
    """


@hookspec
def on_substep_end(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
                   optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any) -> Any:
    """After the forward/backward of a batch that does not end an optimizer step (gradient
    accumulation)."""


@hookspec
def on_pre_optimizer_step(args: Any, state: Any, control: Any, model: Any, processing_class: Any,
                          tokenizer: Any, optimizer: Any, lr_scheduler: Any, train_dataloader: Any,
                          eval_dataloader: Any) -> Any:
    """After gradient clipping, before ``optimizer.step()``. Gradients are available on the model."""


@hookspec
def on_optimizer_step(args: Any, state: Any, control: Any, model: Any, processing_class: Any,
                      tokenizer: Any, optimizer: Any, lr_scheduler: Any, train_dataloader: Any,
                      eval_dataloader: Any) -> Any:
    """After ``optimizer.step()``, before the scheduler step and ``zero_grad()``."""


@hookspec
def on_step_end(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
                optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any) -> Any:
    """After each optimizer step: ``global_step`` and ``epoch`` are updated. The log/evaluate/save check
    follows, so flags set here take effect at this step (``DefaultFlowCallback`` sets them here).
    """


@hookspec
def on_epoch_end(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
                 optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any) -> Any:
    """After the last batch of an epoch (or a stop request). The log/evaluate/save check follows."""


@hookspec
def on_log(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
           optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any,
           logs: dict[str, Any]) -> Any:
    """Whenever the trainer logs: training metrics at logging steps, evaluation metrics, and the final
    training summary. ``logs`` is the logged dict (without ``step``; ``state.global_step`` is the step);
    the entry is already appended to ``state.log_history``.

    Plugins must treat ``logs`` as read-only. The hub clears ``control.should_log`` first.
    """


@hookspec
def on_evaluate(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
                optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any,
                metrics: dict[str, Any]) -> Any:
    """At the end of an evaluation, after the ``on_log`` that carried the same ``metrics``.

    ``state.best_metric`` still holds the best value *before* this evaluation. The hub clears
    ``control.should_evaluate`` first; ``should_save`` is still set when a save follows.
    """


@hookspec
def on_prediction_step(args: Any, state: Any, control: Any, model: Any, processing_class: Any,
                       tokenizer: Any, optimizer: Any, lr_scheduler: Any, train_dataloader: Any,
                       eval_dataloader: Any) -> Any:
    """After each evaluation or prediction batch."""


@hookspec
def on_predict(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
               optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any,
               metrics: dict[str, Any]) -> Any:
    """At the end of ``predict()``; ``metrics`` are prefixed ``test_`` by default. There is no
    ``on_log`` for predictions."""


@hookspec
def on_save(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
            optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any,
            checkpoint_dir: str | None) -> Any:
    """Right after ``checkpoint_dir`` (``<run dir>/checkpoint-<global_step>``) was completely written
    and older checkpoints were rotated. A tracker may upload the directory; the trainer will not delete
    it while a tracker's queue still holds this event. The hub clears ``control.should_save`` first.
    """


@hookspec
def on_train_end(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
                 optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any) -> Any:
    """At the end of ``train()``, after the final ``on_log`` and loading the best model. Trackers close
    their run with a success status; the hub then waits until every tracker queue is drained."""


@hookspec
def on_exception(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
                 optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any,
                 exception: BaseException) -> Any:
    """Once, when ``train()`` raised, was interrupted (``KeyboardInterrupt``) or received SIGTERM,
    before the exception propagates. Not part of transformers.

    Every plugin receives it even if an earlier one fails here. Trackers flush what they hold and close
    their run as failed (killed for an interrupt or SIGTERM). Return values are ignored.
    """


@hookspec
def on_push_begin(args: Any, state: Any, control: Any, model: Any, processing_class: Any, tokenizer: Any,
                  optimizer: Any, lr_scheduler: Any, train_dataloader: Any, eval_dataloader: Any) -> Any:
    """transformers v5's event before a push to the Hugging Face Hub. tracklink's trainer never pushes,
    so it never fires this; it exists so transformers callbacks that implement it register cleanly, and
    the transformers bridge forwards it."""


# fmt: on
