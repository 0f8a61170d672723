"""What the ``Trainer`` refuses when it is built, before any training step: an output directory that cannot
hold checkpoints, empty data, a ``metric_for_best_model`` no evaluation can produce."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .data import has_length
from .results import MissingMetricError

__all__ = [
    "check_best_metric", "check_eval_dataset", "check_output_dir", "check_setup", "check_train_dataset",
]

_PLAIN_EVAL_METRICS = ("loss", "runtime", "samples_per_second", "steps_per_second")


def check_output_dir(output_dir: str) -> None:
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


def check_train_dataset(dataset: Any) -> None:
    if dataset is not None and has_length(dataset) and len(dataset) == 0:
        raise ValueError("train_dataset is empty (len() == 0): there is nothing to train on. Pass a dataset with "
                         "samples, or leave train_dataset=None to only evaluate or predict")


def check_eval_dataset(dataset: Any, args: Any) -> None:
    parts = dataset.items() if isinstance(dataset, Mapping) else [(None, dataset)]
    for name, part in parts:
        if part is not None and has_length(part) and len(part) == 0:
            which = f"eval_dataset[{name!r}]" if name is not None else "eval_dataset"
            raise ValueError(f"{which} is empty (len() == 0): an evaluation would measure nothing "
                             f"(eval_strategy={args.eval_strategy!r}). Pass samples, or leave it out")


def check_best_metric(args: Any, eval_dataset: Any, compute_metrics: Any, custom_evaluation: bool) -> None:
    """``metric_for_best_model`` must be a metric some evaluation produces. Without ``compute_metrics`` (and
    with the stock evaluation loop: ``custom_evaluation`` is false) evaluations produce only the loss and the
    speed metrics."""
    name = args.metric_for_best_model
    if name is None or compute_metrics is not None or custom_evaluation:
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


def check_setup(args: Any, model: Any, model_init: Any, train_dataset: Any, eval_dataset: Any, compute_metrics: Any,
                custom_evaluation: bool) -> None:
    """Everything ``Trainer(...)`` refuses about its arguments and data."""
    if model is None and model_init is None:
        raise ValueError("Trainer needs a model or a model_init function; both are None")
    if args.eval_strategy != "no" and eval_dataset is None:
        raise ValueError(
            f"TrainingArguments.eval_strategy={args.eval_strategy!r} needs an eval_dataset, but none was given "
            "(pass eval_dataset=..., or set eval_strategy='no')"
        )
    if args.load_best_model_at_end and eval_dataset is None:
        raise ValueError("load_best_model_at_end=True needs an eval_dataset")
    check_output_dir(args.output_dir)
    check_train_dataset(train_dataset)
    check_eval_dataset(eval_dataset, args)
    check_best_metric(args, eval_dataset, compute_metrics, custom_evaluation)
