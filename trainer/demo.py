"""``tracklink demo``: train a small classifier on generated data and report to the embedded trackers.

The data are two interleaved spirals generated from a fixed seed (no download). The run evaluates
and saves every 50 steps, keeps the latest checkpoint and the best one, reports to TensorBoard event files
and a local MLflow store under the output directory (when those SDKs are installed), writes
``loss.png`` and prints where to look.

At every evaluation it also logs media values (:mod:`tracklink.media`) through ``compute_metrics``: the
evaluation set drawn as an image, each point coloured by the class the model predicts, mistakes in red
(``eval_predictions``; a picture of the decision the model learned, step by step), and a histogram of the
first layer's weights (``eval_hidden_weights``). TensorBoard shows them in its Images and Histograms tabs,
MLflow in the run's images (the histogram drawn as an image).

Two runs with the same arguments train identically: the seed (``TrainingArguments.seed``) is set before the
model is built, as transformers' examples do with ``set_seed``. The terminal stays readable: a local MLflow
store is created (with its "Creating initial MLflow database tables" lines) before the progress bar
starts, and tracklink's messages go through the bar's writer (``tracklink.log``).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracklink import EarlyStoppingCallback, Histogram, Image
from tracklink.registry import discover

from .arguments import TrainingArguments
from .trainer import Trainer, set_seed

__all__ = ["DemoMetrics", "SpiralClassifier", "SpiralDataset", "prediction_picture", "run_demo"]

logger = logging.getLogger("tracklink")


class SpiralDataset(torch.utils.data.Dataset):
    """Two interleaved noisy spirals in 2-D; items ``{"x": tensor[2], "labels": 0|1}``."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, 2, (size,), generator=generator)
        radius = torch.rand(size, generator=generator) * 3 + 0.3
        angle = radius * 2.2 + labels * math.pi
        noise = torch.randn(size, 2, generator=generator) * 0.12
        self.x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1) + noise
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"x": self.x[index], "labels": int(self.labels[index])}


