"""``Trainer``: a lean PyTorch training loop that fires transformers' events in transformers v5's order.

Conventions are transformers': ``model(**batch)`` returns an output with ``loss`` (attribute, key, or
first tuple element); datasets yield dicts; the default collator stacks tensors. The loop keeps the
training loss on the device and forces no host-device synchronisation on a step that neither logs nor
evaluates (NaN/inf losses are filtered on the device).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from tracklink.callbacks import PrinterCallback, ProgressCallback
from tracklink.flow import DefaultFlowCallback
from tracklink.handler import CallbackHandler
from tracklink.log import ensure_default_logging
from tracklink.process import ProcessInfo
from tracklink.run import Run
from tracklink.signals import SigtermGuard, ignoring_sigterm, restore_sigterm
from tracklink.state import (
    TrainerControl,
    TrainerState,
)
from tracklink.tracker import Tracker
from tracklink.values import plain_logs

from . import checkpointing, evaluation, fsdp, search
from .arguments import TrainingArguments
from .checks import check_setup
from .data import build_dataloader, default_data_collator, move_to_device
from .distributed import (
    gather_samples,
    gradient_sync,
    is_distributed,
    launched_by_torchrun,
    setup_distributed,
    sum_across_processes,
    unwrap_model,
    wrap_model,
)
from .inputs import InputFilter
from .loss import LossWindow
from .optim import create_optimizer, create_scheduler
from .plan import Loop, TrainingPlan
from .precision import SkippedSteps, autocast_context
from .preparation import (
    ModelCompiler,
    check_compile_backend,
    check_gradient_checkpointing,
    enable_gradient_checkpointing,
)
from .results import (
    EvalPrediction,
    PredictionOutput,
    TrainOutput,
    set_seed,
    speed_metrics,
)

logger = logging.getLogger("tracklink")

__all__ = ["EvalPrediction", "PredictionOutput", "TrainOutput", "Trainer", "set_seed"]


class Trainer:
    """Trains, evaluates and predicts with a PyTorch model, firing transformers' training events.

    Arguments follow ``transformers.Trainer``: ``model`` (or ``model_init`` for a fresh model per
    training), ``args`` (``TrainingArguments``), ``data_collator``, ``train_dataset``, ``eval_dataset``
    (a dataset or a dict of named datasets), ``processing_class`` (alias ``tokenizer``),
    ``compute_metrics`` (``EvalPrediction`` -> dict), ``callbacks`` (classes or instances: transformers
    callbacks, tracklink plugins, ``Tracker`` instances) and ``optimizers`` (``(optimizer, scheduler)``).
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable[[list[Any]], Any] | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Callable[..., torch.nn.Module] | None = None,
        compute_metrics: Callable[[EvalPrediction], dict[str, float]] | None = None,
        callbacks: list[Any] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        tokenizer: Any = None,
    ) -> None:
        if args is None:
            args = TrainingArguments(output_dir="trainer_output")
        if not isinstance(args, TrainingArguments):
            raise TypeError(
                f"args must be tracklink.trainer.TrainingArguments, got {type(args).__name__}"
            )
        self.args = args
        check_setup(args, model, model_init, train_dataset, eval_dataset, compute_metrics,
                    custom_evaluation=type(self).evaluate is not Trainer.evaluate)
        self.process = ProcessInfo.from_env()
        ensure_default_logging(self.process)
        self.device = args.device
        self._check_precision()
        if args.fsdp:
            fsdp.check_supported(args, self.process.world_size, launched_by_torchrun(),
                                 has_user_optimizer=any(o is not None for o in optimizers))
        self.is_distributed = setup_distributed(args, self.device)
        set_seed(args.seed)
        self.model_init = model_init
        if model is None:
            model = self.call_model_init()
        self.model = self._place(model)
        self.model_wrapped: torch.nn.Module = self.model
        self._check_model_preparation()
        plan = fsdp.FsdpPlan.from_args(args)
        if plan is not None:
            fsdp.check_model(self.model, plan)
        self.processing_class = processing_class if processing_class is not None else tokenizer
        self.data_collator = data_collator or default_data_collator
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.compute_metrics = compute_metrics
        self.optimizer, self.lr_scheduler = optimizers
        self._user_optimizers = optimizers
        self.scaler: Any = None
        self._skipped_steps = SkippedSteps()  # fp16: optimizer steps the scaler skipped
        self._compiler = ModelCompiler()
        self._wrapped: tuple[torch.nn.Module, torch.nn.Module] | None = None  # (model, its DDP/FSDP form)
        self.current_flos = 0.0
        self._tokens_seen: Any = 0
        self._tokens_seen_base = 0
        self._inputs = InputFilter()  # remove_unused_columns: the keys the model's forward takes

        callbacks = list(callbacks or [])
        self._user_callbacks = list(callbacks)
        self._trial_info: Any = None
        self._search_context: Any = None
        self._compute_objective: Any = None
        self.objective: Any = None
        self.callback_handler = CallbackHandler(
            [DefaultFlowCallback], self.model, self.processing_class, self.optimizer, self.lr_scheduler,
            process=self.process,
        )
        # the run's trackers live in this hub: the trainer drives them with its events. System metrics:
        # TRACKLINK_SYSTEM_METRICS (checked here), sampled during train() on each node's local main process
        user_tracker_names = {cb.name for cb in callbacks if isinstance(cb, Tracker)}
        self.run = Run(args.report_to_resolution, hub=self.callback_handler, process=self.process,
                       skip=user_tracker_names)
        for callback in callbacks:
            self.callback_handler.add_callback(callback)
        disable_tqdm = args.disable_tqdm
        if disable_tqdm is None:
            disable_tqdm = logger.getEffectiveLevel() > logging.WARNING
        self.callback_handler.add_callback(PrinterCallback if disable_tqdm else ProgressCallback)

        self.state = TrainerState(
            is_local_process_zero=self.process.is_local_main,
            is_world_process_zero=self.process.is_world_main,
        )
        self.control = TrainerControl()
        self._globalstep_last_logged = 0
        self._total_loss_scalar = 0.0
        self._losses = LossWindow()  # NaN/inf losses and batches since the last log
        self.control = self.callback_handler.on_init_end(self.args, self.state, self.control)

    # -- callbacks -------------------------------------------------------------------------------

    def add_callback(self, callback: Any) -> None:
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: Any) -> Any:
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback: Any) -> None:
        self.callback_handler.remove_callback(callback)

    # -- setup helpers -----------------------------------------------------------------------------

    def _check_precision(self) -> None:
        args = self.args
        if args.fp16 and self.device.type not in ("cuda", "mps"):
            raise ValueError(
                f"TrainingArguments.fp16=True needs a CUDA (or MPS) device, but training runs on "
                f"{self.device.type!r}; use bf16=True on CPU, or fp16=False"
            )
        if args.bf16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("TrainingArguments.bf16=True, but this CUDA device does not support bfloat16; use fp16")

    def _place(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move a new model to the training device; with FSDP it stays where it was built until
        ``fully_shard`` moves each process's shards there (the whole model may not fit on one device)."""
        return model if self.args.fsdp else model.to(self.device)

    def call_model_init(self, trial: Any = None) -> torch.nn.Module:
        if self.model_init is None:
            raise ValueError("Trainer has no model_init")
        params = inspect.signature(self.model_init).parameters
        model = self.model_init(trial) if len(params) >= 1 else self.model_init()
        if model is None:
            raise RuntimeError("model_init returned None; it must return a torch.nn.Module")
        return model

    def _autocast(self) -> Any:
        return autocast_context(self.device, self.args.bf16, self.args.fp16)

    def _check_model_preparation(self) -> None:
        """Fail before training when gradient checkpointing or the compile backend cannot work."""
        if self.args.gradient_checkpointing:
            check_gradient_checkpointing(unwrap_model(self.model))
        if self.args.torch_compile:
            check_compile_backend(self.args.torch_compile_backend or "inductor")

    def _prepare_model(self) -> None:
        """Before wrapping: turn on gradient checkpointing in the (unwrapped) model."""
        if self.args.gradient_checkpointing:
            enable_gradient_checkpointing(unwrap_model(self.model), self.args.gradient_checkpointing_kwargs)

    def _compile_wrapped(self, wrapped: torch.nn.Module) -> torch.nn.Module:
        """After wrapping: ``torch.compile`` the training model (once per wrapped model object)."""
        if not self.args.torch_compile:
            return wrapped
        return self._compiler(wrapped, self.args.torch_compile_backend, self.args.torch_compile_mode)

    def _prepare_inputs(self, inputs: Any) -> Any:
        if isinstance(inputs, Mapping) and self.args.remove_unused_columns:
            inputs = self._inputs.filter(inputs, unwrap_model(self.model), self.args.label_names)
        return move_to_device(inputs, self.device)

    def get_train_dataloader(self) -> Any:
        if self.train_dataset is None:
            raise ValueError("Trainer.train() needs a train_dataset; none was given")
        return build_dataloader(
            self.train_dataset, batch_size=self.args.per_device_train_batch_size, collate_fn=self.data_collator,
            shuffle=True, seed=self.args.seed, drop_last=self.args.dataloader_drop_last,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and self.device.type == "cuda",
        )

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        """A sequential DataLoader over ``eval_dataset`` (default: the trainer's; a string names one of the
        trainer's eval datasets), each process reading its share under torchrun (see
        :func:`tracklink.trainer.evaluation.eval_dataloader`)."""
        return evaluation.eval_dataloader(self, eval_dataset)

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        if self.optimizer is None:
            self.optimizer = create_optimizer(unwrap_model(self.model), self.args)
        if self.lr_scheduler is None:
            self.lr_scheduler = create_scheduler(self.optimizer, self.args, num_training_steps)

    def _run_dir(self) -> Path:
        """Where checkpoints go: ``output_dir``, or ``output_dir/<trial name>`` during a search."""
        if self._trial_info is not None:
            return Path(self.args.output_dir) / self._trial_info.name
        return Path(self.args.output_dir)

    # -- training ---------------------------------------------------------------------------------

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> TrainOutput:
        """Train the model; ``resume_from_checkpoint`` is a checkpoint path, or ``True`` for the newest
        checkpoint in ``output_dir``. ``on_exception`` fires if training raises, is interrupted or gets
        SIGTERM; the exception then propagates (SIGTERM exits with status 143)."""
        args = self.args
        checkpoint_dir = checkpointing.resolve_checkpoint(self, resume_from_checkpoint)
        if self.model_init is not None:  # a fresh model for every training run, as in transformers
            set_seed(args.seed)
            self.model = self._place(self.call_model_init(trial))
            self.model_wrapped = self.model
            self.optimizer, self.lr_scheduler = self._user_optimizers
            self._inputs = InputFilter()
        with SigtermGuard():
            try:
                self.run.start_system_metrics(per_node=True)
                return self._inner_train(checkpoint_dir, trial, ignore_keys_for_eval)
            except BaseException as exc:
                previous = ignoring_sigterm()
                try:
                    self.control = self.callback_handler.on_exception(
                        self.args, self.state, self.control, exception=exc
                    )
                finally:
                    restore_sigterm(previous)
                raise
            finally:
                self.run.stop_system_metrics()

    def _inner_train(self, checkpoint_dir: Path | None, trial: Any, ignore_keys_for_eval: list[str] | None) -> TrainOutput:
        dataloader = self.get_train_dataloader()
        plan = TrainingPlan.of(self.args, dataloader, self.train_dataset, self.process.world_size)
        loop = self._start_training(dataloader, plan, checkpoint_dir, trial, ignore_keys_for_eval)
        for epoch in range(loop.first_epoch, plan.num_train_epochs):
            if self.state.global_step >= plan.max_steps:
                break
            self._train_epoch(loop, epoch)
            if self.control.should_training_stop:
                break
        return self._end_training(loop)

    def _start_training(self, dataloader: Any, plan: TrainingPlan, checkpoint_dir: Path | None, trial: Any,
                        ignore_keys: list[str] | None) -> Loop:
        """Wrap the model, make the optimizer, restore a checkpoint, fire ``on_train_begin``."""
        args = self.args
        # wrapping (DDP, or FSDP sharding in place) comes first: the optimizer must hold the sharded parameters
        self._prepare_model()
        if self._wrapped is None or self._wrapped[0] is not self.model:  # reused: a DDP wrapper per model
            self._wrapped = (self.model, wrap_model(self.model, args, self.device))
        self.model_wrapped = self._compile_wrapped(self._wrapped[1])
        if checkpoint_dir is not None:
            checkpointing.load_model_state(self, checkpoint_dir)
        self.create_optimizer_and_scheduler(plan.max_steps)
        # a fresh scale for every training (a resume restores the checkpoint's); with FSDP the gradients
        # are DTensors, whose inf/NaN check is reduced over all processes
        self.scaler = torch.amp.GradScaler(self.device.type) if args.fp16 else None
        self._skipped_steps.reset()
        epochs_trained, steps_in_epoch_done, checkpoint_dir = checkpointing.start_state(
            self, plan, trial, checkpoint_dir)

        handler = self.callback_handler
        handler.model = self.model
        handler.optimizer = self.optimizer
        handler.lr_scheduler = self.lr_scheduler
        handler.train_dataloader = dataloader
        model = self.model_wrapped
        self._losses.reset(self.device)
        self._total_loss_scalar = 0.0
        self._globalstep_last_logged = self.state.global_step
        loop = Loop(
            dataloader=dataloader, plan=plan, model=model, ignore_keys=ignore_keys,
            params=list(model.parameters()),  # fixed for the run: zero_grad and clipping reuse the list
            tr_loss=torch.zeros((), device=self.device), start_step=self.state.global_step, start_time=time.time(),
            first_epoch=epochs_trained, steps_in_epoch_done=steps_in_epoch_done, checkpoint_dir=checkpoint_dir,
            filter_nan=args.logging_nan_inf_filter,
            plateau=isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau),
            sync_control=(is_distributed() or fsdp.is_sharded(self.model)) and plan.ga > 1,
            count_flos=self._counts_flos(),
        )
        if self.state.is_world_process_zero:
            self.run.log_banner()
        model.zero_grad(set_to_none=True)
        self.control = handler.on_train_begin(args, self.state, self.control)
        if args.eval_on_start:
            self._evaluate(ignore_keys, skip_scheduler=True)
        return loop

    def _train_epoch(self, loop: Loop, epoch: int) -> None:
        args, handler, plan = self.args, self.callback_handler, loop.plan
        iterator, loop.batch_index = checkpointing.epoch_batches(self, loop, epoch)
        self.control = handler.on_epoch_begin(args, self.state, self.control)
        # length-less data: transformers measures the epoch in units of max_steps * grad_accum batches
        loop.steps_in_epoch = plan.batches_per_epoch or plan.max_steps * plan.ga
        saw_batch = False
        while self.state.global_step < plan.max_steps:
            group = self._next_group(iterator, plan.ga)
            if not group:
                break
            saw_batch = True
            if self._train_step(loop, group, epoch):
                break
        if not saw_batch and self.state.global_step == loop.start_step and epoch == loop.first_epoch:
            raise ValueError(
                "train_dataset produced no batch: the (length-less) dataset is empty, so there is nothing "
                "to train on"
            )
        if not saw_batch:
            logger.warning(
                "tracklink: epoch %d produced no batch (is the train dataset empty?); stopping training", epoch,
            )
            self.control.should_training_stop = True
        self.control = handler.on_epoch_end(args, self.state, self.control)
        loop.tr_loss = self._maybe_log_save_evaluate(loop.tr_loss, loop.grad_norm, loop.ignore_keys, loop.learning_rate)

    def _train_step(self, loop: Loop, group: list[Any], epoch: int) -> bool:
        """One optimizer step over ``group`` (gradient-accumulation batches); returns whether the epoch stops."""
        args, handler, model = self.args, self.callback_handler, loop.model
        n = len(group)
        for i, inputs in enumerate(group):
            if i == 0:
                self.control = handler.on_step_begin(args, self.state, self.control)
            last = i == n - 1
            with gradient_sync(model, last) if loop.sync_control else contextlib.nullcontext():
                loss_step = self.training_step(model, inputs, n)
            if loop.filter_nan:
                replacement = loop.tr_loss / (1 + self.state.global_step - self._globalstep_last_logged)
                finite = torch.isfinite(loss_step)
                loop.tr_loss = loop.tr_loss + torch.where(finite, loss_step, replacement)
                self._losses.nonfinite = self._losses.nonfinite + (~finite).float()
            else:
                loop.tr_loss = loop.tr_loss + loss_step
            if loop.count_flos:
                self.current_flos += float(self.floating_point_ops(inputs))
            loop.batch_index += 1
            self._losses.batches += 1
            if last:
                loop.grad_norm = self._clip_gradients(loop.params)
                self.control = handler.on_pre_optimizer_step(args, self.state, self.control)
                stepped = self._optimizer_step()
                self.control = handler.on_optimizer_step(args, self.state, self.control)
                loop.learning_rate = self._current_lr()
                if stepped and not loop.plateau:
                    self.lr_scheduler.step()
                for param in loop.params:  # model.zero_grad(set_to_none=True), without walking the modules
                    param.grad = None
                self.state.global_step += 1
                self.state.epoch = epoch + loop.batch_index / loop.steps_in_epoch
                self.control = handler.on_step_end(args, self.state, self.control)
                loop.tr_loss = self._maybe_log_save_evaluate(
                    loop.tr_loss, loop.grad_norm, loop.ignore_keys, loop.learning_rate
                )
            else:
                self.control = handler.on_substep_end(args, self.state, self.control)
            if self.control.should_epoch_stop or self.control.should_training_stop:
                return True
        return False

    def _end_training(self, loop: Loop) -> TrainOutput:
        """The final metrics, the best model, ``on_train_end``."""
        handler = self.callback_handler
        self._total_loss_scalar += self._losses.take(loop.tr_loss, self.state.global_step, self.process.world_size)
        steps_run = self.state.global_step - loop.start_step
        train_loss = self._total_loss_scalar / steps_run if steps_run > 0 else 0.0
        self.store_flos()
        metrics = speed_metrics("train", loop.start_time, num_samples=steps_run * loop.plan.total_batch,
                                num_steps=steps_run)
        metrics["total_flos"] = self.state.total_flos
        metrics["train_loss"] = train_loss
        if self.scaler is not None:
            metrics["train_skipped_optimizer_steps"] = self._skipped_steps.total
        metrics.update(handler.final_metrics())
        self.log(metrics)
        checkpointing.load_best_model_at_end(self)
        checkpointing.final_checkpoint_cleanup(self)
        self.control = handler.on_train_end(self.args, self.state, self.control)
        if self.process.is_world_main:  # the trackers are drained: checkpoints kept for them can go now
            checkpointing.rotate(self)
        return TrainOutput(self.state.global_step, train_loss, metrics)

    def _next_group(self, iterator: Iterator[Any], size: int) -> list[Any]:
        group = []
        for _ in range(size):
            try:
                group.append(next(iterator))
            except StopIteration:
                break
        return group

    def training_step(self, model: torch.nn.Module, inputs: Any, num_batches: int) -> torch.Tensor:
        """Forward and backward of one batch; returns the detached loss divided by the number of batches
        in this optimizer step (no host synchronisation)."""
        if not (model.training and self.model.training):  # an evaluation or a callback switched it off
            model.train()
        inputs = self._prepare_inputs(inputs)
        self._count_tokens(inputs)
        with self._autocast():
            loss = self.compute_loss(model, inputs)
        if num_batches != 1:
            loss = loss / num_batches
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        return loss.detach()

    def compute_loss(self, model: torch.nn.Module, inputs: Any, return_outputs: bool = False) -> Any:
        outputs = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
        loss = evaluation.loss_of(outputs)
        if loss is None:
            keys = list(outputs.keys()) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ValueError(
                f"The model did not return a loss (got {keys}). With the default compute_loss the model must "
                "return a 'loss' when called with labels; check label_names and the dataset keys "
                f"({', '.join(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__})"
                + (f"; remove_unused_columns=True dropped {', '.join(map(repr, self._inputs.dropped))}"
                   if self._inputs.dropped else "")
            )
        if loss.dim() > 0:
            loss = loss.mean()
        return (loss, outputs) if return_outputs else loss

    def _counts_flos(self) -> bool:
        """Whether FLOs can be counted: the model has ``floating_point_ops`` or a subclass overrides
        :meth:`floating_point_ops` (otherwise the per-batch call is skipped)."""
        return type(self).floating_point_ops is not Trainer.floating_point_ops or callable(
            getattr(unwrap_model(self.model), "floating_point_ops", None)
        )

    def floating_point_ops(self, inputs: Any) -> float:
        """Floating-point operations of a batch, when the model can tell (``model.floating_point_ops``)."""
        fn = getattr(unwrap_model(self.model), "floating_point_ops", None)
        return float(fn(inputs)) if callable(fn) else 0.0

    def _count_tokens(self, inputs: Any) -> None:
        mode = self.args.include_num_input_tokens_seen
        if mode == "no" or not isinstance(inputs, Mapping):
            return
        if mode == "non_padding" and "attention_mask" in inputs:
            self._tokens_seen = self._tokens_seen + inputs["attention_mask"].sum()
        elif "input_ids" in inputs:
            self._tokens_seen = self._tokens_seen + inputs["input_ids"].numel()

    def _clip_gradients(self, params: list[torch.nn.Parameter]) -> Any:
        if not self.args.max_grad_norm or self.args.max_grad_norm <= 0:
            return None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        return torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)

    def _optimizer_step(self) -> bool:
        if self.scaler is None:
            self.optimizer.step()
            return True
        return self._skipped_steps.step(self.scaler, self.optimizer)

    def _current_lr(self) -> float | None:
        try:
            return float(self.lr_scheduler.get_last_lr()[0])
        except Exception:
            return float(self.optimizer.param_groups[0]["lr"])

    def _maybe_log_save_evaluate(
        self, tr_loss: torch.Tensor, grad_norm: Any, ignore_keys: list[str] | None, learning_rate: float | None,
    ) -> torch.Tensor:
        if self.control.should_log and self.state.global_step > self._globalstep_last_logged:
            loss_scalar = self._losses.take(tr_loss, self.state.global_step, self.process.world_size)
            logs: dict[str, float] = {
                "loss": loss_scalar / (self.state.global_step - self._globalstep_last_logged)
            }
            if grad_norm is not None:
                logs["grad_norm"] = float(grad_norm.item()) if isinstance(grad_norm, torch.Tensor) else float(grad_norm)
            if learning_rate is not None:
                logs["learning_rate"] = learning_rate
            if self.scaler is not None:
                logs["skipped_optimizer_steps"] = self._skipped_steps.take_since_log()
            self._total_loss_scalar += loss_scalar
            tr_loss = torch.zeros((), device=tr_loss.device)
            self._globalstep_last_logged = self.state.global_step
            self.store_flos()
            self.log(logs)
        if self.control.should_evaluate:
            metrics = self._evaluate(ignore_keys)
            is_new_best = evaluation.update_best(self.state, self.args, metrics)
            if self.args.save_strategy == "best":
                self.control.should_save = is_new_best
        if self.control.should_save:
            directory = checkpointing.save_checkpoint(self)
            self.control = self.callback_handler.on_save(
                self.args, self.state, self.control, checkpoint_dir=str(directory)
            )
        return tr_loss

    def _evaluate(self, ignore_keys: list[str] | None, skip_scheduler: bool = False) -> dict[str, float]:
        metrics = self.evaluate(ignore_keys=ignore_keys)
        if self._trial_info is not None:
            search.report(self, metrics)
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and not skip_scheduler:
            self.lr_scheduler.step(evaluation.metric_value(self.args, metrics))
        return metrics

    # -- hyper-parameter search ----------------------------------------------------------------------

    def hyperparameter_search(
        self,
        hp_space: Callable[[Any], dict[str, Any]] | None = None,
        compute_objective: Callable[[dict[str, float]], float] | None = None,
        n_trials: int = 20,
        direction: str | list[str] = "minimize",
        backend: str | None = None,
        hp_name: Callable[[Any], str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Search hyper-parameters with Optuna (``backend="optuna"``, one machine) or Ray Tune
        (``"ray"``, a local or existing cluster); returns the best run (``BestRun``: ``run_id``,
        ``objective``, ``hyperparameters``), or one per Pareto-optimal trial for several directions.

        Each trial trains a fresh model from ``model_init`` with the trial's values applied to a copy of
        the arguments, in ``<output_dir>/run-<trial>`` (or ``hp_name(trial)``); its objective is
        ``compute_objective(metrics)`` of the last evaluation (default: the evaluation loss, else the sum
        of the metrics), reported at every evaluation so the backend can prune. Backend options go in
        ``kwargs`` (see ``tracklink.trainer.search.run_optuna`` / ``run_ray``).
        """
        return search.hyperparameter_search(self, hp_space, compute_objective, n_trials, direction, backend,
                                            hp_name, **kwargs)

    # -- checkpoints ------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the (unwrapped) model's weights and config, and the processing class if it can save.

        With FSDP the weights are gathered from every process into one ``model.safetensors``: call it on
        every process (as in transformers); the world main process writes."""
        checkpointing.save_model(self, output_dir or self.args.output_dir)

    def store_flos(self) -> None:
        if is_distributed():
            total = sum_across_processes(torch.tensor(self.current_flos, dtype=torch.float64, device=self.device))
            self.state.total_flos += float(total.item())
        else:
            self.state.total_flos += self.current_flos
        self.current_flos = 0.0

    # -- logging ----------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Record ``logs`` (plus ``epoch`` and, when enabled, ``num_input_tokens_seen``) in
        ``state.log_history`` and fire ``on_log``.

        One-element tensors and NumPy scalars are logged as Python numbers (``logs`` is updated in
        place); tensors or arrays of several elements are left out with a warning, so a checkpoint's
        ``trainer_state.json`` always holds plain JSON.

        With system metrics on (``TRACKLINK_SYSTEM_METRICS``), a sample taken since the last log is added to
        what ``on_log`` receives (a copy of ``logs``), never to ``logs`` itself or ``state.log_history``. Under
        torchrun the nodes' samples are gathered here (a collective: call ``log`` on every process, as
        the trainer does)."""
        cleaned = plain_logs(logs, "Trainer.log()")
        logs.clear()
        logs.update(cleaned)
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        if self.args.include_num_input_tokens_seen != "no":
            seen = self._tokens_seen
            if isinstance(seen, torch.Tensor):
                seen = int(sum_across_processes(seen).item())
            elif is_distributed():
                seen = int(sum_across_processes(torch.tensor(seen, device=self.device)).item())
            self.state.num_input_tokens_seen = self._tokens_seen_base + int(seen)
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
        self.state.log_history.append({**logs, "step": self.state.global_step})
        system = gather_samples(self.run.system_sample()) if self.run.system_metrics_on else None
        event_logs = {**logs, **{k: v for k, v in system.items() if k not in logs}} if system else logs
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, event_logs)

    # -- evaluation and prediction ------------------------------------------------------------------

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Evaluate on ``eval_dataset`` (default: the trainer's), log the metrics (``on_log``) and fire
        ``on_evaluate``. A dict of datasets is evaluated one by one with prefix ``eval_<name>``."""
        dataset = evaluation.resolve_eval_dataset(self, eval_dataset)
        if isinstance(dataset, Mapping):
            merged: dict[str, float] = {}
            for name, part in dataset.items():
                merged.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}"))
            return merged
        start = time.time()
        dataloader = self.get_eval_dataloader(dataset)
        output, num_samples = evaluation.prediction_loop(self,
            dataloader, ignore_keys, metric_key_prefix, self.compute_metrics is not None,
        )
        metrics = output.metrics
        metrics.update(evaluation.speed(self, metric_key_prefix, start, dataset, num_samples))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    def predict(
        self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test",
    ) -> PredictionOutput:
        """Predictions (and metrics when labels are present) for ``test_dataset``; fires
        ``on_prediction_step`` per batch and ``on_predict`` (no ``on_log``)."""
        start = time.time()
        test_dataset = evaluation.resolve_eval_dataset(self, test_dataset)  # a name of one of the trainer's eval datasets too
        dataloader = self.get_eval_dataloader(test_dataset)
        output, num_samples = evaluation.prediction_loop(self, dataloader, ignore_keys, metric_key_prefix, True)
        output.metrics.update(evaluation.speed(self, metric_key_prefix, start, test_dataset, num_samples))
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics=output.metrics)
        return output

    def prediction_step(
        self, model: torch.nn.Module, inputs: Any, ignore_keys: list[str] | None,
    ) -> tuple[Any, Any, Any]:
        """Loss (when labels are present), logits and labels of one batch, without gradients."""
        return evaluation.predict_batch(self, model, inputs, ignore_keys)
