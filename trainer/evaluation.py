"""Evaluation and prediction: the data each process reads, the loop over it, and what the loop returns.

Functions given the trainer they work for (``Trainer.evaluate``, ``predict`` and ``get_eval_dataloader`` call
them); they use its pieces and the overridable ``prediction_step`` (whose work is :func:`predict_batch`),
and never import the trainer module. Under torchrun every process evaluates its own share and the shares are
gathered once, after the loop (see :func:`prediction_loop`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from . import fsdp
from .data import IterableDatasetShard, has_length
from .distributed import all_gather_objects, any_process, is_distributed
from .results import EvalPrediction, MissingMetricError, PredictionOutput, speed_metrics

__all__ = ["batch_size", "eval_dataloader", "loss_of", "metric_value", "prediction_loop", "resolve_eval_dataset", "speed", "update_best"]


def loss_of(outputs: Any) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get("loss")
    loss = getattr(outputs, "loss", None)
    if loss is not None:
        return loss
    if isinstance(outputs, (tuple, list)) and outputs:
        return outputs[0]
    return None


def logits_of(outputs: Any, has_loss: bool, ignore_keys: list[str]) -> Any:
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


def concat(chunks: list[Any]) -> Any:
    """Concatenate per-batch NumPy arrays along the first axis, padding other axes with -100."""
    import numpy as np

    if not chunks:
        return None
    if isinstance(chunks[0], tuple):
        return tuple(concat([c[i] for c in chunks]) for i in range(len(chunks[0])))
    if all(c.shape[1:] == chunks[0].shape[1:] for c in chunks):
        return np.concatenate(chunks, axis=0)
    shape = [sum(c.shape[0] for c in chunks)] + [max(c.shape[i] for c in chunks) for i in range(1, chunks[0].ndim)]
    out = np.full(shape, -100, dtype=chunks[0].dtype)
    row = 0
    for c in chunks:
        out[(slice(row, row + c.shape[0]), *(slice(0, n) for n in c.shape[1:]))] = c
        row += c.shape[0]
    return out


def to_numpy(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(to_numpy(v) for v in value)
    tensor = value.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.cpu().numpy()


def eval_dataloader(trainer: Any, eval_dataset: Any = None) -> Any:
    """A sequential DataLoader over ``eval_dataset`` (default: the trainer's; a string names one of the
    trainer's eval datasets), built at each evaluation or prediction.

    In distributed runs each process reads a share: a contiguous range of a sized dataset, or, for
    length-less (iterable) data, every ``world_size``-th batch of the stream
    (:class:`~tracklink.trainer.data.IterableDatasetShard` without completing the last chunk, so no
    sample is evaluated twice). The prediction loop gathers the shares back into dataset order.
    Processes may get different numbers of batches."""
    dataset = resolve_eval_dataset(trainer, eval_dataset)
    sampler = None
    batch_size = trainer.args.per_device_eval_batch_size
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
        collate_fn=trainer.data_collator, num_workers=trainer.args.dataloader_num_workers,
        pin_memory=trainer.args.dataloader_pin_memory and trainer.device.type == "cuda",
    )


def resolve_eval_dataset(trainer: Any, eval_dataset: Any) -> Any:
    if isinstance(eval_dataset, str):
        if not isinstance(trainer.eval_dataset, Mapping) or eval_dataset not in trainer.eval_dataset:
            names = ", ".join(map(repr, trainer.eval_dataset)) if isinstance(trainer.eval_dataset, Mapping) else "none"
            raise ValueError(f"eval_dataset={eval_dataset!r} names no eval dataset of this Trainer (names: {names})")
        return trainer.eval_dataset[eval_dataset]
    dataset = trainer.eval_dataset if eval_dataset is None else eval_dataset
    if dataset is None:
        raise ValueError("Trainer.evaluate() needs an eval_dataset (none was given to the Trainer or the call)")
    return dataset


def speed(trainer: Any, prefix: str, start: float, dataset: Any, num_samples: int) -> dict[str, float]:
    """Runtime and throughput of the evaluation/prediction begun at ``start``, over the dataset's length,
    or for length-less data over ``num_samples``, the samples all processes evaluated."""
    samples = len(dataset) if has_length(dataset) else num_samples
    total_batch = trainer.args.per_device_eval_batch_size * max(1, trainer.process.world_size)
    return speed_metrics(prefix, start, samples, math.ceil(samples / total_batch))


def predict_batch(trainer: Any, model: torch.nn.Module, inputs: Any, ignore_keys: list[str] | None) -> tuple[Any, Any, Any]:
    """``Trainer.prediction_step``'s work: loss (when labels are present), logits and labels of one batch,
    without gradients; the loss comes from ``trainer.compute_loss``, so an overridden one applies."""
    inputs = trainer._prepare_inputs(inputs)
    label_names = trainer.args.label_names or ["labels"]
    has_labels = isinstance(inputs, Mapping) and all(inputs.get(n) is not None for n in label_names)
    labels = None
    if has_labels:  # read before compute_loss, which may pop them (a common override pattern)
        labels = inputs[label_names[0]] if len(label_names) == 1 else tuple(inputs[n] for n in label_names)
    loss = None
    with torch.no_grad(), trainer._autocast():
        if has_labels:  # the loss is computed as in training, so an overridden compute_loss applies
            loss, outputs = trainer.compute_loss(model, inputs, return_outputs=True)
        else:
            outputs = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    if isinstance(loss, torch.Tensor):
        loss = loss.detach()
    logits = logits_of(outputs, has_labels and loss is not None, ignore_keys or [])
    return loss, logits, labels


def prediction_loop(
    trainer: Any, dataloader: Any, ignore_keys: list[str] | None, prefix: str, keep_predictions: bool,
) -> tuple[PredictionOutput, int]:
    """Run the model over ``dataloader``, firing ``on_prediction_step`` after each batch; returns the
    output (predictions, labels, prefixed metrics) and the number of samples all processes saw.

    Under torchrun every process's per-batch results are gathered once, after the loop (the loop runs
    no collective, so processes with different numbers of batches cannot wait on each other), put
    back in dataset order, and the loss is averaged in that order: N processes report the same
    loss, metrics and predictions as one process reading the whole dataset.
    """
    handler = trainer.callback_handler
    handler.eval_dataloader = dataloader
    if trainer.args.fsdp and not fsdp.is_sharded(trainer.model):
        trainer.model.to(trainer.device)  # evaluated before training: not sharded yet, still where it was built
    model = trainer.model
    was_training = model.training
    model.eval()
    losses: list[torch.Tensor | None] = []  # per batch, left on the device until the loop ends
    sizes: list[int] = []
    predictions: list[Any] = []
    labels: list[Any] = []
    try:
        for inputs in eval_batches(trainer, dataloader):
            loss, logits, label = trainer.prediction_step(model, inputs, ignore_keys)
            sizes.append(batch_size(inputs))
            if loss is not None and not isinstance(loss, torch.Tensor):  # a number from compute_loss
                loss = torch.tensor(float(loss), device=trainer.device)
            losses.append(None if loss is None else loss.detach().double().mean())
            predictions.append(to_numpy(logits) if keep_predictions else None)
            labels.append(to_numpy(label) if keep_predictions else None)
            trainer.control = handler.on_prediction_step(trainer.args, trainer.state, trainer.control)
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
    preds = concat(kept) if kept else None
    label_ids = concat(kept_labels) if kept_labels else None
    metrics: dict[str, Any] = {}
    if trainer.compute_metrics is not None and preds is not None and label_ids is not None:
        computed = trainer.compute_metrics(EvalPrediction(preds, label_ids))
        metrics.update({k: (float(v) if hasattr(v, "__float__") and not isinstance(v, str) else v)
                        for k, v in (computed or {}).items()})
    if loss_count > 0:
        metrics["loss"] = loss_sum / loss_count
    prefixed = {
        (k if k.startswith(f"{prefix}_") else f"{prefix}_{k}"): v for k, v in metrics.items()
    }
    return PredictionOutput(preds, label_ids, prefixed), num_samples


def eval_batches(trainer: Any, dataloader: Any) -> Iterator[Any]:
    """The batches of ``dataloader``. With FSDP every forward is a collective, so the processes agree
    before each batch whether any still has one, and a process that has run out repeats a forward on
    its last batch (results discarded) until all have."""
    if not (fsdp.is_sharded(trainer.model) and is_distributed()):
        yield from dataloader
        return
    iterator = iter(dataloader)
    last = None
    while True:
        inputs = next(iterator, None)
        if not any_process(inputs is not None, trainer.device):
            return
        if inputs is None:
            if last is None:  # this process's share is empty (the dataset is short)
                last = padding_batch(trainer, dataloader)
            trainer.prediction_step(trainer.model, last, None)
            continue
        last = inputs
        yield inputs


def padding_batch(trainer: Any, dataloader: Any) -> Any:
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
    return trainer.data_collator([sample])


def batch_size(inputs: Any) -> int:
    values = inputs.values() if isinstance(inputs, Mapping) else [inputs]
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1


def metric_value(args: Any, metrics: dict[str, float]) -> float:
    """The value of ``metric_for_best_model`` (default ``loss``; with or without ``eval_``) in ``metrics``."""
    key = args.metric_for_best_model or "loss"
    key = key if key.startswith("eval_") else f"eval_{key}"
    if key not in metrics:
        setting = args.metric_for_best_model
        what = f"TrainingArguments.metric_for_best_model={setting!r}" if setting is not None else \
            "The metric ReduceLROnPlateau steps on (metric_for_best_model, default 'loss')"
        raise MissingMetricError(
            f"{what} (looked up as {key!r}) is not among the evaluation metrics: "
            f"{', '.join(sorted(metrics))}. Set metric_for_best_model to one of them (without or with the "
            "'eval_' prefix), or make compute_metrics return it"
        )
    return float(metrics[key])


def update_best(state: Any, args: Any, metrics: dict[str, float]) -> bool:
    """Record an evaluation in ``state.best_metric``/``best_global_step`` when it is the best so far; returns
    whether it is (always ``False`` without ``metric_for_best_model``)."""
    if args.metric_for_best_model is None:
        return False
    value = metric_value(args, metrics)
    best = state.best_metric
    if best is None or (value > best if args.greater_is_better else value < best):
        state.best_metric = value
        state.best_global_step = state.global_step
        return True
    return False
