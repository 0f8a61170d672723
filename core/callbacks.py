"""Built-in callbacks: printing and progress bars, and early stopping."""

from __future__ import annotations

import logging
from typing import Any

from .callback import TrainerCallback

logger = logging.getLogger("tracklink")

__all__ = ["EarlyStoppingCallback", "PrinterCallback", "ProgressCallback"]


def _format_logs(logs: dict[str, Any], max_str_len: int | None = None) -> dict[str, Any]:
    """A display copy of ``logs``: floats to 4 significant digits, long strings elided, no
    ``total_flos``. The caller's dict is never modified."""
    shown: dict[str, Any] = {}
    for key, value in logs.items():
        if key == "total_flos":
            continue
        if isinstance(value, str) and max_str_len is not None and len(value) > max_str_len:
            value = (
                f"[String too long to display, length: {len(value)} > {max_str_len}. "
                "Consider increasing `max_str_len` if needed.]"
            )
        elif isinstance(value, float):
            value = f"{value:.4g}"
        shown[key] = value
    return shown


class PrinterCallback(TrainerCallback):
    """Prints each log on the node-local main process (used when ``disable_tqdm`` is set).

    Unlike transformers' version it prints a copy without ``total_flos`` and leaves the shared
    ``logs`` dict untouched, so later callbacks still see every key.
    """

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if state.is_local_process_zero and logs is not None:
            print(_format_logs(logs))


class ProgressCallback(TrainerCallback):
    """tqdm progress bars for training and evaluation on the world main process.

    The training bar starts at the restored step when training resumes. Logs are written through tqdm
    while a training bar is open (a standalone ``evaluate()`` prints nothing).
    """

    def __init__(self, max_str_len: int = 100) -> None:
        self.training_bar: Any = None
        self.prediction_bar: Any = None
        self.current_step = 0
        self.max_str_len = max_str_len

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.current_step = state.global_step
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.training_bar = tqdm(
                total=state.max_steps, initial=state.global_step, dynamic_ncols=True
            )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.update(state.global_step - self.current_step)
        self.current_step = state.global_step

    def on_prediction_step(self, args: Any, state: Any, control: Any, eval_dataloader: Any = None,
                           **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        try:
            total = len(eval_dataloader)
        except TypeError:
            return
        if self.prediction_bar is None:
            from tqdm.auto import tqdm

            self.prediction_bar = tqdm(
                total=total, leave=self.training_bar is None, dynamic_ncols=True
            )
        self.prediction_bar.update(1)

    def _close_prediction_bar(self) -> None:
        if self.prediction_bar is not None:
            self.prediction_bar.close()
            self.prediction_bar = None

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._close_prediction_bar()

    def on_predict(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        self._close_prediction_bar()

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs is not None:
            self.training_bar.write(str(_format_logs(logs, self.max_str_len)))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None

    on_exception = on_train_end


class EarlyStoppingCallback(TrainerCallback):
    """Stops training when ``metric_for_best_model`` has not improved for ``early_stopping_patience``
    evaluations in a row (transformers v5 semantics).

    An evaluation improves when there is no best value yet, or when the value is better than
    ``state.best_metric`` (``greater_is_better`` decides the direction) by more than
    ``early_stopping_threshold``. The trainer updates ``best_metric`` after every evaluation, so the
    callback works whatever the save cadence. Its patience counter is saved in checkpoints.
    """

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float | None = 0.0):
        if isinstance(early_stopping_patience, bool) or not isinstance(early_stopping_patience, int) \
                or early_stopping_patience < 1:
            raise ValueError(
                f"early_stopping_patience={early_stopping_patience!r} is invalid; expected an integer >= 1"
            )
        threshold = 0.0 if early_stopping_threshold is None else early_stopping_threshold
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not threshold >= 0:
            raise ValueError(
                f"early_stopping_threshold={early_stopping_threshold!r} is invalid; expected a number >= 0"
            )
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = float(threshold)
        self.early_stopping_patience_counter = 0

    def check_metric_value(self, args: Any, state: Any, control: Any, metric_value: float) -> None:
        better = (lambda a, b: a > b) if args.greater_is_better else (lambda a, b: a < b)
        if state.best_metric is None or (
            better(metric_value, state.best_metric)
            and abs(metric_value - state.best_metric) > self.early_stopping_threshold
        ):
            self.early_stopping_patience_counter = 0
        else:
            self.early_stopping_patience_counter += 1

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.metric_for_best_model is None:
            raise ValueError(
                "EarlyStoppingCallback needs TrainingArguments.metric_for_best_model (for example "
                "'loss' or 'accuracy'); it is None"
            )
        if args.eval_strategy == "no":
            raise ValueError(
                "EarlyStoppingCallback needs evaluations, but eval_strategy='no'; set eval_strategy to "
                "'steps' or 'epoch'"
            )
        if not args.load_best_model_at_end:
            logger.warning(
                "EarlyStoppingCallback is used without load_best_model_at_end=True: training stops "
                "early, but the best model is not reloaded at the end."
            )

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        key = args.metric_for_best_model
        if not key.startswith("eval_"):
            key = f"eval_{key}"
        value = (metrics or {}).get(key)
        if value is None:
            logger.warning(
                "early stopping required metric_for_best_model, but did not find %s so early stopping "
                "is disabled (available: %s)", key, ", ".join(sorted(metrics or {})),
            )
            return
        self.check_metric_value(args, state, control, value)
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            control.should_training_stop = True

    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "early_stopping_patience": self.early_stopping_patience,
                "early_stopping_threshold": self.early_stopping_threshold,
            },
            "attributes": {"early_stopping_patience_counter": self.early_stopping_patience_counter},
        }
