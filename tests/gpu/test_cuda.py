"""GPU-only checks (``pytest -m gpu``; benchmarks/gpu_check.sh runs them on a lent CUDA machine).

Every test here skips without CUDA: the CPU suites test the same logic through seams (fp16 on CPU,
sync counting by patching ``Tensor.item`` & co., FSDP over gloo); these run it on a real device.

Bad behaviours caught:
- fp16 on CUDA not skipping an overflowing step, not counting it in ``skipped_optimizer_steps``, not
  writing ``scaler.pt`` or not restoring it on resume (the resumed run differs from the uninterrupted one);
- bf16 with ``torch_compile=True`` (inductor, Triton) failing to train, training something else than the
  eager bf16 run, the forward not running in bfloat16, or ``_orig_mod.`` prefixes in ``model.safetensors``;
- a host-device synchronisation inside a training step that does not log (bf16, gradient accumulation),
  caught by CUDA's own sync debug mode rather than by patched Python methods;
- FSDP (``full_shard``, ``full_shard offload``) with bf16 under torchrun on CUDA failing to train,
  checkpoint or resume, not offloading, or (two GPUs) computing other losses than DDP.

Host-to-device copies of the batches: the loop fetches a batch (``_next_group``: the DataLoader pins it)
before ``on_step_begin``, and ``training_step`` moves it with ``Tensor.to(device, non_blocking=True)``
(trainer/data.py ``move_to_device``). In torch's CUDA copy kernel only a blocking copy goes through
``memcpy_and_sync``, which calls ``warn_or_error_on_sync`` (c10/cuda/CUDAFunctions.h); a
``non_blocking`` copy is a ``cudaMemcpyAsync`` and is not flagged. So the sync debug mode may stay on
for the whole step, input copies included: a blocking ``.to(device)`` of the inputs would be caught.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent.parent
if str(TESTS_DIR / "trainer") not in sys.path:
    sys.path.insert(0, str(TESTS_DIR / "trainer"))

from trainer_testlib import (  # noqa: E402
    CheckpointableClassifier,
    LossReadingClassifier,
    OverflowDataset,
    OverflowingRegressor,
    StopAfterSaveAt,
    WeightsPerStep,
    checkpoint_names,
    checkpoint_weights,
    comparable_history,
    same_weights,
    weights_of,
)

from helpers import ClassificationDataset, TinyClassifier  # noqa: E402
from tracklink import TrainerCallback  # noqa: E402
from tracklink.trainer import Trainer, TrainingArguments  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def train_losses(history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in history if "loss" in e]


# -- 1. fp16: loss scaling, skipped steps, scaler.pt, exact resume ---------------------------------------

# 32 items in batches of 4, shuffled by the seed on the host (the same order as on CPU): items 7 and 22
# make the batches of steps 2 and 5 (first epoch) and 10 and 13 (second epoch) overflow
OVERFLOWING = (7, 22)
SKIPPED = [2, 5, 10, 13]


def fp16_trainer(output_dir: Path, callbacks: list[Any] | None = None, **overrides: Any) -> Trainer:
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir), report_to="none", disable_tqdm=True, fp16=True, max_steps=14,
        per_device_train_batch_size=4, logging_steps=3, save_steps=6, learning_rate=0.05, seed=1,
    )
    settings.update(overrides)
    return Trainer(model_init=lambda: OverflowingRegressor(), args=TrainingArguments(**settings),
                   train_dataset=OverflowDataset(overflowing=OVERFLOWING), callbacks=callbacks)


def test_fp16_skips_overflowing_steps_on_cuda(tmp_path: Path) -> None:
    weights = WeightsPerStep()
    trainer = fp16_trainer(tmp_path, callbacks=[weights], save_strategy="no")
    output = trainer.train()
    model = trainer.model
    assert isinstance(model, OverflowingRegressor)
    assert next(model.parameters()).device.type == "cuda"
    assert set(model.output_dtypes) == {torch.float16}  # CUDA autocast ran the linear layer in fp16
    assert [i + 1 for i, flag in enumerate(model.overflow_flags) if bool(flag)] == SKIPPED
    for step in range(1, 15):  # a skipped step leaves the weights alone, every other one changes them
        assert same_weights(weights.weights[step - 1], weights.weights[step]) == (step in SKIPPED), step
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [(e["step"], e["skipped_optimizer_steps"]) for e in logs] == [(3, 1), (6, 1), (9, 0), (12, 1)]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in logs)
    assert output.metrics["train_skipped_optimizer_steps"] == 4
    assert trainer.lr_scheduler.last_epoch == 14 - 4
    assert trainer.scaler.get_scale() == 65536.0 * 0.5**4


def test_fp16_checkpoint_holds_the_scaler_and_resumes_exactly_on_cuda(tmp_path: Path) -> None:
    full = fp16_trainer(tmp_path / "full")
    full.train()

    first = fp16_trainer(tmp_path / "split", callbacks=[StopAfterSaveAt(6)])
    first.train()
    assert checkpoint_names(tmp_path / "split") == ["checkpoint-6"]
    checkpoint = tmp_path / "split" / "checkpoint-6"
    assert (checkpoint / "scaler.pt").is_file()
    saved = torch.load(checkpoint / "scaler.pt", weights_only=True)
    assert saved["scale"] == 65536.0 * 0.5**2  # steps 2 and 5 skipped before the checkpoint
    assert saved == first.scaler.state_dict()

    resumed = fp16_trainer(tmp_path / "split")
    output = resumed.train(resume_from_checkpoint=True)
    assert same_weights(weights_of(full.model), weights_of(resumed.model))
    assert comparable_history(resumed.state.log_history) == comparable_history(full.state.log_history)
    assert resumed.scaler.state_dict() == full.scaler.state_dict()  # a fresh scaler would be at 65536 / 4
    assert output.metrics["train_skipped_optimizer_steps"] == 2  # steps 10 and 13, run by this call


# -- 2. bf16 + torch.compile (inductor) ---------------------------------------------------------------


class DtypeRecordingTrainer(Trainer):
    """Records the dtype of the (compiled) model's logits, outside the compiled region (recording inside
    the model would be a side effect for dynamo to trace)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logit_dtypes: set[torch.dtype] = set()

    def compute_loss(self, model: torch.nn.Module, inputs: Any, return_outputs: bool = False) -> Any:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        if model.training:
            self.logit_dtypes.add(outputs["logits"].dtype)
        return (loss, outputs) if return_outputs else loss


