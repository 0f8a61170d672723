"""The trainer's checkpoints: which one a resume starts from, writing one (every file renamed into place,
``trainer_state.json`` last), restoring one, rotation by ``save_total_limit`` and the best model at the end.

Functions given the trainer they work for; they never import the trainer module. The file formats are in
:mod:`tracklink.trainer.checkpoint`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from tracklink.atomic import atomic_write_text
from tracklink.redact import current_secrets, redact
from tracklink.shaping import plain_value
from tracklink.state import (
    HUB_STATE_KEY,
    INTERNAL_STATE_KEYS,
    TrainerControl,
    TrainerState,
    collect_states,
    state_key,
)
from tracklink.tracker import Tracker

from . import checkpoint as ckpt
from . import fsdp
from .data import has_length
from .distributed import barrier, unwrap_model

logger = logging.getLogger("tracklink")

__all__ = [
    "epoch_batches",
    "final_checkpoint_cleanup",
    "load_best_model_at_end",
    "load_model_state",
    "load_rng_state",
    "resolve_checkpoint",
    "restore_checkpoint",
    "rotate",
    "save_checkpoint",
    "save_model",
    "start_state",
    "stateful_objects",
]


def resolve_checkpoint(trainer: Any, resume: str | bool | None) -> Path | None:
    if resume is None or resume is False:
        return None
    if resume is True:
        found = ckpt.latest_checkpoint(trainer.args.output_dir)
        if found is None:
            present = ckpt.checkpoints(trainer.args.output_dir)
            detail = (f"; the {len(present)} checkpoint directories there are incomplete or damaged (see the "
                      "warnings above)") if present else ""
            raise ValueError(
                f"train(resume_from_checkpoint=True) found no valid checkpoint in output_dir "
                f"{trainer.args.output_dir!r} (a checkpoint-<step>/ with trainer_state.json){detail}"
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

def stateful_objects(trainer: Any) -> list[Any]:
    objects = []
    for callback in trainer.callback_handler.callbacks:
        if callable(getattr(callback, "state", None)):
            objects.append(callback)
    if trainer._search_context is not None:
        objects.append(trainer._search_context)
    objects.append(trainer.control)
    return objects

def save_checkpoint(trainer: Any) -> Path:
    run_dir = trainer._run_dir()
    directory = run_dir / f"{ckpt.PREFIX}-{trainer.state.global_step}"
    trainer.store_flos()
    main = trainer.process.is_world_main
    sharded = fsdp.is_sharded(trainer.model)
    if main:
        directory.mkdir(parents=True, exist_ok=True)
        stale = directory / ckpt.STATE_NAME
        if stale.exists():
            stale.unlink()
        if not sharded:
            warn_nonfinite_weights(trainer, directory)
            trainer.save_model(str(directory), _internal_call=True)
        if not trainer.args.save_only_model:
            if not sharded:
                ckpt.save_torch(trainer.optimizer.state_dict(), directory / ckpt.OPTIMIZER_NAME)
            ckpt.save_torch(trainer.lr_scheduler.state_dict(), directory / ckpt.SCHEDULER_NAME)
            if trainer.scaler is not None:
                ckpt.save_torch(trainer.scaler.state_dict(), directory / ckpt.SCALER_NAME)
        args_json = redact(plain_value(trainer.args.to_dict()), current_secrets())
        atomic_write_text(directory / ckpt.ARGS_NAME, json.dumps(args_json, indent=2, sort_keys=True) + "\n")
    barrier()
    if sharded:
        save_sharded(trainer, directory)
    if not trainer.args.save_only_model:
        ckpt.save_rng_state(directory, trainer.process.rank, trainer.process.world_size)
    best_step = trainer.state.best_global_step
    if best_step is not None:
        best_dir = run_dir / f"{ckpt.PREFIX}-{best_step}"
        if best_dir.is_dir():
            trainer.state.best_model_checkpoint = str(best_dir)
    states = collect_states(stateful_objects(trainer))
    for key, entry in trainer.callback_handler.tracker_states().items():  # trackers in processes of their own too
        states.setdefault(key, entry)
    failures = trainer.callback_handler.tracker_failures()
    if failures:
        states[HUB_STATE_KEY] = {"args": {}, "attributes": {"tracker_failures": failures}}
    trainer.state.stateful_callbacks = states
    barrier()
    if main:
        trainer.state.save_to_json(str(directory / ckpt.STATE_NAME))
        rotate(trainer)
    barrier()
    return directory

def warn_nonfinite_weights(trainer: Any, directory: Path) -> None:
    """Warn when the weights being checkpointed hold NaN/inf (one host read for all parameters)."""
    named = [(n, p) for n, p in unwrap_model(trainer.model).named_parameters() if p.numel()]
    if not named:
        return
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).tolist()
    bad = [name for (name, _), ok in zip(named, finite) if not ok]
    if bad:
        logger.warning(
            "tracklink: %s is saved with NaN/inf weights in %d parameter(s) (%s%s); resuming from it continues "
            "from broken weights", directory.name, len(bad), ", ".join(bad[:3]), ", ..." if len(bad) > 3 else "",
        )

def rotate(trainer: Any) -> None:
    """Delete checkpoints beyond ``save_total_limit``; one a tracker still needs is kept until a later
    rotation (never waiting for the tracker)."""
    handler = trainer.callback_handler
    ckpt.rotate_checkpoints(
        trainer._run_dir(), trainer.args.save_total_limit, trainer.state.best_model_checkpoint,
        in_use=lambda path: handler.checkpoint_in_use(str(path)),
    )

def save_sharded(trainer: Any, directory: Path) -> None:
    """FSDP: every process writes its shards with ``torch.distributed.checkpoint``; the consolidated
    ``model.safetensors`` is written too with ``save_only_model`` and at the end of training."""
    final = trainer.control.should_training_stop or trainer.state.global_step >= trainer.state.max_steps
    if trainer.args.save_only_model or final:
        trainer.save_model(str(directory), _internal_call=True)
    elif trainer.process.is_world_main:
        ckpt.save_config(unwrap_model(trainer.model), directory)
    if not trainer.args.save_only_model:
        fsdp.save_sharded(trainer.model, trainer.optimizer, directory)

def load_model_state(trainer: Any, directory: Path) -> None:
    """Load a checkpoint's weights: the sharded ``pytorch_model_fsdp_0/`` when present (into a sharded
    or plain model), else ``model.safetensors``."""
    if fsdp.is_sharded_checkpoint(directory):
        fsdp.load_sharded_model(trainer.model, directory)
    elif fsdp.is_sharded(trainer.model):
        fsdp.load_full_weights(trainer.model, directory / ckpt.WEIGHTS_NAME)
    else:
        ckpt.load_model_weights(unwrap_model(trainer.model), directory)

def restore_checkpoint(trainer: Any, directory: Path, updates_per_epoch: int) -> tuple[int, int]:
    """Load optimizer, scheduler, scaler and ``trainer_state.json`` from a complete checkpoint; returns
    ``(epochs_trained, updates done in the current epoch)``. RNG states are restored by the loop."""
    if not trainer.args.save_only_model:
        optimizer_file = directory / ckpt.OPTIMIZER_NAME
        if fsdp.load_sharded_optimizer(trainer.model, trainer.optimizer, directory):
            pass
        elif optimizer_file.is_file() and fsdp.is_sharded(trainer.model):
            raise ValueError(
                f"resume_from_checkpoint={str(directory)!r} was saved without FSDP: its {ckpt.OPTIMIZER_NAME} "
                f"cannot be loaded into the sharded optimizer of TrainingArguments.fsdp={' '.join(trainer.args.fsdp)!r}; "
                "resume without fsdp, or load only the weights (a directory with model.safetensors and no "
                "trainer_state.json starts a fresh optimizer)"
            )
        elif optimizer_file.is_file():
            trainer.optimizer.load_state_dict(ckpt.load_torch(optimizer_file, map_location=trainer.device))
        scheduler_file = directory / ckpt.SCHEDULER_NAME
        if scheduler_file.is_file():
            trainer.lr_scheduler.load_state_dict(ckpt.load_torch(scheduler_file))
        scaler_file = directory / ckpt.SCALER_NAME
        if trainer.scaler is not None and scaler_file.is_file():
            trainer.scaler.load_state_dict(ckpt.load_torch(scaler_file))
    state_file = directory / ckpt.STATE_NAME
    if state_file.is_file():
        loaded = TrainerState.load_from_json(str(state_file))
        for name in ("logging_steps", "eval_steps", "save_steps"):
            if getattr(loaded, name) != getattr(trainer.state, name):
                logger.warning(
                    "tracklink: %s in the checkpoint (%s) differs from the current run (%s); using the "
                    "checkpoint's", name, getattr(loaded, name), getattr(trainer.state, name),
                )
        if loaded.train_batch_size is not None and loaded.train_batch_size != trainer.args.per_device_train_batch_size:
            logger.warning(
                "tracklink: per_device_train_batch_size changed from %s to %s since the checkpoint",
                loaded.train_batch_size, trainer.args.per_device_train_batch_size,
            )
        loaded.is_hyper_param_search = trainer.state.is_hyper_param_search
        loaded.trial_name, loaded.trial_params = trainer.state.trial_name, trainer.state.trial_params
        if loaded.best_model_checkpoint and not Path(loaded.best_model_checkpoint).is_dir():
            logger.warning("tracklink: best checkpoint %s no longer exists; forgetting it", loaded.best_model_checkpoint)
            loaded.best_model_checkpoint = None
        trainer.state = loaded
        restore_stateful(trainer, loaded.stateful_callbacks)
    trainer.current_flos = 0.0
    global_step = trainer.state.global_step
    return global_step // updates_per_epoch, global_step % updates_per_epoch

def load_rng_state(trainer: Any, directory: Path) -> None:
    if not trainer.args.save_only_model:
        ckpt.load_rng_state(directory, trainer.process.rank, trainer.process.world_size)

def restore_stateful(trainer: Any, saved: dict[str, Any]) -> None:
    """When ``restore_callback_states_from_checkpoint``, rebuild stateful callbacks in place."""
    handler = trainer.callback_handler
    by_key: dict[str, list[Any]] = {}
    for callback in handler.callbacks:
        by_key.setdefault(state_key(callback), []).append(callback)
    # trackers need nothing here: on_train_begin gets the restored state, with their run identity
    if not trainer.args.restore_callback_states_from_checkpoint:
        return
    unmatched = []
    for key, entry in saved.items():
        entries = entry if isinstance(entry, list) else [entry]
        if key == "TrainerControl":
            trainer.control = TrainerControl.from_state(entries[0])
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

def load_best_model_at_end(trainer: Any) -> None:
    best = trainer.state.best_model_checkpoint
    if not (trainer.args.load_best_model_at_end and best):
        return
    barrier()
    if Path(best, ckpt.WEIGHTS_NAME).is_file() or fsdp.is_sharded_checkpoint(best):
        logger.info("tracklink: Loading best model from %s (score: %s).", best, trainer.state.best_metric)
        load_model_state(trainer, Path(best))
        if fsdp.is_sharded(trainer.model) and not Path(best, ckpt.WEIGHTS_NAME).is_file():
            trainer.save_model(best, _internal_call=True)  # the final model, consolidated (trackers upload it)
    else:
        logger.warning("tracklink: could not load the best model: %s has no %s", best, ckpt.WEIGHTS_NAME)

def final_checkpoint_cleanup(trainer: Any) -> None:
    best = trainer.state.best_model_checkpoint
    if trainer.args.save_total_limit != 1 or not best or not trainer.process.is_world_main:
        return
    others = [p for p in ckpt.checkpoints(trainer._run_dir()) if p.resolve() != Path(best).resolve()]
    if others and trainer.callback_handler.trackers_uploading():
        trainer.callback_handler.wait_for_trackers()
    for path in others:

        logger.info("tracklink: deleting checkpoint %s (save_total_limit=1 keeps only the best)", path)
        shutil.rmtree(path, ignore_errors=True)


def start_state(trainer: Any, plan: Any, trial: Any, checkpoint_dir: Path | None) -> tuple[int, int, Path | None]:
    """A fresh ``TrainerState`` for ``train()``, or the checkpoint's when resuming; returns ``(epochs trained,
    optimizer steps done in the current epoch, the checkpoint resumed from)`` (``None`` for weights only)."""
    trainer.state = TrainerState(
        stateful_callbacks=stateful_objects(trainer),
        is_local_process_zero=trainer.process.is_local_main,
        is_world_process_zero=trainer.process.is_world_main,
        train_batch_size=trainer.args.per_device_train_batch_size,
    )
    # ``trial`` is accepted for transformers compatibility (it reaches ``model_init``); a dict of
    # hyper-parameters (Ray/W&B style) is recorded as the trial's parameters
    trainer.state.is_hyper_param_search = trial is not None or trainer._trial_info is not None
    if trainer._trial_info is not None:
        trainer.state.trial_name = trainer._trial_info.name
        trainer.state.trial_params = plain_value(dict(trainer._trial_info.params))
    elif isinstance(trial, Mapping):
        trainer.state.trial_params = dict(trial)
    trainer.state.compute_steps(trainer.args, plan.max_steps)

    epochs_trained, steps_in_epoch_done = 0, 0
    if checkpoint_dir is not None and not (checkpoint_dir / ckpt.STATE_NAME).is_file():
        checkpoint_dir = None  # weights only (warned in resolve_checkpoint)
    if checkpoint_dir is not None:
        epochs_trained, steps_in_epoch_done = restore_checkpoint(
            trainer, checkpoint_dir, plan.updates_per_epoch)
    # tokens seen continue from the checkpoint; this call counts its own on top
    trainer._tokens_seen = 0
    trainer._tokens_seen_base = trainer.state.num_input_tokens_seen
    trainer.state.max_steps = plan.max_steps
    trainer.state.num_train_epochs = plan.num_train_epochs
    trainer.state.is_local_process_zero = trainer.process.is_local_main
    trainer.state.is_world_process_zero = trainer.process.is_world_main
    return epochs_trained, steps_in_epoch_done, checkpoint_dir


def epoch_batches(trainer: Any, loop: Any, epoch: int) -> tuple[Iterator[Any], int]:
    """The epoch's batch iterator, and how many batches a resumed epoch skips (those the checkpoint used): the
    first epoch of a resume continues where the checkpoint stopped, with the random states it saved."""
    dataloader, args = loop.dataloader, trainer.args
    sampler = getattr(dataloader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    elif not has_length(dataloader) and hasattr(getattr(dataloader, "dataset", None), "set_epoch"):
        dataloader.dataset.set_epoch(epoch)  # a stream that reshuffles per epoch
    skip_batches = 0
    resuming_epoch = epoch == loop.first_epoch and loop.checkpoint_dir is not None
    if resuming_epoch and loop.steps_in_epoch_done and not args.ignore_data_skip:
        skip_batches = loop.steps_in_epoch_done * loop.plan.ga
        if hasattr(sampler, "skip_next"):
            sampler.skip_next(skip_batches * args.per_device_train_batch_size)
    if resuming_epoch and not loop.steps_in_epoch_done:
        load_rng_state(trainer, loop.checkpoint_dir)  # the epoch starts afresh: as if it followed the save
    iterator = iter(dataloader)
    if skip_batches and not hasattr(sampler, "skip_next"):
        # length-less (iterable) data: consume the batches the checkpoint had already used
        for _ in range(skip_batches):
            if next(iterator, None) is None:
                break
    if resuming_epoch and loop.steps_in_epoch_done:
        # mid-epoch: creating the iterator drew from the global RNG (the DataLoader's base seed),
        # which the uninterrupted run did not do at this point; restore afterwards
        load_rng_state(trainer, loop.checkpoint_dir)
    return iterator, skip_batches


def save_model(trainer: Any, target: str) -> None:
    """``Trainer.save_model``: the unwrapped model's weights (gathered from every process under FSDP) and config,
    and the processing class when it can save itself."""
    if fsdp.is_sharded(trainer.model):
        weights = fsdp.full_state_dict(trainer.model)
        if not trainer.process.is_world_main:
            return
        ckpt.save_weights(unwrap_model(trainer.model), weights, target)
    elif not trainer.process.is_world_main:
        return
    else:
        ckpt.save_model(unwrap_model(trainer.model), target)
    save = getattr(trainer.processing_class, "save_pretrained", None)
    if callable(save):
        save(target)
