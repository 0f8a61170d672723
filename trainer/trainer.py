"""``Trainer``: a lean PyTorch training loop that fires transformers' events in transformers v5's order.

Conventions are transformers': ``model(**batch)`` returns an output with ``loss`` (attribute, key, or
first tuple element); datasets yield dicts; the default collator stacks tensors. The loop keeps the
training loss on the device and forces no host-device synchronisation on a step that neither logs nor
evaluates (NaN/inf losses are filtered on the device).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, IterableDataset

from tracklink.atomic import atomic_write_text
from tracklink.callbacks import PrinterCallback, ProgressCallback
from tracklink.flow import DefaultFlowCallback
from tracklink.handler import CallbackHandler
from tracklink.log import ensure_default_logging
from tracklink.process import ProcessInfo
from tracklink.redact import current_secrets, redact
from tracklink.run import Run
from tracklink.shaping import plain_value
from tracklink.signals import SigtermGuard, ignoring_sigterm, restore_sigterm
from tracklink.state import (
    HUB_STATE_KEY,
    INTERNAL_STATE_KEYS,
    TrainerControl,
    TrainerState,
    collect_states,
    state_key,
)
from tracklink.tracker import Tracker
from tracklink.values import plain_logs

from . import checkpoint as ckpt
from . import fsdp, search
from .arguments import TrainingArguments
from .data import IterableDatasetShard, build_dataloader, default_data_collator, has_length, move_to_device
from .distributed import (
    all_gather_objects,
    any_process,
    barrier,
    gradient_sync,
    is_distributed,
    launched_by_torchrun,
    setup_distributed,
    sum_across_processes,
    unwrap_model,
    wrap_model,
)
from .optim import create_optimizer, create_scheduler
from .precision import SkippedSteps, autocast_context
from .preparation import (
    ModelCompiler,
    check_compile_backend,
    check_gradient_checkpointing,
    enable_gradient_checkpointing,
)

logger = logging.getLogger("tracklink")

__all__ = ["EvalPrediction", "PredictionOutput", "TrainOutput", "Trainer", "set_seed"]


class MissingMetricError(KeyError, ValueError):
    """``metric_for_best_model`` is not among the evaluation metrics (a ``KeyError``, as in
    transformers, whose message prints without ``KeyError``'s quoting; also a ``ValueError``, as every
    refused argument is when the ``Trainer`` is built)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict[str, float]


class PredictionOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: dict[str, float]


class EvalPrediction:
    """What ``compute_metrics`` receives: NumPy ``predictions`` and ``label_ids`` (unpackable as a pair)."""

    def __init__(self, predictions: Any, label_ids: Any) -> None:
        self.predictions = predictions
        self.label_ids = label_ids

    def __iter__(self) -> Iterator[Any]:
        return iter((self.predictions, self.label_ids))

    def __getitem__(self, index: int) -> Any:
        return (self.predictions, self.label_ids)[index]

    def __len__(self) -> int:
        return 2


