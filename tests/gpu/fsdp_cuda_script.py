"""Training runs for tests/gpu/test_cuda.py, launched with ``python -m torch.distributed.run``.

Usage: ``fsdp_cuda_script.py ROOT TESTS_DIR RUNS_JSON`` where RUNS_JSON is a list of runs, each
``{"name", "fsdp", "bf16", "steps", "stop_at", "resume"}``. Every process writes
``ROOT/<name>-rank<rank>.json`` (log history, global step, devices, process group backend).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

ROOT, TESTS = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(TESTS))

from helpers import ClassificationDataset, TinyClassifier  # noqa: E402
from tracklink import TrainerCallback  # noqa: E402
from tracklink.trainer import Trainer, TrainingArguments  # noqa: E402

RANK = int(os.environ["RANK"])


class Observe(TrainerCallback):
    """Stops after the checkpoint of step ``stop_at``; records the process group's backend."""

    def __init__(self, stop_at: int | None) -> None:
        self.stop_at = stop_at
        self.backend: str | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.backend = str(dist.get_backend()) if dist.is_initialized() else None

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stop_at is not None and state.global_step == self.stop_at:
            control.should_training_stop = True


def train(name: str, fsdp: str = "", bf16: bool = False, steps: int = 6, stop_at: int | None = None,
          resume: bool = False) -> None:
    observe = Observe(stop_at)
    args = TrainingArguments(
        output_dir=str(ROOT / name), report_to="none", disable_tqdm=True, max_steps=steps,
        per_device_train_batch_size=4, logging_steps=1, save_steps=2, learning_rate=0.05, seed=5,
        bf16=bf16, fsdp=fsdp or None,
        fsdp_config={"transformer_layer_cls_to_wrap": ["Linear"]} if fsdp else None,
    )
    trainer = Trainer(model_init=lambda: TinyClassifier(dropout=0.3), args=args,
                      train_dataset=ClassificationDataset(length=48), callbacks=[observe])
    trainer.train(resume_from_checkpoint=True if resume else None)
    param = next(trainer.model.parameters())
    local = param.to_local() if hasattr(param, "to_local") else param
    out = {
        "log_history": trainer.state.log_history,
        "global_step": trainer.state.global_step,
        "device": str(trainer.args.device),
        "param_type": type(param).__name__,
        "param_device": local.device.type,
        "param_dtype": str(local.dtype),
        "backend": observe.backend,
        "cuda_memory_allocated": torch.cuda.memory_allocated(),
    }
    (ROOT / f"{name}-rank{RANK}.json").write_text(json.dumps(out))


for run in json.loads(sys.argv[3]):
    train(**run)
