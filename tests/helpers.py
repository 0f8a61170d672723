"""Small models and datasets shared by the tests (the transformers test-suite conventions)."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from tracklink import TrainerCallback

T = TypeVar("T")


class RegressionDataset(torch.utils.data.Dataset):
    """``y = a*x + b + noise`` with ``length`` items ``{"input_x": x, "labels": y}`` (seeded)."""

    def __init__(self, a: float = 2.0, b: float = 3.0, length: int = 64, seed: int = 42, label_names=None):
        generator = torch.Generator().manual_seed(seed)
        self.length = length
        self.x = torch.randn(length, generator=generator)
        self.ys = a * self.x + b + torch.randn(length, generator=generator) * 0.1
        self.label_names = label_names or ["labels"]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"input_x": self.x[i]}
        for name in self.label_names:
            item[name] = self.ys[i]
        return item


@dataclasses.dataclass
class RegressionConfig:
    a: float = 0.0
    b: float = 0.0
    hidden_note: str = "regression"


class RegressionModel(nn.Module):
    """Learns ``a`` and ``b``; returns ``{"loss", "logits"}`` like a transformers model."""

    def __init__(self, a: float = 0.0, b: float = 0.0) -> None:
        super().__init__()
        self.config = RegressionConfig(a, b)
        self.a = nn.Parameter(torch.tensor(float(a)))
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, input_x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        y = input_x * self.a + self.b
        if labels is None:
            return {"logits": y}
        return {"loss": nn.functional.mse_loss(y, labels), "logits": y}


class ClassificationDataset(torch.utils.data.Dataset):
    """Two Gaussian blobs in ``features`` dimensions, items ``{"x": tensor, "labels": int}``."""

    def __init__(self, length: int = 64, features: int = 8, classes: int = 2, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, classes, (length,), generator=generator)
        centers = torch.randn(classes, features, generator=generator) * 2
        self.x = centers[self.labels] + torch.randn(length, features, generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "labels": int(self.labels[i])}


class TinyClassifier(nn.Module):
    """An MLP with dropout (so RNG state matters) and a transformers-like ``config``."""

    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = {"features": features, "hidden": hidden, "classes": classes, "dropout": dropout}
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes)
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def accuracy(eval_pred: Any) -> dict[str, float]:
    predictions, labels = eval_pred
    return {"accuracy": float((predictions.argmax(-1) == labels).mean())}


# -- trackers -------------------------------------------------------------------------------------

#: Secrets planted in arguments, model config, a URL and the environment by :func:`make_trainer`
#: (``secrets=True``); none of them may appear in anything a tracker writes.
SECRET_ARG = "sk-arg-SECRET-5f1c9e2a"
SECRET_CONFIG = "pw-config-SECRET-7d2b4410"
SECRET_URL = "urlpass-SECRET-99ab31"
SECRET_ENV = "env-SECRET-c0ffee1234"
SECRETS = (SECRET_ARG, SECRET_CONFIG, SECRET_URL, SECRET_ENV)
SECRET_ENV_VAR = "TRACKLINK_TEST_API_KEY"


def _secret_args_class() -> Any:
    from tracklink.trainer import TrainingArguments

    @dataclasses.dataclass
    class SecretArgs(TrainingArguments):
        hub_token: str | None = None
        database_url: str | None = None

    return SecretArgs


def make_trainer(
    output_dir: Any,
    report_to: Any = "none",
    *,
    model: Any = None,
    callbacks: list[Any] | None = None,
    secrets: bool = False,
    train_length: int = 64,
    eval_length: int = 16,
    **overrides: Any,
) -> Any:
    """A ``Trainer`` on :class:`RegressionModel`: by default 20 steps of batch 8, logging every 5,
    evaluating and saving every 10, learning rate 0.1, progress bars off.

    With ``secrets=True`` the arguments carry ``hub_token`` and a database URL with a password, the
    model config a ``service_password``, the run name and a config note carry the value of the
    environment variable ``TRACKLINK_TEST_API_KEY`` (which the caller must set to ``SECRET_ENV``), and an
    ordinary ``learning_rate`` of 0.1 that must still reach the tracker.
    """
    import os

    from tracklink.trainer import Trainer, TrainingArguments

    settings: dict[str, Any] = dict(
        output_dir=str(output_dir), report_to=report_to, max_steps=20, per_device_train_batch_size=8,
        logging_steps=5, eval_strategy="steps", eval_steps=10, save_steps=10, learning_rate=0.1,
        disable_tqdm=True,
    )
    settings.update(overrides)
    model = model or RegressionModel()
    if secrets:
        assert os.environ.get(SECRET_ENV_VAR) == SECRET_ENV, f"set {SECRET_ENV_VAR}={SECRET_ENV} first"
        settings.setdefault("run_name", f"run-{SECRET_ENV}")
        args = _secret_args_class()(
            hub_token=SECRET_ARG, database_url=f"postgresql://trainer:{SECRET_URL}@db.internal:5432/runs",
            **settings,
        )
        model.config = {"a": 0.0, "b": 0.0, "service_password": SECRET_CONFIG, "note": f"key {SECRET_ENV}"}
    else:
        args = TrainingArguments(**settings)
    return Trainer(
        model=model, args=args, train_dataset=RegressionDataset(length=train_length),
        eval_dataset=RegressionDataset(length=eval_length, seed=7) if eval_length else None,
        callbacks=callbacks,
    )


def files_containing(root: Any, needles: tuple[str, ...] = SECRETS) -> list[str]:
    """Every file under ``root`` (binary-safe) that contains one of ``needles``."""
    from pathlib import Path

    hits = []
    for path in Path(root).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                if needle.encode() in data:
                    hits.append(f"{path}: {needle}")
    return hits


def assert_series(actual: list[tuple[int, float]], expected: list[tuple[int, float]], rel: float = 1e-5) -> None:
    """Same steps, values equal within ``rel`` (backends often store float32)."""
    import pytest

    assert [int(s) for s, _ in actual] == [int(s) for s, _ in expected], (actual, expected)
    assert [float(v) for _, v in actual] == pytest.approx([float(v) for _, v in expected], rel=rel)


def only_one(items: Sequence[T], describe: Callable[[T], Any] = repr) -> T:
    """The single item of ``items``; otherwise the assertion lists them, each as ``describe`` gives it."""
    assert len(items) == 1, [describe(item) for item in items]
    return items[0]


# -- user callbacks -------------------------------------------------------------------------------


class _StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


class _RaiseAt(TrainerCallback):
    def __init__(self, step: int, error: BaseException) -> None:
        self.step, self.error = step, error

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise self.error


def stop_at(step: int) -> TrainerCallback:
    """A user callback that stops training at the end of ``step`` (``control.should_training_stop``)."""
    return _StopAt(step)


def raise_at(step: int, error: BaseException) -> TrainerCallback:
    """A user callback that raises ``error`` at the end of ``step``; as in transformers, it propagates out
    of ``train()``."""
    return _RaiseAt(step, error)


_SLOW_TRAINING = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[2])
    from helpers import make_trainer

    class Slow:
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(0.05)
        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in logs:
                print("LOGGED", state.global_step, flush=True)

    make_trainer(sys.argv[1], json.loads(sys.argv[3]), callbacks=[Slow()], max_steps=2000, logging_steps=2,
                 eval_strategy="no", save_strategy="no", **json.loads(sys.argv[4])).train()
""")


@dataclasses.dataclass
class Terminated:
    """What :func:`sigterm_during_training` saw: the exit code, the steps whose loss was logged, the output."""

    returncode: int
    logged: list[int]
    output: str


def sigterm_during_training(tmp_path: Any, report_to: list[str], after: int = 5, timeout: float = 240,
                            **trainer_kwargs: Any) -> Terminated:
    """Train reporting to ``report_to`` in a subprocess (0.05 s a step, the loss logged every 2 steps, the
    process's environment inherited) and send it SIGTERM once ``after`` losses were logged."""
    script = Path(tmp_path) / "slow_train.py"
    script.write_text(_SLOW_TRAINING)
    tests = str(Path(__file__).resolve().parent)
    process = subprocess.Popen(
        [sys.executable, str(script), str(Path(tmp_path) / "out"), tests, json.dumps(report_to),
         json.dumps(trainer_kwargs)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    seen: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if sum(text.startswith("LOGGED") for text in seen) >= after:
                break
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = "".join(seen) + rest
    logged = [int(line.split()[1]) for line in output.splitlines() if line.startswith("LOGGED")]
    assert len(logged) >= after, output[-3000:]
    return Terminated(process.returncode, logged, output)