def set_seed(seed: int) -> None:
    """Seed Python, NumPy (when installed) and torch (all devices)."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    torch.manual_seed(seed)


def speed_metrics(prefix: str, start: float, num_samples: int | None = None, num_steps: int | None = None) -> dict[str, float]:
    runtime = time.time() - start
    metrics = {f"{prefix}_runtime": round(runtime, 4)}
    if runtime > 0:
        if num_samples is not None:
            metrics[f"{prefix}_samples_per_second"] = round(num_samples / runtime, 3)
        if num_steps is not None:
            metrics[f"{prefix}_steps_per_second"] = round(num_steps / runtime, 3)
    return metrics


def _loss_of(outputs: Any) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get("loss")
    loss = getattr(outputs, "loss", None)
    if loss is not None:
        return loss
    if isinstance(outputs, (tuple, list)) and outputs:
        return outputs[0]
    return None


def _logits_of(outputs: Any, has_loss: bool, ignore_keys: list[str]) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) or hasattr(outputs, "keys"):
        items = [v for k, v in dict(outputs).items() if k not in ignore_keys and k != "loss"]
    elif isinstance(outputs, (tuple, list)):
        items = list(outputs[1:] if has_loss else outputs)
    else:
        logits = getattr(outputs, "logits", None)
        items = [] if logits is None else [logits]
    items = [v for v in items if isinstance(v, torch.Tensor)]
    if not items:
        return None
    return items[0] if len(items) == 1 else tuple(items)


def _concat(chunks: list[Any]) -> Any:
    """Concatenate per-batch NumPy arrays along the first axis, padding other axes with -100."""
    import numpy as np

    if not chunks:
        return None
    if isinstance(chunks[0], tuple):
        return tuple(_concat([c[i] for c in chunks]) for i in range(len(chunks[0])))
    if all(c.shape[1:] == chunks[0].shape[1:] for c in chunks):
        return np.concatenate(chunks, axis=0)
    shape = [sum(c.shape[0] for c in chunks)] + [max(c.shape[i] for c in chunks) for i in range(1, chunks[0].ndim)]
    out = np.full(shape, -100, dtype=chunks[0].dtype)
    row = 0
    for c in chunks:
        out[(slice(row, row + c.shape[0]), *(slice(0, n) for n in c.shape[1:]))] = c
        row += c.shape[0]
    return out


def _to_numpy(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(_to_numpy(v) for v in value)
    tensor = value.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.cpu().numpy()


_PLAIN_EVAL_METRICS = ("loss", "runtime", "samples_per_second", "steps_per_second")


def _check_output_dir(output_dir: str) -> None:
    """Refuse an ``output_dir`` that cannot hold checkpoints, before any training step: a regular file, a
    path below a regular file, or a directory that cannot be written (probed with a temporary file, which
    also catches read-only file systems)."""
    path = Path(output_dir)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is" if existing == path else f"is below {str(existing)!r}, which is"
        raise ValueError(f"TrainingArguments.output_dir={output_dir!r} {where} a regular file; checkpoints need a "
                         "directory (choose another output_dir)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ValueError(f"TrainingArguments.output_dir={output_dir!r} is not writable ({exc.strerror}: "
                         f"{str(existing)!r}); choose a directory you can write to") from None


def _check_train_dataset(dataset: Any) -> None:
    if dataset is not None and has_length(dataset) and len(dataset) == 0:
        raise ValueError("train_dataset is empty (len() == 0): there is nothing to train on. Pass a dataset with "
                         "samples, or leave train_dataset=None to only evaluate or predict")


def _check_eval_dataset(dataset: Any, args: Any) -> None:
    parts = dataset.items() if isinstance(dataset, Mapping) else [(None, dataset)]
    for name, part in parts:
        if part is not None and has_length(part) and len(part) == 0:
            which = f"eval_dataset[{name!r}]" if name is not None else "eval_dataset"
            raise ValueError(f"{which} is empty (len() == 0): an evaluation would measure nothing "
                             f"(eval_strategy={args.eval_strategy!r}). Pass samples, or leave it out")


def _check_best_metric(args: Any, eval_dataset: Any, compute_metrics: Any, trainer_class: type) -> None:
    """``metric_for_best_model`` must be a metric some evaluation produces. Without ``compute_metrics`` (and
    with the stock evaluation loop) evaluations produce only the loss and the speed metrics."""
    name = args.metric_for_best_model
    if name is None or compute_metrics is not None or trainer_class.evaluate is not Trainer.evaluate:
        return
    key = name if name.startswith("eval_") else f"eval_{name}"
    names = list(eval_dataset) if isinstance(eval_dataset, Mapping) else [None]
    produced = [f"eval_{n}_{m}" if n else f"eval_{m}" for n in names for m in _PLAIN_EVAL_METRICS]
    if key not in produced:
        raise MissingMetricError(
            f"TrainingArguments.metric_for_best_model={name!r} (looked up as {key!r}) is not a metric any "
            f"evaluation produces: without compute_metrics the evaluation metrics are {', '.join(produced)}. "
            "Set metric_for_best_model to one of them (without or with the 'eval_' prefix), or pass "
            "compute_metrics that returns it"
        )


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
        if model is None and model_init is None:
            raise ValueError("Trainer needs a model or a model_init function; both are None")
        if args.eval_strategy != "no" and eval_dataset is None:
            raise ValueError(
                f"TrainingArguments.eval_strategy={args.eval_strategy!r} needs an eval_dataset, but none was given "
                "(pass eval_dataset=..., or set eval_strategy='no')"
            )
        if args.load_best_model_at_end and eval_dataset is None:
            raise ValueError("load_best_model_at_end=True needs an eval_dataset")
        _check_output_dir(args.output_dir)
        _check_train_dataset(train_dataset)
        _check_eval_dataset(eval_dataset, args)
        _check_best_metric(args, eval_dataset, compute_metrics, type(self))
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
        self._forward_params: set[str] | None = None
        self._dropped_columns: list[str] | None = None  # batch keys remove_unused_columns drops (first batch)

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
        # the run's trackers live in this hub: the trainer drives them with its events
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
        self._warned: set[str] = set()
        self._nonfinite = torch.zeros(())
        self._batches_since_log = 0
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
            accepted = self._accepted_inputs()
            if accepted is not None:
                if self._dropped_columns is None:
                    self._check_inputs(inputs, accepted)
                inputs = {k: v for k, v in inputs.items() if k in accepted}
        return move_to_device(inputs, self.device)

    def _check_inputs(self, batch: Mapping[str, Any], accepted: set[str]) -> None:
        """On the first batch: name the keys ``remove_unused_columns`` drops, and fail clearly when the
        model's ``forward`` then lacks a required input (instead of the model's bare ``TypeError``)."""
        self._dropped_columns = sorted(k for k in batch if k not in accepted)
        if self._dropped_columns:
            logger.info("tracklink: remove_unused_columns drops batch keys the model's forward does not take: %s",
                        ", ".join(self._dropped_columns))
        try:
            params = inspect.signature(unwrap_model(self.model).forward).parameters
        except (TypeError, ValueError):
            return
        required = [name for name, p in params.items() if p.default is inspect.Parameter.empty
                    and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        missing = [name for name in required if name not in batch]
        if missing:
            dropped = (f"; remove_unused_columns=True dropped {', '.join(map(repr, self._dropped_columns))} "
                       "(not parameters of forward)") if self._dropped_columns else ""
            raise ValueError(
                f"the model's forward requires {', '.join(map(repr, missing))}, but the batch has only "
                f"{', '.join(map(repr, batch)) or 'no keys'}{dropped}. Rename the dataset's keys to forward's "
                "parameters, or set remove_unused_columns=False and take them in forward(**kwargs)"
            )

    def _accepted_inputs(self) -> set[str] | None:
        if self._forward_params is None:
            target = unwrap_model(self.model)
            try:
                params = inspect.signature(target.forward).parameters
            except (TypeError, ValueError):
                return None
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                self._forward_params = set()
            else:
                self._forward_params = set(params) | set(self.args.label_names or [])
        return self._forward_params or None

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
        trainer's eval datasets), built at each evaluation or prediction.

        In distributed runs each process reads a share: a contiguous range of a sized dataset, or, for
        length-less (iterable) data, every ``world_size``-th batch of the stream
        (:class:`~tracklink.trainer.data.IterableDatasetShard` without completing the last chunk, so no
        sample is evaluated twice). The prediction loop gathers the shares back into dataset order.
        Processes may get different numbers of batches."""
        dataset = self._eval_dataset(eval_dataset)
        sampler = None
        batch_size = self.args.per_device_eval_batch_size
        if is_distributed():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
            if has_length(dataset) and not isinstance(dataset, IterableDataset):
                per_rank = math.ceil(len(dataset) / world)
                sampler = list(range(rank * per_rank, min(len(dataset), (rank + 1) * per_rank)))
            else:
                dataset = IterableDatasetShard(dataset, batch_size, num_processes=world, process_index=rank,
                                               even_batches=False)
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler,
            collate_fn=self.data_collator, num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and self.device.type == "cuda",
        )

    def _eval_dataset(self, eval_dataset: Any) -> Any:
        if isinstance(eval_dataset, str):
            if not isinstance(self.eval_dataset, Mapping) or eval_dataset not in self.eval_dataset:
                names = ", ".join(map(repr, self.eval_dataset)) if isinstance(self.eval_dataset, Mapping) else "none"
                raise ValueError(f"eval_dataset={eval_dataset!r} names no eval dataset of this Trainer (names: {names})")
            return self.eval_dataset[eval_dataset]
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if dataset is None:
            raise ValueError("Trainer.evaluate() needs an eval_dataset (none was given to the Trainer or the call)")
        return dataset

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
        checkpoint_dir = self._resolve_checkpoint(resume_from_checkpoint)
        if self.model_init is not None:  # a fresh model for every training run, as in transformers
            set_seed(args.seed)
            self.model = self._place(self.call_model_init(trial))
            self.model_wrapped = self.model
            self.optimizer, self.lr_scheduler = self._user_optimizers
            self._forward_params = None
            self._dropped_columns = None
        with SigtermGuard():
            try:
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

    def _resolve_checkpoint(self, resume: str | bool | None) -> Path | None:
        if resume is None or resume is False:
            return None
        if resume is True:
            found = ckpt.latest_checkpoint(self.args.output_dir)
            if found is None:
                present = ckpt.checkpoints(self.args.output_dir)
                detail = (f"; the {len(present)} checkpoint directories there are incomplete or damaged (see the "
                          "warnings above)") if present else ""
                raise ValueError(
                    f"train(resume_from_checkpoint=True) found no valid checkpoint in output_dir "
                    f"{self.args.output_dir!r} (a checkpoint-<step>/ with trainer_state.json){detail}"
                )
            return found
        if not isinstance(resume, (str, os.PathLike)):
            raise TypeError(
                f"train(resume_from_checkpoint={resume!r}): expected a checkpoint directory path, True for the "
                "newest checkpoint in output_dir, or None"
            )
        path = Path(resume)
        if not path.is_dir():
            raise ValueError(
                f"train(resume_from_checkpoint={str(resume)!r}): not a checkpoint directory (it does not exist); "
                f"pass a checkpoint-<step>/ path (with {ckpt.WEIGHTS_NAME}), True for the newest one in output_dir, "
                "or None"
            )
        if not (path / ckpt.WEIGHTS_NAME).is_file() and not fsdp.is_sharded_checkpoint(path):
            inside = ckpt.checkpoints(path)
            hint = (f" (it holds checkpoints: pass {str(inside[-1])!r}, or True for the newest in output_dir)"
                    if inside else "")
            raise ValueError(
                f"train(resume_from_checkpoint={str(resume)!r}): not a checkpoint directory (no {ckpt.WEIGHTS_NAME} "
                f"or {fsdp.MODEL_DIR}/){hint}; "
                "pass a checkpoint-<step>/ path, True for the newest one, or None"
            )
        if (path / ckpt.STATE_NAME).is_file():
            problem = ckpt.checkpoint_problem(path)
            if problem:
                raise ckpt.CorruptCheckpointError(
                    f"train(resume_from_checkpoint={str(resume)!r}): checkpoint {path} is damaged: {problem}. "
                    "Resume from another checkpoint (True picks the newest intact one)"
                )
        else:
            # transformers' behaviour: the weights are loaded and training starts from a fresh state
            logger.warning(
                "tracklink: resume_from_checkpoint=%r has no %s (an interrupted save, or weights only): "
                "loading the model weights and starting at step 0 with a fresh optimizer, scheduler and "
                "random state", str(resume), ckpt.STATE_NAME,
            )
        return path

    def _inner_train(self, checkpoint_dir: Path | None, trial: Any, ignore_keys_for_eval: list[str] | None) -> TrainOutput:
        args = self.args
        dataloader = self.get_train_dataloader()
        ga = args.gradient_accumulation_steps
        total_batch = args.per_device_train_batch_size * ga * max(1, self.process.world_size)
        if has_length(dataloader) and len(dataloader) == 0:
            raise ValueError(
                f"the train dataloader has no batch: train_dataset has {len(self.train_dataset)} sample(s), "
                f"per_device_train_batch_size={args.per_device_train_batch_size} and dataloader_drop_last="
                f"{args.dataloader_drop_last}; use a smaller batch size or dataloader_drop_last=False"
            )
        if has_length(dataloader):
            batches_per_epoch = len(dataloader)
            updates_per_epoch = max(math.ceil(batches_per_epoch / ga), 1)
            if args.max_steps > 0:
                max_steps = args.max_steps
                num_train_epochs = math.ceil(max_steps / updates_per_epoch)
            else:
                max_steps = math.ceil(args.num_train_epochs * updates_per_epoch)
                num_train_epochs = math.ceil(args.num_train_epochs)
        elif args.max_steps > 0:
            batches_per_epoch = None
            updates_per_epoch = args.max_steps
            max_steps, num_train_epochs = args.max_steps, 2**62
        else:
            raise ValueError(
                "train_dataset has no length, so TrainingArguments.max_steps must be set (> 0); "
                f"it is {args.max_steps}"
            )

        # wrapping (DDP, or FSDP sharding in place) comes first: the optimizer must hold the sharded parameters
        self._prepare_model()
        if self._wrapped is None or self._wrapped[0] is not self.model:  # reused: a DDP wrapper per model
            self._wrapped = (self.model, wrap_model(self.model, args, self.device))
        self.model_wrapped = self._compile_wrapped(self._wrapped[1])
        if checkpoint_dir is not None:
            self._load_model_state(checkpoint_dir)
        self.create_optimizer_and_scheduler(max_steps)
        # a fresh scale for every training (a resume restores the checkpoint's); with FSDP the gradients
        # are DTensors, whose inf/NaN check is reduced over all processes
        self.scaler = torch.amp.GradScaler(self.device.type) if args.fp16 else None
        self._skipped_steps.reset()
        self.state = TrainerState(
            stateful_callbacks=self._stateful_objects(),
            is_local_process_zero=self.process.is_local_main,
            is_world_process_zero=self.process.is_world_main,
            train_batch_size=args.per_device_train_batch_size,
        )
        # ``trial`` is accepted for transformers compatibility (it reaches ``model_init``); a dict of
        # hyper-parameters (Ray/W&B style) is recorded as the trial's parameters
        self.state.is_hyper_param_search = trial is not None or self._trial_info is not None
        if self._trial_info is not None:
            self.state.trial_name = self._trial_info.name
            self.state.trial_params = plain_value(dict(self._trial_info.params))
        elif isinstance(trial, Mapping):
            self.state.trial_params = dict(trial)
        self.state.compute_steps(args, max_steps)

        epochs_trained, steps_in_epoch_done = 0, 0
        if checkpoint_dir is not None and not (checkpoint_dir / ckpt.STATE_NAME).is_file():
            checkpoint_dir = None  # weights only (warned in _resolve_checkpoint)
        if checkpoint_dir is not None:
            epochs_trained, steps_in_epoch_done = self._restore_checkpoint(checkpoint_dir, updates_per_epoch)
        # tokens seen continue from the checkpoint; this call counts its own on top
        self._tokens_seen = 0
        self._tokens_seen_base = self.state.num_input_tokens_seen
        self.state.max_steps = max_steps
        self.state.num_train_epochs = num_train_epochs
        self.state.is_local_process_zero = self.process.is_local_main
        self.state.is_world_process_zero = self.process.is_world_main

        handler = self.callback_handler
        handler.model = self.model
        handler.optimizer = self.optimizer
        handler.lr_scheduler = self.lr_scheduler
        handler.train_dataloader = dataloader

        model = self.model_wrapped
        device = self.device
        tr_loss = torch.zeros((), device=device)
        self._nonfinite = torch.zeros((), device=device)  # losses the NaN/inf filter replaced since the last log
        self._batches_since_log = 0
        self._total_loss_scalar = 0.0
        self._globalstep_last_logged = self.state.global_step
        start_step = self.state.global_step
        grad_norm: Any = None
        learning_rate: float | None = None
        start_time = time.time()
        if self.state.is_world_process_zero:
            self.run.log_banner()
        model.zero_grad(set_to_none=True)

        self.control = handler.on_train_begin(args, self.state, self.control)
        if args.eval_on_start:
            self._evaluate(ignore_keys_for_eval, skip_scheduler=True)

        filter_nan = args.logging_nan_inf_filter
        plateau = isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        distributed = is_distributed()
        sync_control = (distributed or fsdp.is_sharded(self.model)) and ga > 1
        count_flos = self._counts_flos()
        params = list(model.parameters())  # fixed for the run: zero_grad and clipping reuse the list
        for epoch in range(epochs_trained, num_train_epochs):
            if self.state.global_step >= max_steps:
                break
            sampler = getattr(dataloader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            elif not has_length(dataloader) and hasattr(getattr(dataloader, "dataset", None), "set_epoch"):
                dataloader.dataset.set_epoch(epoch)  # a stream that reshuffles per epoch
            skip_batches = 0
            resuming_epoch = epoch == epochs_trained and checkpoint_dir is not None
            if resuming_epoch and steps_in_epoch_done and not args.ignore_data_skip:
                skip_batches = steps_in_epoch_done * ga
                if hasattr(sampler, "skip_next"):
                    sampler.skip_next(skip_batches * args.per_device_train_batch_size)
            if resuming_epoch and not steps_in_epoch_done:
                self._load_rng_state(checkpoint_dir)  # the epoch starts afresh: as if it followed the save
            iterator = iter(dataloader)
            if skip_batches and not hasattr(sampler, "skip_next"):
                # length-less (iterable) data: consume the batches the checkpoint had already used
                for _ in range(skip_batches):
                    if next(iterator, None) is None:
                        break
            if resuming_epoch and steps_in_epoch_done:
                # mid-epoch: creating the iterator drew from the global RNG (the DataLoader's base seed),
                # which the uninterrupted run did not do at this point; restore afterwards
                self._load_rng_state(checkpoint_dir)
            self.control = handler.on_epoch_begin(args, self.state, self.control)
            batch_index = skip_batches
            # length-less data: transformers measures the epoch in units of max_steps * grad_accum batches
            steps_in_epoch = batches_per_epoch or max_steps * ga
            saw_batch = False
            stop = False
            while not stop and self.state.global_step < max_steps:
                group = self._next_group(iterator, ga)
                if not group:
                    break
                saw_batch = True
                n = len(group)
                for i, inputs in enumerate(group):
                    if i == 0:
                        self.control = handler.on_step_begin(args, self.state, self.control)
                    last = i == n - 1
                    with gradient_sync(model, last) if sync_control else contextlib.nullcontext():
                        loss_step = self.training_step(model, inputs, n)
                    if filter_nan:
                        replacement = tr_loss / (1 + self.state.global_step - self._globalstep_last_logged)
                        finite = torch.isfinite(loss_step)
                        tr_loss = tr_loss + torch.where(finite, loss_step, replacement)
                        self._nonfinite = self._nonfinite + (~finite).float()
                    else:
                        tr_loss = tr_loss + loss_step
                    if count_flos:
                        self.current_flos += float(self.floating_point_ops(inputs))
                    batch_index += 1
                    self._batches_since_log += 1
                    if last:
                        grad_norm = self._clip_gradients(params)
                        self.control = handler.on_pre_optimizer_step(args, self.state, self.control)
                        stepped = self._optimizer_step()
                        self.control = handler.on_optimizer_step(args, self.state, self.control)
                        learning_rate = self._current_lr()
                        if stepped and not plateau:
                            self.lr_scheduler.step()
                        for param in params:  # model.zero_grad(set_to_none=True), without walking the modules
                            param.grad = None
                        self.state.global_step += 1
                        self.state.epoch = epoch + batch_index / steps_in_epoch
                        self.control = handler.on_step_end(args, self.state, self.control)
                        tr_loss = self._maybe_log_save_evaluate(
                            tr_loss, grad_norm, ignore_keys_for_eval, learning_rate
                        )
                    else:
                        self.control = handler.on_substep_end(args, self.state, self.control)
                    if self.control.should_epoch_stop or self.control.should_training_stop:
                        stop = True
                        break
            if not saw_batch and self.state.global_step == start_step and epoch == epochs_trained:
                raise ValueError(
                    "train_dataset produced no batch: the (length-less) dataset is empty, so there is nothing "
                    "to train on"
                )
            if not saw_batch:
                logger.warning(
                    "tracklink: epoch %d produced no batch (is the train dataset empty?); stopping training",
                    epoch,
                )
                self.control.should_training_stop = True
            self.control = handler.on_epoch_end(args, self.state, self.control)
            tr_loss = self._maybe_log_save_evaluate(tr_loss, grad_norm, ignore_keys_for_eval, learning_rate)
            if self.control.should_training_stop:
                break

        self._total_loss_scalar += self._logged_loss(tr_loss)
        steps_run = self.state.global_step - start_step
        train_loss = self._total_loss_scalar / steps_run if steps_run > 0 else 0.0
        self.store_flos()
        metrics = speed_metrics("train", start_time, num_samples=steps_run * total_batch, num_steps=steps_run)
        metrics["total_flos"] = self.state.total_flos
        metrics["train_loss"] = train_loss
        if self.scaler is not None:
            metrics["train_skipped_optimizer_steps"] = self._skipped_steps.total
        metrics.update(handler.final_metrics())
        self.log(metrics)
        self._load_best_model_at_end()
        self._final_checkpoint_cleanup()
        self.control = handler.on_train_end(args, self.state, self.control)
        if self.process.is_world_main:  # the trackers are drained: checkpoints kept for them can go now
            self._rotate_checkpoints()
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
        loss = _loss_of(outputs)
        if loss is None:
            keys = list(outputs.keys()) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ValueError(
                f"The model did not return a loss (got {keys}). With the default compute_loss the model must "
                "return a 'loss' when called with labels; check label_names and the dataset keys "
                f"({', '.join(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__})"
                + (f"; remove_unused_columns=True dropped {', '.join(map(repr, self._dropped_columns))}"
                   if self._dropped_columns else "")
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
            loss_scalar = self._logged_loss(tr_loss)
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
            is_new_best = self._determine_best_metric(metrics)
            if self.args.save_strategy == "best":
                self.control.should_save = is_new_best
        if self.control.should_save:
            directory = self._save_checkpoint()
            self.control = self.callback_handler.on_save(
                self.args, self.state, self.control, checkpoint_dir=str(directory)
            )
        return tr_loss

    def _logged_loss(self, tr_loss: torch.Tensor) -> float:
        """The summed training loss since the last log, over all processes (one host read).

        With ``logging_nan_inf_filter`` a NaN/inf batch loss is replaced by the window's mean, as in
        transformers; when every batch of the window was non-finite there is nothing to replace it with,
        and the loss is logged as NaN (never disguised as 0). Either case is warned about once."""
        world = max(1, self.process.world_size)
        batches = self._batches_since_log * world
        totals = sum_across_processes(torch.stack([tr_loss.detach().float(), self._nonfinite]))
        loss_sum, nonfinite = (float(v) for v in totals.tolist())
        self._nonfinite = torch.zeros_like(self._nonfinite)
        self._batches_since_log = 0
        step = self.state.global_step
        if nonfinite and nonfinite >= batches:
            loss_sum = math.nan
            self._warn_once("nan-loss", f"tracklink: the training loss was NaN/inf for every batch logged at step "
                                        f"{step}; it is logged as nan. The weights are probably no longer finite")
        elif nonfinite:
            self._warn_once("nan-filtered", f"tracklink: {int(nonfinite)} of {batches} batch losses logged at step "
                                            f"{step} were NaN/inf and were replaced by the mean of the others "
                                            "(logging_nan_inf_filter=True)")
        elif not math.isfinite(loss_sum):
            self._warn_once("nan-loss", f"tracklink: the training loss logged at step {step} is {loss_sum}")
        return loss_sum / world

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("%s (warned once per run)", message)

    def _evaluate(self, ignore_keys: list[str] | None, skip_scheduler: bool = False) -> dict[str, float]:
        metrics = self.evaluate(ignore_keys=ignore_keys)
        if self._trial_info is not None:
            self._report_to_search(metrics)
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and not skip_scheduler:
            self.lr_scheduler.step(self._metric_value(metrics))
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
        if self.model_init is None:
            raise ValueError("hyperparameter_search needs Trainer(model_init=...): every trial trains a fresh model")
        search.validate(n_trials, hp_space, compute_objective)
        direction = search.check_direction(direction)
        if self.args.eval_strategy == "no" and self.eval_dataset is None:
            raise ValueError("hyperparameter_search needs an eval_dataset: the objective comes from evaluations")
        name = search.choose_backend(backend)
        run = search.run_optuna if name == "optuna" else search.run_ray
        with SigtermGuard():  # between trials too: the backend then records the trial as failed
            return run(self, hp_space, compute_objective, n_trials, direction, hp_name, **kwargs)

    def _run_trial(self, info: Any, params: Any, compute_objective: Any, context: Any) -> Any:
        """Train one trial (used by the search backends); returns its objective."""
        base_args = self.args
        trial_args = search.trial_arguments(base_args, params)
        self.args = trial_args
        self._trial_info = info
        self._search_context = context
        self._compute_objective = compute_objective or search.default_compute_objective
        self.objective = None
        try:
            self.train(trial=info.handle if info.handle is not None else dict(info.params))
            if self.objective is None:
                self._report_to_search(self.evaluate(), final=True)
            return self.objective
        finally:
            self.args = base_args
            self._trial_info = None
            self._search_context = None

    def _report_to_search(self, metrics: dict[str, float], final: bool = False) -> None:
        """Compute the trial's objective from an evaluation and report it; prune when the backend says so."""
        objective = self._compute_objective(metrics)
        self.objective = objective
        info = self._trial_info
        if info.backend == "optuna" and not isinstance(objective, (list, tuple)) and not final:
            trial = info.handle
            trial.report(float(objective), self.state.global_step)
            if trial.should_prune():
                self.log({"trial_pruned": 1.0})
                import optuna

                raise optuna.TrialPruned(f"trial {info.name} pruned at step {self.state.global_step}")
        elif info.backend == "ray" and not final:
            from ray import tune

            numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            try:
                tune.report({**numeric, "objective": float(objective), "step": self.state.global_step})
            except SystemExit:
                # Ray stops a trial by exiting from report(): pruning, unless the trial is at its last
                # step anyway (a scheduler's max_t reached), where training just finishes normally
                info.reported_final = True
                if self.state.global_step < self.state.max_steps:
                    self.log({"trial_pruned": 1.0})
                    raise

    def _metric_key(self) -> str:
        key = self.args.metric_for_best_model or "loss"
        return key if key.startswith("eval_") else f"eval_{key}"

    def _metric_value(self, metrics: dict[str, float]) -> float:
        key = self._metric_key()
        if key not in metrics:
            setting = self.args.metric_for_best_model
            what = f"TrainingArguments.metric_for_best_model={setting!r}" if setting is not None else \
                "The metric ReduceLROnPlateau steps on (metric_for_best_model, default 'loss')"
            raise MissingMetricError(
                f"{what} (looked up as {key!r}) is not among the evaluation metrics: "
                f"{', '.join(sorted(metrics))}. Set metric_for_best_model to one of them (without or with the "
                "'eval_' prefix), or make compute_metrics return it"
            )
        return float(metrics[key])

    def _determine_best_metric(self, metrics: dict[str, float]) -> bool:
        if self.args.metric_for_best_model is None:
            return False
        value = self._metric_value(metrics)
        best = self.state.best_metric
        if best is None or (value > best if self.args.greater_is_better else value < best):
            self.state.best_metric = value
            self.state.best_global_step = self.state.global_step
            return True
        return False

    # -- checkpoints ------------------------------------------------------------------------------

    def _stateful_objects(self) -> list[Any]:
        objects = []
        for callback in self.callback_handler.callbacks:
            if callable(getattr(callback, "state", None)):
                objects.append(callback)
        if self._search_context is not None:
            objects.append(self._search_context)
        objects.append(self.control)
        return objects

    def _save_checkpoint(self) -> Path:
        run_dir = self._run_dir()
        directory = run_dir / f"{ckpt.PREFIX}-{self.state.global_step}"
        self.store_flos()
        main = self.process.is_world_main
        sharded = fsdp.is_sharded(self.model)
        if main:
            directory.mkdir(parents=True, exist_ok=True)
            stale = directory / ckpt.STATE_NAME
            if stale.exists():
                stale.unlink()
            if not sharded:
                self._warn_nonfinite_weights(directory)
                self.save_model(str(directory), _internal_call=True)
            if not self.args.save_only_model:
                if not sharded:
                    ckpt.save_torch(self.optimizer.state_dict(), directory / ckpt.OPTIMIZER_NAME)
                ckpt.save_torch(self.lr_scheduler.state_dict(), directory / ckpt.SCHEDULER_NAME)
                if self.scaler is not None:
                    ckpt.save_torch(self.scaler.state_dict(), directory / ckpt.SCALER_NAME)
            args_json = redact(plain_value(self.args.to_dict()), current_secrets())
            atomic_write_text(directory / ckpt.ARGS_NAME, json.dumps(args_json, indent=2, sort_keys=True) + "\n")
        barrier()
        if sharded:
            self._save_sharded(directory)
        if not self.args.save_only_model:
            ckpt.save_rng_state(directory, self.process.rank, self.process.world_size)
        best_step = self.state.best_global_step
        if best_step is not None:
            best_dir = run_dir / f"{ckpt.PREFIX}-{best_step}"
            if best_dir.is_dir():
                self.state.best_model_checkpoint = str(best_dir)
        states = collect_states(self._stateful_objects())
        failures = self.callback_handler.tracker_failures()
        if failures:
            states[HUB_STATE_KEY] = {"args": {}, "attributes": {"tracker_failures": failures}}
        self.state.stateful_callbacks = states
        barrier()
        if main:
            self.state.save_to_json(str(directory / ckpt.STATE_NAME))
            self._rotate_checkpoints()
        barrier()
        return directory

    def _warn_nonfinite_weights(self, directory: Path) -> None:
        """Warn when the weights being checkpointed hold NaN/inf (one host read for all parameters)."""
        named = [(n, p) for n, p in unwrap_model(self.model).named_parameters() if p.numel()]
        if not named:
            return
        finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).tolist()
        bad = [name for (name, _), ok in zip(named, finite) if not ok]
        if bad:
            logger.warning(
                "tracklink: %s is saved with NaN/inf weights in %d parameter(s) (%s%s); resuming from it continues "
                "from broken weights", directory.name, len(bad), ", ".join(bad[:3]), ", ..." if len(bad) > 3 else "",
            )

    def _rotate_checkpoints(self) -> None:
        """Delete checkpoints beyond ``save_total_limit``; one a tracker still needs is kept until a later
        rotation (never waiting for the tracker)."""
        handler = self.callback_handler
        ckpt.rotate_checkpoints(
            self._run_dir(), self.args.save_total_limit, self.state.best_model_checkpoint,
            in_use=lambda path: handler.checkpoint_in_use(str(path)),
        )

    def _save_sharded(self, directory: Path) -> None:
        """FSDP: every process writes its shards with ``torch.distributed.checkpoint``; the consolidated
        ``model.safetensors`` is written too with ``save_only_model`` and at the end of training."""
        final = self.control.should_training_stop or self.state.global_step >= self.state.max_steps
        if self.args.save_only_model or final:
            self.save_model(str(directory), _internal_call=True)
        elif self.process.is_world_main:
            ckpt.save_config(unwrap_model(self.model), directory)
        if not self.args.save_only_model:
            fsdp.save_sharded(self.model, self.optimizer, directory)

    def _load_model_state(self, directory: Path) -> None:
        """Load a checkpoint's weights: the sharded ``pytorch_model_fsdp_0/`` when present (into a sharded
        or plain model), else ``model.safetensors``."""
        if fsdp.is_sharded_checkpoint(directory):
            fsdp.load_sharded_model(self.model, directory)
        elif fsdp.is_sharded(self.model):
            fsdp.load_full_weights(self.model, directory / ckpt.WEIGHTS_NAME)
        else:
            ckpt.load_model_weights(unwrap_model(self.model), directory)

    def _restore_checkpoint(self, directory: Path, updates_per_epoch: int) -> tuple[int, int]:
        """Load optimizer, scheduler, scaler and ``trainer_state.json`` from a complete checkpoint; returns
        ``(epochs_trained, updates done in the current epoch)``. RNG states are restored by the loop."""
        if not self.args.save_only_model:
            optimizer_file = directory / ckpt.OPTIMIZER_NAME
            if fsdp.load_sharded_optimizer(self.model, self.optimizer, directory):
                pass
            elif optimizer_file.is_file() and fsdp.is_sharded(self.model):
                raise ValueError(
                    f"resume_from_checkpoint={str(directory)!r} was saved without FSDP: its {ckpt.OPTIMIZER_NAME} "
                    f"cannot be loaded into the sharded optimizer of TrainingArguments.fsdp={' '.join(self.args.fsdp)!r}; "
                    "resume without fsdp, or load only the weights (a directory with model.safetensors and no "
                    "trainer_state.json starts a fresh optimizer)"
                )
            elif optimizer_file.is_file():
                self.optimizer.load_state_dict(ckpt.load_torch(optimizer_file, map_location=self.device))
            scheduler_file = directory / ckpt.SCHEDULER_NAME
            if scheduler_file.is_file():
                self.lr_scheduler.load_state_dict(ckpt.load_torch(scheduler_file))
            scaler_file = directory / ckpt.SCALER_NAME
            if self.scaler is not None and scaler_file.is_file():
                self.scaler.load_state_dict(ckpt.load_torch(scaler_file))
        state_file = directory / ckpt.STATE_NAME
        if state_file.is_file():
            loaded = TrainerState.load_from_json(str(state_file))
            for name in ("logging_steps", "eval_steps", "save_steps"):
                if getattr(loaded, name) != getattr(self.state, name):
                    logger.warning(
                        "tracklink: %s in the checkpoint (%s) differs from the current run (%s); using the "
                        "checkpoint's", name, getattr(loaded, name), getattr(self.state, name),
                    )
            if loaded.train_batch_size is not None and loaded.train_batch_size != self.args.per_device_train_batch_size:
                logger.warning(
                    "tracklink: per_device_train_batch_size changed from %s to %s since the checkpoint",
                    loaded.train_batch_size, self.args.per_device_train_batch_size,
                )
            loaded.is_hyper_param_search = self.state.is_hyper_param_search
            loaded.trial_name, loaded.trial_params = self.state.trial_name, self.state.trial_params
            if loaded.best_model_checkpoint and not Path(loaded.best_model_checkpoint).is_dir():
                logger.warning("tracklink: best checkpoint %s no longer exists; forgetting it", loaded.best_model_checkpoint)
                loaded.best_model_checkpoint = None
            self.state = loaded
            self._restore_stateful(loaded.stateful_callbacks)
        self.current_flos = 0.0
        global_step = self.state.global_step
        return global_step // updates_per_epoch, global_step % updates_per_epoch

    def _load_rng_state(self, directory: Path) -> None:
        if not self.args.save_only_model:
            ckpt.load_rng_state(directory, self.process.rank, self.process.world_size)

    def _restore_stateful(self, saved: dict[str, Any]) -> None:
        """When ``restore_callback_states_from_checkpoint``, rebuild stateful callbacks in place."""
        handler = self.callback_handler
        by_key: dict[str, list[Any]] = {}
        for callback in handler.callbacks:
            by_key.setdefault(state_key(callback), []).append(callback)
        # trackers need nothing here: on_train_begin gets the restored state, with their run identity
        if not self.args.restore_callback_states_from_checkpoint:
            return
        unmatched = []
        for key, entry in saved.items():
            entries = entry if isinstance(entry, list) else [entry]
            if key == "TrainerControl":
                self.control = TrainerControl.from_state(entries[0])
                continue
            current = [cb for cb in by_key.get(key, []) if not isinstance(cb, Tracker)]
            if not current:
                if key not in by_key and key not in INTERNAL_STATE_KEYS:
                    unmatched.append(key)
                continue
            for cb, stored in zip(current, entries):
                rebuilt = type(cb)(**stored.get("args", {}))
                for name, value in stored.get("attributes", {}).items():
                    setattr(rebuilt, name, value)
                handler.replace_callback(cb, rebuilt)
        if unmatched:
            logger.warning(
                "Checkpoint included callbacks not included in current configuration. Ignoring. (%s)",
                ", ".join(unmatched),
            )

    def _load_best_model_at_end(self) -> None:
        best = self.state.best_model_checkpoint
        if not (self.args.load_best_model_at_end and best):
            return
        barrier()
        if Path(best, ckpt.WEIGHTS_NAME).is_file() or fsdp.is_sharded_checkpoint(best):
            logger.info("tracklink: Loading best model from %s (score: %s).", best, self.state.best_metric)
            self._load_model_state(Path(best))
            if fsdp.is_sharded(self.model) and not Path(best, ckpt.WEIGHTS_NAME).is_file():
                self.save_model(best, _internal_call=True)  # the final model, consolidated (trackers upload it)
        else:
            logger.warning("tracklink: could not load the best model: %s has no %s", best, ckpt.WEIGHTS_NAME)

    def _final_checkpoint_cleanup(self) -> None:
        best = self.state.best_model_checkpoint
        if self.args.save_total_limit != 1 or not best or not self.process.is_world_main:
            return
        others = [p for p in ckpt.checkpoints(self._run_dir()) if p.resolve() != Path(best).resolve()]
        if others and self.callback_handler.trackers_uploading():
            self.callback_handler.wait_for_trackers()
        for path in others:
            import shutil

            logger.info("tracklink: deleting checkpoint %s (save_total_limit=1 keeps only the best)", path)
            shutil.rmtree(path, ignore_errors=True)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the (unwrapped) model's weights and config, and the processing class if it can save.

        With FSDP the weights are gathered from every process into one ``model.safetensors``: call it on
        every process (as in transformers); the world main process writes."""
        target = output_dir or self.args.output_dir
        if fsdp.is_sharded(self.model):
            weights = fsdp.full_state_dict(self.model)
            if not self.process.is_world_main:
                return
            ckpt.save_weights(unwrap_model(self.model), weights, target)
        elif not self.process.is_world_main:
            return
        else:
            ckpt.save_model(unwrap_model(self.model), target)
        save = getattr(self.processing_class, "save_pretrained", None)
        if callable(save):
            save(target)

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
        ``trainer_state.json`` always holds plain JSON."""
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
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    # -- evaluation and prediction ------------------------------------------------------------------

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Evaluate on ``eval_dataset`` (default: the trainer's), log the metrics (``on_log``) and fire
        ``on_evaluate``. A dict of datasets is evaluated one by one with prefix ``eval_<name>``."""
        dataset = self._eval_dataset(eval_dataset)
        if isinstance(dataset, Mapping):
            merged: dict[str, float] = {}
            for name, part in dataset.items():
                merged.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}"))
            return merged
        start = time.time()
        dataloader = self.get_eval_dataloader(dataset)
        output, num_samples = self._prediction_loop(
            dataloader, ignore_keys, metric_key_prefix, self.compute_metrics is not None,
        )
        metrics = output.metrics
        metrics.update(self._speed_metrics(metric_key_prefix, start, dataset, num_samples))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    def predict(
        self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test",
    ) -> PredictionOutput:
        """Predictions (and metrics when labels are present) for ``test_dataset``; fires
        ``on_prediction_step`` per batch and ``on_predict`` (no ``on_log``)."""
        start = time.time()
        test_dataset = self._eval_dataset(test_dataset)  # a name of one of the trainer's eval datasets too
        dataloader = self.get_eval_dataloader(test_dataset)
        output, num_samples = self._prediction_loop(dataloader, ignore_keys, metric_key_prefix, True)
        output.metrics.update(self._speed_metrics(metric_key_prefix, start, test_dataset, num_samples))
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics=output.metrics)
        return output

    def _speed_metrics(self, prefix: str, start: float, dataset: Any, num_samples: int) -> dict[str, float]:
        """Runtime and throughput of the evaluation/prediction begun at ``start``, over the dataset's length,
        or for length-less data over ``num_samples``, the samples all processes evaluated."""
        samples = len(dataset) if has_length(dataset) else num_samples
        total_batch = self.args.per_device_eval_batch_size * max(1, self.process.world_size)
        return speed_metrics(prefix, start, samples, math.ceil(samples / total_batch))

    def prediction_step(
        self, model: torch.nn.Module, inputs: Any, ignore_keys: list[str] | None,
    ) -> tuple[Any, Any, Any]:
        """Loss (when labels are present), logits and labels of one batch, without gradients."""
        inputs = self._prepare_inputs(inputs)
        label_names = self.args.label_names or ["labels"]
        has_labels = isinstance(inputs, Mapping) and all(inputs.get(n) is not None for n in label_names)
        labels = None
        if has_labels:  # read before compute_loss, which may pop them (a common override pattern)
            labels = inputs[label_names[0]] if len(label_names) == 1 else tuple(inputs[n] for n in label_names)
        loss = None
        with torch.no_grad(), self._autocast():
            if has_labels:  # the loss is computed as in training, so an overridden compute_loss applies
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
            else:
                outputs = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
        logits = _logits_of(outputs, has_labels and loss is not None, ignore_keys or [])
        return loss, logits, labels

    def _prediction_loop(
        self, dataloader: Any, ignore_keys: list[str] | None, prefix: str, keep_predictions: bool,
    ) -> tuple[PredictionOutput, int]:
        """Run the model over ``dataloader``, firing ``on_prediction_step`` after each batch; returns the
        output (predictions, labels, prefixed metrics) and the number of samples all processes saw.

        Under torchrun every process's per-batch results are gathered once, after the loop (the loop runs
        no collective, so processes with different numbers of batches cannot wait on each other), put
        back in dataset order, and the loss is averaged in that order: N processes report the same
        loss, metrics and predictions as one process reading the whole dataset.
        """
        handler = self.callback_handler
        handler.eval_dataloader = dataloader
        if self.args.fsdp and not fsdp.is_sharded(self.model):
            self.model.to(self.device)  # evaluated before training: not sharded yet, still where it was built
        model = self.model
        was_training = model.training
        model.eval()
        losses: list[torch.Tensor | None] = []  # per batch, left on the device until the loop ends
        sizes: list[int] = []
        predictions: list[Any] = []
        labels: list[Any] = []
        try:
            for inputs in self._eval_batches(dataloader):
                loss, logits, label = self.prediction_step(model, inputs, ignore_keys)
                sizes.append(self._batch_size(inputs))
                if loss is not None and not isinstance(loss, torch.Tensor):  # a number from compute_loss
                    loss = torch.tensor(float(loss), device=self.device)
                losses.append(None if loss is None else loss.detach().double().mean())
                predictions.append(_to_numpy(logits) if keep_predictions else None)
                labels.append(_to_numpy(label) if keep_predictions else None)
                self.control = handler.on_prediction_step(self.args, self.state, self.control)
        finally:
            if was_training:
                model.train()
        present = [value for value in losses if value is not None]
        values = iter(torch.stack(present).cpu().tolist() if present else [])
        batches = [
            (None if value is None else next(values), size, pred, label)
            for value, size, pred, label in zip(losses, sizes, predictions, labels)
        ]
        shares = all_gather_objects(batches)
        if isinstance(getattr(dataloader, "dataset", None), IterableDatasetShard):
            # a split stream: batch k of process r is batch k * world_size + r of the whole stream
            ordered = [share[k] for k in range(max(map(len, shares))) for share in shares if k < len(share)]
        else:  # contiguous ranges, in rank order
            ordered = [batch for share in shares for batch in share]
        loss_sum, loss_count, num_samples = 0.0, 0, 0
        for value, size, _, _ in ordered:
            num_samples += size
            if value is not None:
                loss_sum += value * size
                loss_count += size
        kept = [pred for _, _, pred, _ in ordered if pred is not None]
        kept_labels = [label for _, _, _, label in ordered if label is not None]
        preds = _concat(kept) if kept else None
        label_ids = _concat(kept_labels) if kept_labels else None
        metrics: dict[str, Any] = {}
        if self.compute_metrics is not None and preds is not None and label_ids is not None:
            computed = self.compute_metrics(EvalPrediction(preds, label_ids))
            metrics.update({k: (float(v) if hasattr(v, "__float__") and not isinstance(v, str) else v)
                            for k, v in (computed or {}).items()})
        if loss_count > 0:
            metrics["loss"] = loss_sum / loss_count
        prefixed = {
            (k if k.startswith(f"{prefix}_") else f"{prefix}_{k}"): v for k, v in metrics.items()
        }
        return PredictionOutput(preds, label_ids, prefixed), num_samples

    def _eval_batches(self, dataloader: Any) -> Iterator[Any]:
        """The batches of ``dataloader``. With FSDP every forward is a collective, so the processes agree
        before each batch whether any still has one, and a process that has run out repeats a forward on
        its last batch (results discarded) until all have."""
        if not (fsdp.is_sharded(self.model) and is_distributed()):
            yield from dataloader
            return
        iterator = iter(dataloader)
        last = None
        while True:
            inputs = next(iterator, None)
            if not any_process(inputs is not None, self.device):
                return
            if inputs is None:
                if last is None:  # this process's share is empty (the dataset is short)
                    last = self._padding_batch(dataloader)
                self.prediction_step(self.model, last, None)
                continue
            last = inputs
            yield inputs

    def _padding_batch(self, dataloader: Any) -> Any:
        """A batch of the dataset's first sample, for a process that must join a collective forward but
        has no evaluation data of its own (its result is discarded)."""
        dataset = dataloader.dataset
        if isinstance(dataset, IterableDatasetShard):
            dataset = dataset.dataset
        if has_length(dataset) and not isinstance(dataset, IterableDataset):
            sample = dataset[0] if len(dataset) else None
        else:
            sample = next(iter(dataset), None)
        if sample is None:
            raise ValueError("Trainer.evaluate()/predict() got an empty dataset; with fsdp every process must run "
                             "the same forwards, so there must be at least one sample")
        return self.data_collator([sample])

    @staticmethod
    def _batch_size(inputs: Any) -> int:
        values = inputs.values() if isinstance(inputs, Mapping) else [inputs]
        for value in values:
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.shape[0])
        return 1