def bf16_trainer(output_dir: Path, **overrides: Any) -> DtypeRecordingTrainer:
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir), report_to="none", disable_tqdm=True, bf16=True, max_steps=6,
        per_device_train_batch_size=4, dataloader_drop_last=True, logging_steps=2, save_steps=6,
        learning_rate=0.05, seed=3,
    )
    settings.update(overrides)
    return DtypeRecordingTrainer(model_init=lambda: CheckpointableClassifier(), args=TrainingArguments(**settings),
                                 train_dataset=ClassificationDataset(length=24))


def test_bf16_with_inductor_compile_on_cuda(tmp_path: Path) -> None:
    eager = bf16_trainer(tmp_path / "eager")
    eager.train()
    compiled = bf16_trainer(tmp_path / "compiled", torch_compile=True)
    assert compiled.args.torch_compile_backend == "inductor"
    compiled.train()

    assert compiled.state.global_step == 6
    assert getattr(compiled.model_wrapped, "_orig_mod", None) is compiled.model
    assert next(compiled.model.parameters()).device.type == "cuda"
    assert next(compiled.model.parameters()).dtype == torch.float32  # autocast: the weights stay float32
    assert compiled.logit_dtypes == eager.logit_dtypes == {torch.bfloat16}
    saved = checkpoint_weights(tmp_path / "compiled" / "checkpoint-6")
    assert set(saved) == set(compiled.model.state_dict())
    assert not any("_orig_mod" in key for key in saved)
    assert all(torch.equal(saved[k], v.cpu()) for k, v in compiled.model.state_dict().items())
    # the compiled model trains what the eager one trains (bf16 rounding differs between the kernels)
    compiled_losses, eager_losses = train_losses(compiled.state.log_history), train_losses(eager.state.log_history)
    assert [s for s, _ in compiled_losses] == [s for s, _ in eager_losses] == [2, 4, 6]
    assert all(abs(a - b) <= 5e-2 * max(1.0, abs(b)) for (_, a), (_, b) in zip(compiled_losses, eager_losses))


