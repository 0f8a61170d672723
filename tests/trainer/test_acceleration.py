"""Mixed precision, ``torch.compile`` and gradient checkpointing, on CPU.

fp16 is refused on CPU for users (``_check_precision``); the fp16 tests lift that check through the
``fp16_on_cpu`` fixture, the one test seam here: CPU autocast supports float16 and
``torch.amp.GradScaler("cpu")`` runs the same inf/NaN check and skip logic as on CUDA. Compile tests use
the ``aot_eager`` backend (AOTAutograd tracing of forward and backward without code generation) except
one inductor run, to keep them fast on two cores.

Bad behaviours these tests catch:
- a step with inf gradients changing the weights, stepping the LR scheduler, or not being counted in
  ``skipped_optimizer_steps`` / ``train_skipped_optimizer_steps``; the keys appearing without fp16;
- the scaler state not written to ``scaler.pt`` or not restored on resume (the final scale differs);
- ``torch.compile`` called again on every ``train()``; ``_orig_mod.`` prefixes in ``model.safetensors``;
  a compiled run not resuming exactly;
- gradient checkpointing not enabled (the block is not recomputed in the backward pass), changing the
  losses, or enabled after wrapping;
- bf16, compile or gradient checkpointing changing the event sequence, the log keys or the keys of
  ``trainer_state.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_testlib import (
    CheckpointableClassifier,
    OverflowDataset,
    OverflowingRegressor,
    Recorder,
    StopAfterSaveAt,
    WeightsPerStep,
    checkpoint_names,
    checkpoint_weights,
    comparable_history,
    same_weights,
    weights_of,
)

from helpers import ClassificationDataset
from tracklink.trainer import Trainer, TrainingArguments

TIMING_KEYS = ("_runtime", "_per_second")


@pytest.fixture
def fp16_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test seam: skip the device check that refuses fp16 on CPU, so the GradScaler path runs here."""
    monkeypatch.setattr(Trainer, "_check_precision", lambda self: None)


# -- fp16: loss scaling and skipped steps ------------------------------------------------------------

# 32 items in batches of 4 (8 steps per epoch, shuffled by the seed): items 7 and 22 make the batches of
# steps 2 and 5 (first epoch) and 10 and 13 (second epoch) overflow
OVERFLOWING = (7, 22)


def fp16_trainer(output_dir: Path, callbacks: list[Any] | None = None, **overrides: Any) -> Trainer:
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir), report_to="none", disable_tqdm=True, fp16=True, use_cpu=True, max_steps=14,
        per_device_train_batch_size=4, logging_steps=3, save_steps=6, learning_rate=0.05, seed=1,
    )
    settings.update(overrides)
    return Trainer(model_init=lambda: OverflowingRegressor(), args=TrainingArguments(**settings),
                   train_dataset=OverflowDataset(overflowing=OVERFLOWING), callbacks=callbacks)


def overflow_steps(model: OverflowingRegressor) -> list[int]:
    return [i + 1 for i, flag in enumerate(model.overflow_flags) if bool(flag)]


@pytest.mark.usefixtures("fp16_on_cpu")
def test_fp16_skips_overflowing_steps_and_counts_them(tmp_path: Path) -> None:
    weights = WeightsPerStep()
    trainer = fp16_trainer(tmp_path, callbacks=[weights], save_strategy="no")
    output = trainer.train()
    model = trainer.model
    assert isinstance(model, OverflowingRegressor)
    assert set(model.output_dtypes) == {torch.float16}  # the forward ran under fp16 autocast
    skipped = overflow_steps(model)
    assert skipped == [2, 5, 10, 13]

    for step in range(1, 15):
        unchanged = same_weights(weights.weights[step - 1], weights.weights[step])
        assert unchanged == (step in skipped), f"step {step}"

    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [(e["step"], e["skipped_optimizer_steps"]) for e in train_logs] == [(3, 1), (6, 1), (9, 0), (12, 1)]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in train_logs)  # inf losses filtered
    assert output.metrics["train_skipped_optimizer_steps"] == 4
    assert trainer.state.log_history[-1]["train_skipped_optimizer_steps"] == 4
    # the LR scheduler steps only with the optimizer; each skip halves the scale (default backoff)
    assert trainer.lr_scheduler.last_epoch == 14 - 4
    assert trainer.scaler.get_scale() == 65536.0 * 0.5**4


