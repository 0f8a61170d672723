"""A Lightning training script for ``test_lightning.py`` (run as a subprocess; ``test_lightning.py`` also
loads it as a module for its ``TinyModule``, ``SpyLogger`` and data).

    python lightning_script.py --dir RUN_DIR [--loop trainer|fabric] [--mode finish|forever]
                               [--devices N] [--epochs N] [--report-to mlflow,...]

``trainer`` fits ``TinyModule`` with ``lightning.pytorch.Trainer(logger=TracklinkLogger(...))`` on CPU
(``--devices 2``: ``strategy="ddp"``, Lightning starts the second process itself); ``fabric`` runs a
hand-written loop with ``Fabric(loggers=[TracklinkLogger(...)])`` and ``fabric.log_dict``. After every
``log_metrics`` that reached the run the script prints ``LOGGED <step> <keys>``; ``forever`` trains (slowly)
until the process is stopped. At the end every process writes ``<dir>/rank-<rank>.json`` (whether it has a
run). The MLflow store is ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from tracklink.integrations.lightning import TracklinkLogger

SECRET = "sk-lightning-SECRET-6a1f3c"


def dataset(length: int = 32, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(length, 4, generator=generator)
    return TensorDataset(x, x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(length, 1, generator=generator))


def loaders(batch_size: int = 8) -> tuple[DataLoader, DataLoader]:
    return DataLoader(dataset(), batch_size=batch_size), DataLoader(dataset(16, seed=1), batch_size=8)


class TinyModule(pl.LightningModule):
    """A linear regression; ``fail_at`` raises in ``training_step`` at that batch, ``delay`` slows each step."""

    def __init__(self, lr: float = 0.1, api_key: str = SECRET, fail_at: int | None = None,
                 delay: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters("lr", "api_key")
        self.layer = torch.nn.Linear(4, 1)
        self.fail_at, self.delay = fail_at, delay

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError(f"planted failure at step {self.global_step}")
        if self.delay:
            time.sleep(self.delay)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class SpyLogger(TracklinkLogger):
    """Records what Lightning passed to ``log_metrics`` (and prints it for a parent process)."""

    def __init__(self, *args: Any, echo: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[Any, dict[str, float]]] = []
        self.echo = echo

    def log_metrics(self, metrics: Any, step: Any = None) -> None:
        super().log_metrics(metrics, step)
        if self.run is not None:  # rank 0
            self.calls.append((step, dict(metrics)))
            if self.echo:
                print("LOGGED", step, ",".join(sorted(metrics)), flush=True)


def trainer(logger: Any, **kwargs: Any) -> pl.Trainer:
    settings: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "max_epochs": 2, "log_every_n_steps": 1,
                                "enable_progress_bar": False, "enable_model_summary": False,
                                "enable_checkpointing": False, "num_sanity_val_steps": 0}
    settings.update(kwargs)
    return pl.Trainer(logger=logger, **settings)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--loop", choices=["trainer", "fabric"], default="trainer")
    parser.add_argument("--mode", choices=["finish", "forever"], default="finish")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--report-to", default="mlflow")
    args = parser.parse_args()

    logger = SpyLogger(report_to=args.report_to.split(","), project="lightning-script", name="script",
                       dir=args.dir, echo=True)
    forever = args.mode == "forever"
    if args.loop == "trainer":
        strategy = {"strategy": "ddp"} if args.devices > 1 else {}
        fit = trainer(logger, devices=args.devices, max_epochs=1000 if forever else args.epochs, **strategy)
        fit.fit(TinyModule(delay=0.05 if forever else 0.0), *loaders())
        rank = fit.global_rank
    else:
        from lightning.fabric import Fabric

        fabric = Fabric(accelerator="cpu", devices=1, loggers=[logger])
        logger.log_hyperparams({"lr": 0.1, "api_key": SECRET})
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer = fabric.setup(model, optimizer)
        step = 0
        while forever or step < 5:
            x, y = torch.randn(8, 4), torch.randn(8, 1)
            loss = torch.nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            fabric.log_dict({"loss": 1.0 / (step + 1)}, step=step)
            step += 1
            time.sleep(0.05 if forever else 0.0)
        logger.finalize("success")
        rank = fabric.global_rank
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    (Path(args.dir) / f"rank-{rank}.json").write_text(json.dumps(
        {"rank": rank, "has_run": logger.run is not None, "pid": os.getpid()}))


if __name__ == "__main__":
    main()