# -- 3. no host-device synchronisation on quiet steps (CUDA's sync debug mode) --------------------------


@pytest.fixture
def sync_debug_mode_restored() -> Iterator[None]:
    """Whatever a test does, the process leaves with the default sync debug mode."""
    yield
    torch.cuda.set_sync_debug_mode("default")


class SyncsAreErrors(TrainerCallback):
    """``set_sync_debug_mode("error")`` from ``on_step_begin`` to ``on_step_end``: a synchronising CUDA call
    in the step raises. Logging, saving and evaluating come after ``on_step_end``."""

    def __init__(self) -> None:
        self.step_in_progress: int | None = None
        self.steps_checked = 0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_in_progress = state.global_step + 1
        torch.cuda.set_sync_debug_mode("error")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self.steps_checked += 1
        self.step_in_progress = None


def quiet_trainer(output_dir: Path, model: torch.nn.Module, callback: SyncsAreErrors, **overrides: Any) -> Trainer:
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir), report_to="none", disable_tqdm=True, max_steps=6,
        per_device_train_batch_size=4, logging_steps=1000, save_strategy="no", learning_rate=0.01,
        max_grad_norm=1.0, seed=2,
    )
    settings.update(overrides)
    return Trainer(model=model, args=TrainingArguments(**settings), train_dataset=ClassificationDataset(length=64),
                   callbacks=[callback])


def train_without_syncs(trainer: Trainer, callback: SyncsAreErrors) -> None:
    try:
        trainer.train()
    except RuntimeError as error:
        if "synchronizing" not in str(error):
            raise
        pytest.fail(f"host-device sync in training step {callback.step_in_progress}: {error}", pytrace=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.usefixtures("sync_debug_mode_restored")
def test_sync_debug_mode_catches_a_sync_in_a_step(tmp_path: Path) -> None:
    """The check itself: a model that reads its loss on the host fails in the first step."""

    callback = SyncsAreErrors()
    trainer = quiet_trainer(tmp_path, LossReadingClassifier(), callback)
    with pytest.raises(RuntimeError, match="synchronizing"):
        trainer.train()
    torch.cuda.set_sync_debug_mode("default")
    assert callback.step_in_progress == 1


@pytest.mark.parametrize("option", [{"bf16": True}, {"gradient_accumulation_steps": 2}],
                         ids=["bf16", "grad_accum_2"])
@pytest.mark.usefixtures("sync_debug_mode_restored")
def test_no_sync_in_quiet_training_steps_on_cuda(option: dict[str, Any], tmp_path: Path) -> None:
    callback = SyncsAreErrors()
    torch.manual_seed(0)
    trainer = quiet_trainer(tmp_path, TinyClassifier(), callback, **option)
    assert trainer.args.device.type == "cuda"
    train_without_syncs(trainer, callback)
    assert trainer.state.global_step == 6
    assert callback.steps_checked == 6  # every step ran under the error mode
    assert torch.cuda.get_sync_debug_mode() == 0


# -- 4. FSDP under torchrun on CUDA ------------------------------------------------------------------------

SCRIPT = Path(__file__).resolve().parent / "fsdp_cuda_script.py"
MODEL_KEYS = {"net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias"}


def torchrun(root: Path, runs: list[dict[str, Any]], nproc: int = 1, timeout: int = 240) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRACKLINK_LOG_LEVEL": "warning"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
         str(SCRIPT), str(root), str(TESTS_DIR), json.dumps(runs)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=root,
    )
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def result_of(root: Path, name: str, rank: int = 0) -> dict[str, Any]:
    return json.loads((root / f"{name}-rank{rank}.json").read_text())


def untimed(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if not k.endswith(("_runtime", "_per_second"))}
            for e in history if "train_runtime" not in e]


def close_losses(a: list[tuple[int, float]], b: list[tuple[int, float]], rel: float) -> bool:
    return [s for s, _ in a] == [s for s, _ in b] and all(
        abs(x - y) <= rel * max(1.0, abs(y)) for (_, x), (_, y) in zip(a, b))