@pytest.mark.usefixtures("fp16_on_cpu")
def test_fp16_scaler_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    full = fp16_trainer(tmp_path / "full")
    full.train()

    first = fp16_trainer(tmp_path / "split", callbacks=[StopAfterSaveAt(6)])
    first.train()
    assert checkpoint_names(tmp_path / "split") == ["checkpoint-6"]
    saved = torch.load(tmp_path / "split" / "checkpoint-6" / "scaler.pt", weights_only=True)
    assert saved["scale"] == 65536.0 * 0.5**2  # steps 2 and 5 were skipped before the checkpoint
    assert saved == first.scaler.state_dict()

    resumed = fp16_trainer(tmp_path / "split")
    output = resumed.train(resume_from_checkpoint=True)
    assert same_weights(weights_of(full.model), weights_of(resumed.model))
    assert comparable_history(resumed.state.log_history) == comparable_history(full.state.log_history)
    # without the restored state the resumed scaler would have backed off from 65536 twice, not four times
    assert resumed.scaler.state_dict() == full.scaler.state_dict()
    assert resumed.lr_scheduler.last_epoch == full.lr_scheduler.last_epoch
    assert output.metrics["train_skipped_optimizer_steps"] == 2  # steps 10 and 13, run by this call


@pytest.mark.usefixtures("fp16_on_cpu")
def test_every_training_starts_with_a_fresh_scale(tmp_path: Path) -> None:
    """A second ``train()`` (model_init: a fresh model, as in a search trial) must not inherit the scale
    the first one backed off to, and arguments switched to fp16=False drop the scaler."""
    trainer = fp16_trainer(tmp_path, save_strategy="no")
    trainer.train()
    first = trainer.scaler.state_dict()
    trainer.train()
    assert trainer.scaler.state_dict() == first and first["scale"] == 65536.0 * 0.5**4
    trainer.args.fp16 = False
    trainer.train()
    assert trainer.scaler is None
    assert "skipped_optimizer_steps" not in trainer.state.log_history[0]


def test_no_skipped_step_keys_without_fp16(tmp_path: Path) -> None:
    trainer = fp16_trainer(tmp_path, fp16=False, save_strategy="no", max_steps=6)
    trainer.train()
    assert trainer.scaler is None
    assert not any("skipped" in key for entry in trainer.state.log_history for key in entry)


# -- torch.compile --------------------------------------------------------------------------------


def classifier_trainer(output_dir: Path, callbacks: list[Any] | None = None, **overrides: Any) -> Trainer:
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir), report_to="none", disable_tqdm=True, use_cpu=True, max_steps=6,
        per_device_train_batch_size=4, dataloader_drop_last=True, logging_steps=3, save_steps=3,
        eval_strategy="steps", eval_steps=3, learning_rate=0.05, seed=3,
    )
    settings.update(overrides)
    return Trainer(model_init=lambda: CheckpointableClassifier(), args=TrainingArguments(**settings),
                   train_dataset=ClassificationDataset(length=24), eval_dataset=ClassificationDataset(length=8, seed=5),
                   callbacks=callbacks)


def test_compile_once_and_checkpoints_hold_plain_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    original = torch.compile

    def counting_compile(model: Any, **kwargs: Any) -> Any:
        calls.append((model, kwargs))
        return original(model, **kwargs)

    monkeypatch.setattr(torch, "compile", counting_compile)
    trainer = Trainer(model=CheckpointableClassifier(), train_dataset=ClassificationDataset(length=24),
                      args=TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True,
                                             use_cpu=True, max_steps=3, per_device_train_batch_size=4,
                                             torch_compile_backend="aot_eager", save_steps=3))
    trainer.train()
    trainer.train()
    assert [(model, kwargs) for model, kwargs in calls] == [(trainer.model, {"backend": "aot_eager", "mode": None})]
    assert getattr(trainer.model_wrapped, "_orig_mod", None) is trainer.model
    saved = checkpoint_weights(tmp_path / "checkpoint-3")
    assert set(saved) == set(trainer.model.state_dict())
    assert not any(key.startswith("_orig_mod") for key in saved)


def test_compiled_run_resumes_exactly(tmp_path: Path) -> None:
    full = classifier_trainer(tmp_path / "full", torch_compile_backend="aot_eager")
    full.train()
    first = classifier_trainer(tmp_path / "split", callbacks=[StopAfterSaveAt(3)], torch_compile_backend="aot_eager")
    first.train()
    resumed = classifier_trainer(tmp_path / "split", torch_compile_backend="aot_eager")
    resumed.train(resume_from_checkpoint=True)
    assert same_weights(weights_of(full.model), weights_of(resumed.model))
    assert comparable_history(resumed.state.log_history) == comparable_history(full.state.log_history)
    assert not any(k.startswith("_orig_mod") for k in checkpoint_weights(tmp_path / "split" / "checkpoint-6"))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_default_backend_is_inductor(tmp_path: Path) -> None:
    trainer = classifier_trainer(tmp_path, torch_compile=True, max_steps=2, eval_strategy="no", save_strategy="no")
    assert trainer.args.torch_compile_backend == "inductor"
    trainer.train()
    assert trainer.state.global_step == 2
    assert getattr(trainer.model_wrapped, "_orig_mod", None) is trainer.model


# -- gradient checkpointing ---------------------------------------------------------------------------