class SpiralClassifier(nn.Module):
    """A two-hidden-layer MLP with a transformers-style ``config`` and output dict."""

    def __init__(self, hidden: int = 64, dropout: float = 0.05) -> None:
        super().__init__()
        self.config = {"model_type": "spiral-mlp", "hidden_size": hidden, "dropout": dropout, "num_labels": 2}
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.Tanh(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def accuracy(eval_pred: Any) -> dict[str, float]:
    predictions, labels = eval_pred
    return {"accuracy": float((predictions.argmax(-1) == labels).mean())}


#: Colours of the prediction picture: class 0, class 1, a mistake.
_COLOURS = ((31, 119, 180), (255, 127, 14), (214, 39, 40))


def prediction_picture(points: Any, predicted: Any, labels: Any, size: int = 192, span: float = 4.0) -> Any:
    """The evaluation points as an RGB ``size``x``size`` image (NumPy only): each a 3x3 dot coloured by its
    predicted class, red where the prediction is wrong."""
    import numpy as np

    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    pixels = np.clip(((np.asarray(points) + span) / (2 * span) * (size - 1)).round().astype(int), 1, size - 2)
    colours = np.asarray(_COLOURS, dtype=np.uint8)
    classes = np.where(np.asarray(predicted) == np.asarray(labels), np.asarray(predicted), 2)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            canvas[size - 1 - (pixels[:, 1] + dy), pixels[:, 0] + dx] = colours[classes]
    return canvas


class DemoMetrics:
    """``compute_metrics`` for the demo: accuracy, plus media values logged with every evaluation."""

    def __init__(self, model: nn.Module, dataset: SpiralDataset) -> None:
        self.model = model
        self.points = dataset.x.numpy()

    def __call__(self, eval_pred: Any) -> dict[str, Any]:
        predictions, labels = eval_pred
        predicted = predictions.argmax(-1)
        return {
            "accuracy": float((predicted == labels).mean()),
            "predictions": Image(prediction_picture(self.points, predicted, labels),
                                 caption="evaluation set: predicted class (blue 0, orange 1), mistakes red"),
            "hidden_weights": Histogram(self.model.net[0].weight, bins=40),  # copied off the device at log()
        }


def _default_trackers() -> list[str]:
    specs = discover()
    return [name for name in ("tensorboard", "mlflow") if name in specs and specs[name].availability() is None]


def _device_args(device: str | None) -> dict[str, Any]:
    if device is None:
        return {}
    if device == "cpu":
        return {"use_cpu": True}
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(f"tracklink demo: --device {device}: CUDA is not available here")
        if ":" in device:
            torch.cuda.set_device(int(device.split(":", 1)[1]))
        return {}
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise SystemExit("tracklink demo: --device mps: MPS is not available here")
        return {}
    raise SystemExit(f"tracklink demo: --device {device!r} is invalid; accepted: cpu, cuda, cuda:N, mps")


def _prepare_mlflow_store() -> None:
    """Create a local MLflow store and the experiment now, before the progress bar starts.

    MLflow creates a new SQLite store's tables on first use, printing a dozen lines and taking seconds;
    left to the tracker, that happens on its worker thread in the middle of the bar (and the first
    checkpoint waits for it). A remote tracking server has nothing to create. Failures are left to the
    tracker, which reports them in the usual way.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith("sqlite:"):
        return
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if name and client.get_experiment_by_name(name) is None:
            client.create_experiment(name)
    except Exception as exc:  # the tracker reports its own failure
        logger.debug("tracklink demo: preparing the MLflow store %s failed: %r", uri, exc)


def plot_losses(log_history: list[dict[str, Any]], path: Path) -> bool:
    """Write train and eval loss against the step; ``False`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("tracklink demo")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def run_demo(
    output_dir: str = "tracklink-demo",
    report_to: str | None = None,
    max_steps: int = 300,
    device: str | None = None,
    early_stopping: int | None = None,
) -> int:
    """Run the demo; returns the process exit status."""
    if max_steps < 1:
        raise SystemExit(f"tracklink demo: --max-steps {max_steps} is invalid; accepted: an integer >= 1")
    if early_stopping is not None and early_stopping < 1:
        raise SystemExit(f"tracklink demo: --early-stopping {early_stopping} is invalid; accepted: an integer >= 1")
    device_args = _device_args(device)  # before anything is created
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    trackers: Any = report_to if report_to is not None else (_default_trackers() or "none")
    if "mlflow" in (trackers if isinstance(trackers, list) else str(trackers).split(",")):
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "tracklink-demo")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = TrainingArguments(
        output_dir=str(out),
        report_to=trackers,
        max_steps=max_steps,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=256,
        learning_rate=1e-2,
        weight_decay=0.01,
        warmup_steps=0.05,
        logging_steps=10,
        eval_strategy="steps",
        eval_steps=50,
        save_steps=50,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        logging_dir=str(out / "runs" / "demo"),
        run_name="tracklink-demo",
        **device_args,
    )
    if "mlflow" in args.report_to:
        _prepare_mlflow_store()
    callbacks = [EarlyStoppingCallback(early_stopping)] if early_stopping else []
    set_seed(args.seed)  # before the model's weights are drawn: every run with the same arguments is the same
    model = SpiralClassifier()
    eval_dataset = SpiralDataset(1024, seed=2)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=SpiralDataset(4096, seed=1),
        eval_dataset=eval_dataset,
        compute_metrics=DemoMetrics(model, eval_dataset),
        callbacks=callbacks,
    )
    result = trainer.train()
    final = trainer.evaluate()
    plotted = plot_losses(trainer.state.log_history, out / "loss.png")

    lines = [
        "",
        f"tracklink demo finished: {result.global_step} steps, train loss {result.training_loss:.4f}, "
        f"eval loss {final['eval_loss']:.4f}, eval accuracy {final['eval_accuracy']:.3f}",
        f"  trackers:     {', '.join(args.report_to) or 'none'}",
        f"  checkpoints:  {out} (best: {trainer.state.best_model_checkpoint})",
    ]
    if plotted:
        lines.append(f"  loss curves:  {out / 'loss.png'}")
    else:
        lines.append('  loss curves:  not drawn (pip install matplotlib, or "tracklink[demo]")')
    failures = trainer.callback_handler.tracker_failures()
    for name, line in failures.items():
        lines.append(f"  {name} failed: {line}")
    if "tensorboard" in args.report_to and "tensorboard" not in failures:
        lines.append(f"  TensorBoard:  tensorboard --logdir {out / 'runs'}   (Images and Histograms tabs: "
                     "eval/predictions, eval/hidden_weights)")
    if "mlflow" in args.report_to and "mlflow" not in failures:
        lines.append(f"  MLflow UI:    mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']}")
    print("\n".join(lines), file=sys.stdout)
    return 0