@pytest.mark.parametrize("fsdp", ["full_shard", "full_shard offload"])
def test_fsdp_bf16_one_process_trains_checkpoints_and_resumes(fsdp: str, tmp_path: Path) -> None:
    common = {"fsdp": fsdp, "bf16": True, "steps": 6}
    torchrun(tmp_path, [{"name": "full", **common}, {"name": "split", **common, "stop_at": 4}])
    full = result_of(tmp_path, "full")
    assert full["global_step"] == 6 and full["device"].startswith("cuda")
    assert "nccl" in (full["backend"] or "")
    assert full["param_type"] == "DTensor" and full["param_dtype"] == "torch.float32"  # sharded, float32 master
    assert full["param_device"] == ("cpu" if "offload" in fsdp else "cuda")
    losses = train_losses(full["log_history"])
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5, 6]
    assert all(torch.isfinite(torch.tensor(v)) for _, v in losses)

    run_dir = tmp_path / "full"
    assert checkpoint_names(run_dir) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for name in ("checkpoint-2", "checkpoint-4", "checkpoint-6"):
        files = {p.name for p in (run_dir / name).iterdir()}
        assert {"pytorch_model_fsdp_0", "optimizer_0", "scheduler.pt", "trainer_state.json"} <= files, name
        assert "optimizer.pt" not in files, name
        assert ("model.safetensors" in files) == (name == "checkpoint-6"), name  # consolidated only at the end
    shards = {p.name for p in (run_dir / "checkpoint-2" / "pytorch_model_fsdp_0").iterdir()}
    assert {".metadata", "__0_0.distcp"} <= shards
    final = checkpoint_weights(run_dir / "checkpoint-6")
    assert set(final) == MODEL_KEYS and all(v.dtype == torch.float32 for v in final.values())

    # resume in a new torchrun from checkpoint-4: the same run as the uninterrupted one
    assert result_of(tmp_path, "split")["global_step"] == 4
    torchrun(tmp_path, [{"name": "split", **common, "resume": True}])
    resumed = result_of(tmp_path, "split")
    assert resumed["global_step"] == 6
    resumed_history, full_history = untimed(resumed["log_history"]), untimed(full["log_history"])
    assert [sorted(e) for e in resumed_history] == [sorted(e) for e in full_history]
    # a separate process on the same GPU: the arithmetic should be identical; a small tolerance keeps the
    # check robust, far below what a lost optimizer, scheduler, RNG or data position state changes
    assert close_losses(train_losses(resumed["log_history"]), losses, rel=1e-5)
    resumed_final = checkpoint_weights(tmp_path / "split" / "checkpoint-6")
    assert set(resumed_final) == MODEL_KEYS
    assert all(torch.allclose(resumed_final[k], final[k], atol=1e-5, rtol=1e-5) for k in final)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_fsdp_matches_ddp_on_two_gpus(tmp_path: Path) -> None:
    torchrun(tmp_path, [{"name": "ddp"}, {"name": "fsdp", "fsdp": "full_shard"},
                        {"name": "ddp-bf16", "bf16": True}, {"name": "fsdp-bf16", "fsdp": "full_shard", "bf16": True}],
             nproc=2)
    for name in ("ddp", "fsdp", "ddp-bf16", "fsdp-bf16"):
        assert result_of(tmp_path, name)["global_step"] == 6
        assert "nccl" in (result_of(tmp_path, name)["backend"] or "")
        # the logged loss is reduced over both processes
        assert train_losses(result_of(tmp_path, name)["log_history"]) == \
            train_losses(result_of(tmp_path, name, 1)["log_history"])
    ddp, fsdp = (train_losses(result_of(tmp_path, n)["log_history"]) for n in ("ddp", "fsdp"))
    assert close_losses(fsdp, ddp, rel=1e-4)
    ddp_w, fsdp_w = (checkpoint_weights(tmp_path / n / "checkpoint-6") for n in ("ddp", "fsdp"))
    assert set(fsdp_w) == set(ddp_w) == MODEL_KEYS
    assert all(torch.allclose(fsdp_w[k], ddp_w[k], atol=1e-3) for k in ddp_w)
    ddp_bf16, fsdp_bf16 = (train_losses(result_of(tmp_path, n)["log_history"]) for n in ("ddp-bf16", "fsdp-bf16"))
    assert close_losses(fsdp_bf16, ddp_bf16, rel=2e-2)
    shards = {p.name for p in (tmp_path / "fsdp" / "checkpoint-2" / "pytorch_model_fsdp_0").iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp"} <= shards