def test_gradient_checkpointing_recomputes_and_keeps_losses(tmp_path: Path) -> None:
    plain = classifier_trainer(tmp_path / "plain", eval_strategy="no", save_strategy="no")
    plain.model_init = lambda: CheckpointableClassifier(count_calls=True)
    plain.train()
    checkpointed = classifier_trainer(tmp_path / "gc", eval_strategy="no", save_strategy="no",
                                      gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed.model_init = lambda: CheckpointableClassifier(count_calls=True)
    checkpointed.train()
    assert checkpointed.model.checkpoint_kwargs == {"use_reentrant": False}
    assert (plain.model.block_calls, checkpointed.model.block_calls) == (6, 12)  # recomputed in backward
    assert comparable_history(checkpointed.state.log_history) == comparable_history(plain.state.log_history)
    assert same_weights(weights_of(plain.model), weights_of(checkpointed.model))


def tiny_gpt2() -> Any:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


class TokenStream(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.tensor([(i * 5 + k * 3) % 64 for k in range(12)])
        return {"input_ids": ids, "labels": ids}


@pytest.mark.interop
def test_gradient_checkpointing_with_a_transformers_model(tmp_path: Path) -> None:
    def run(output_dir: Path, **extra: Any) -> tuple[Trainer, list[int]]:
        torch.manual_seed(0)
        model = tiny_gpt2()
        calls: list[int] = []
        # transformers checkpoints the block's forward (its own hooks stay outside), and non-reentrant
        # checkpointing may stop a recomputation early: count calls of the block's first submodule
        model.transformer.h[0].ln_1.register_forward_pre_hook(lambda *_: calls.append(1))
        args = TrainingArguments(output_dir=str(output_dir), report_to="none", disable_tqdm=True, use_cpu=True,
                                 max_steps=4, per_device_train_batch_size=4, logging_steps=1,
                                 save_strategy="no", learning_rate=1e-3, **extra)
        trainer = Trainer(model=model, args=args, train_dataset=TokenStream())
        trainer.train()
        return trainer, calls

    plain, plain_calls = run(tmp_path / "plain")
    checkpointed, gc_calls = run(tmp_path / "gc", gradient_checkpointing=True,
                                 gradient_checkpointing_kwargs={"use_reentrant": False})
    def enabled(model: Any) -> bool:  # transformers 5.x renamed the flag
        if hasattr(type(model), "is_activation_checkpointing"):
            return bool(model.is_activation_checkpointing)
        return bool(model.is_gradient_checkpointing)

    assert enabled(checkpointed.model) and not enabled(plain.model)
    assert (len(plain_calls), len(gc_calls)) == (4, 8)  # block 0 recomputed in every backward pass
    plain_losses = [e["loss"] for e in plain.state.log_history if "loss" in e]
    gc_losses = [e["loss"] for e in checkpointed.state.log_history if "loss" in e]
    assert len(plain_losses) == 4 and gc_losses == pytest.approx(plain_losses, rel=1e-6)


# -- events and trainer_state.json are the same with every option ---------------------------------------

OPTIONS = {
    "bf16": dict(bf16=True),
    "compile": dict(torch_compile_backend="aot_eager"),
    "gradient_checkpointing": dict(gradient_checkpointing=True),
}


def _state_shape(path: Path) -> tuple[list[str], list[list[str]]]:
    state = json.loads(path.read_text())
    entries = [sorted(k for k in entry if not k.endswith(TIMING_KEYS)) for entry in state["log_history"]]
    return sorted(state), entries


@pytest.mark.parametrize("option", list(OPTIONS))
def test_option_keeps_events_logs_and_state(option: str, tmp_path: Path) -> None:
    runs = {}
    for name, extra in (("plain", {}), (option, OPTIONS[option])):
        recorder = Recorder()
        trainer = classifier_trainer(tmp_path / name, callbacks=[recorder], **extra)
        trainer.train()
        runs[name] = (trainer, recorder)
    (plain, plain_recorder), (other, other_recorder) = runs["plain"], runs[option]
    assert other_recorder.events == plain_recorder.events
    assert [sorted(log) for log in other_recorder.logs] == [sorted(log) for log in plain_recorder.logs]
    for checkpoint in ("checkpoint-3", "checkpoint-6"):
        assert _state_shape(tmp_path / option / checkpoint / "trainer_state.json") == \
            _state_shape(tmp_path / "plain" / checkpoint / "trainer_state.json")
    plain_state = json.loads((tmp_path / "plain" / "checkpoint-6" / "trainer_state.json").read_text())
    other_state = json.loads((tmp_path / option / "checkpoint-6" / "trainer_state.json").read_text())
    plain_state.pop("log_history"), other_state.pop("log_history")
    assert other_state == plain_state  # every field except the logged values
    if option == "gradient_checkpointing":  # same arithmetic: the same values too
        assert comparable_history(other.state.log_history) == comparable_history(plain.state.log_history)
