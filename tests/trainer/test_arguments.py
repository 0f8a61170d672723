"""``TrainingArguments``: transformers' defaults, validation of every field, and its round trips.

Bad inputs catalogued here (each must raise ``ValueError`` naming the field, the value and what is
accepted, before any training step):
- strategies: ``logging_strategy``/``eval_strategy`` not in no/steps/epoch, ``save_strategy`` not in
  no/steps/epoch/best, a non-string strategy;
- ``lr_scheduler_type`` unknown (``"cosine_with_restarts"``, ``"reduce_lr_on_plateau"``);
- batch sizes and ``gradient_accumulation_steps``: 0, negative, float, bool, string;
- ``logging_steps``/``eval_steps``/``save_steps``: 0 with the ``"steps"`` strategy, a non-integer > 1,
  negative (with any strategy), a string, NaN; ``eval_steps`` falling back to a ``logging_steps`` of 0;
- ``warmup_ratio`` outside [0, 1], negative ``warmup_steps``, a non-integer ``warmup_steps`` > 1;
- ``adam_beta1``/``adam_beta2`` outside [0, 1), ``adam_epsilon`` <= 0, negative ``learning_rate``,
  ``weight_decay``, ``max_grad_norm``, ``eval_delay``; NaN values;
- ``num_train_epochs`` <= 0 without ``max_steps``; non-integer ``max_steps``/``seed``; negative
  ``dataloader_num_workers``;
- ``load_best_model_at_end`` with ``eval_strategy != save_strategy``, with ``save_steps`` not a multiple of
  ``eval_steps``, with a ratio mixed with an absolute interval;
- ``save_strategy="best"`` without evaluation; ``fp16`` and ``bf16`` together;
- ``save_total_limit`` 0 or negative; ``label_names`` given as a string; ``metric_for_best_model`` not a
  string; ``include_num_input_tokens_seen`` unknown; ``ddp_backend`` unknown; a bool field given a string;
- ``report_to`` naming an unknown tracker (constructor and reassignment);
- ``torch_compile``/``gradient_checkpointing`` not a bool, ``torch_compile_mode`` unknown, ``torch_compile_backend``
  not a name, ``gradient_checkpointing_kwargs`` not a dict (a list, a non-object JSON text, non-string keys);
  at ``Trainer`` construction: a backend ``torch._dynamo`` does not know, gradient checkpointing for a model
  without ``gradient_checkpointing_enable``;
- at ``Trainer`` construction: ``fp16=True`` on CPU; ``eval_strategy="steps"`` without ``eval_dataset``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from helpers import RegressionDataset, RegressionModel
from tracklink import TrainerCallback
from tracklink.trainer import Trainer, TrainingArguments
from tracklink.trainer.arguments import TRANSFORMERS_DIFFERENCES


def make(**kwargs: Any) -> TrainingArguments:
    kwargs.setdefault("output_dir", "unused-output")
    kwargs.setdefault("report_to", "none")
    return TrainingArguments(**kwargs)


# -- defaults ---------------------------------------------------------------------------------------

# transformers v5's defaults for the fields tracklink shares with it (checked against transformers itself
# in the interop test below; written out here so the suite without transformers still guards them)
EXPECTED_DEFAULTS = {
    "num_train_epochs": 3.0, "max_steps": -1, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
    "gradient_accumulation_steps": 1, "learning_rate": 5e-5, "weight_decay": 0.0, "adam_beta1": 0.9,
    "adam_beta2": 0.999, "adam_epsilon": 1e-8, "max_grad_norm": 1.0, "lr_scheduler_type": "linear",
    "warmup_steps": 0, "logging_strategy": "steps", "logging_steps": 500, "logging_first_step": False,
    "logging_nan_inf_filter": True, "eval_strategy": "no", "eval_steps": None, "eval_delay": 0,
    "eval_on_start": False, "save_strategy": "steps", "save_steps": 500, "save_total_limit": None,
    "save_only_model": False, "load_best_model_at_end": False, "metric_for_best_model": None,
    "greater_is_better": None, "seed": 42, "bf16": False, "fp16": False, "use_cpu": False,
    "dataloader_num_workers": 0, "dataloader_drop_last": False, "dataloader_pin_memory": True,
    "run_name": None, "ignore_data_skip": False, "restore_callback_states_from_checkpoint": False,
    "include_num_input_tokens_seen": "no", "label_names": None, "remove_unused_columns": True,
    "ddp_backend": None, "ddp_find_unused_parameters": None,
    "torch_compile": False, "torch_compile_backend": None, "torch_compile_mode": None,
    "gradient_checkpointing": False, "gradient_checkpointing_kwargs": None,
    "fsdp": None, "fsdp_config": None,
}


def test_defaults_are_transformers_defaults() -> None:
    args = make()
    actual = {name: getattr(args, name) for name in EXPECTED_DEFAULTS}
    assert actual == EXPECTED_DEFAULTS
    assert TrainingArguments().output_dir == "trainer_output"


def test_every_field_is_either_checked_or_a_documented_difference() -> None:
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert fields - set(EXPECTED_DEFAULTS) - set(TRANSFORMERS_DIFFERENCES) == {"output_dir"}
    assert set(TRANSFORMERS_DIFFERENCES) <= fields


@pytest.mark.interop
def test_defaults_match_installed_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    theirs = transformers.TrainingArguments(output_dir=str(tmp_path))
    ours = make(output_dir=str(tmp_path))
    their_fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    differences = []
    for f in dataclasses.fields(TrainingArguments):
        if f.name in TRANSFORMERS_DIFFERENCES:
            continue
        assert f.name in their_fields, f"{f.name} is not a transformers field and not documented as a difference"
        mine, their = getattr(ours, f.name), getattr(theirs, f.name)
        their = getattr(their, "value", their)  # enums
        if mine != their:
            differences.append((f.name, mine, their))
    assert differences == []


@pytest.mark.interop
def test_arguments_port_to_transformers(tmp_path: Path) -> None:
    """``to_dict()`` of a typical configuration builds a transformers ``TrainingArguments``."""
    transformers = pytest.importorskip("transformers")
    ours = make(output_dir=str(tmp_path), eval_strategy="steps", eval_steps=10, save_steps=20,
                load_best_model_at_end=True, logging_steps=0.1, label_names=["labels"])
    their_fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    data = {k: v for k, v in ours.to_dict().items() if k in their_fields and k not in TRANSFORMERS_DIFFERENCES}
    theirs = transformers.TrainingArguments(**data, report_to="none")
    assert theirs.eval_steps == 10 and theirs.metric_for_best_model == "loss" and theirs.greater_is_better is False


# -- validation ----------------------------------------------------------------------------------------


def _assert_names(error: BaseException, *needles: str) -> None:
    text = str(error)
    for needle in needles:
        assert needle in text, f"{needle!r} not in error message: {text}"


INVALID_SINGLE = [
    ("logging_strategy", "sometimes"), ("eval_strategy", "always"), ("eval_strategy", 3),
    ("save_strategy", "never"), ("lr_scheduler_type", "cosine_with_restarts"),
    ("lr_scheduler_type", "reduce_lr_on_plateau"),
    ("per_device_train_batch_size", 0), ("per_device_train_batch_size", -8), ("per_device_train_batch_size", 8.0),
    ("per_device_train_batch_size", True), ("per_device_eval_batch_size", 0), ("per_device_eval_batch_size", "8"),
    ("gradient_accumulation_steps", 0), ("gradient_accumulation_steps", 1.5),
    ("logging_steps", 0), ("logging_steps", 2.5), ("logging_steps", -1), ("logging_steps", "10"),
    ("logging_steps", float("nan")),
    ("save_steps", 0), ("save_steps", 10.5), ("save_steps", -0.5),
    ("warmup_ratio", 1.5), ("warmup_ratio", -0.1), ("warmup_steps", -1), ("warmup_steps", 2.5),
    ("adam_beta1", 1.0), ("adam_beta1", -0.1), ("adam_beta2", 1.2), ("adam_epsilon", 0.0), ("adam_epsilon", -1e-8),
    ("learning_rate", -1e-3), ("learning_rate", float("nan")), ("weight_decay", -0.1), ("max_grad_norm", -1.0),
    ("eval_delay", -1), ("num_train_epochs", 0), ("num_train_epochs", "3"), ("max_steps", 10.0),
    ("seed", "42"), ("dataloader_num_workers", -1),
    ("save_total_limit", 0), ("save_total_limit", -2), ("save_total_limit", 2.0),
    ("label_names", "labels"), ("label_names", ["labels", 3]), ("metric_for_best_model", 1),
    ("include_num_input_tokens_seen", "maybe"), ("ddp_backend", "tcp"),
    ("bf16", "yes"), ("logging_first_step", 1), ("disable_tqdm", "no"), ("greater_is_better", "true"),
    ("run_name", 5), ("output_dir", ""),
    ("torch_compile", "yes"), ("torch_compile", 1), ("torch_compile_mode", "fast"), ("torch_compile_mode", 3),
    ("torch_compile_backend", ""), ("torch_compile_backend", 5), ("gradient_checkpointing", "true"),
    ("gradient_checkpointing_kwargs", ["use_reentrant"]), ("gradient_checkpointing_kwargs", {1: True}),
    ("gradient_checkpointing_kwargs", "[1, 2]"), ("gradient_checkpointing_kwargs", "use_reentrant=False"),
]


@pytest.mark.parametrize("name, value", INVALID_SINGLE, ids=[f"{n}={v!r}" for n, v in INVALID_SINGLE])
def test_invalid_value_names_field_value_and_accepted(name: str, value: Any) -> None:
    with pytest.raises(ValueError) as info:
        make(**{name: value})
    shown = "nan" if isinstance(value, float) and math.isnan(value) else repr(value)
    _assert_names(info.value, f"TrainingArguments.{name}={shown}", "accepted")


@pytest.mark.parametrize("strategy_field, steps_field", [
    ("logging_strategy", "logging_steps"), ("eval_strategy", "eval_steps"), ("save_strategy", "save_steps"),
])
def test_negative_interval_rejected_whatever_the_strategy(strategy_field: str, steps_field: str) -> None:
    extra = {"eval_strategy": "epoch"} if strategy_field == "eval_strategy" else {}
    with pytest.raises(ValueError) as info:
        make(**{strategy_field: "epoch", steps_field: -5, **extra})
    _assert_names(info.value, f"TrainingArguments.{steps_field}=-5", "accepted")
    make(**{strategy_field: "epoch", steps_field: 0, **extra})  # 0 is fine when the interval is unused


def test_eval_steps_falls_back_to_logging_steps() -> None:
    assert make(eval_strategy="steps", logging_steps=7).eval_steps == 7
    assert make(eval_strategy="steps", logging_steps=7, eval_steps=0).eval_steps == 7
    assert make(eval_strategy="steps", logging_steps=0.2).eval_steps == 0.2
    with pytest.raises(ValueError) as info:  # the fallback value is 0: no interval at all
        make(eval_strategy="steps", logging_strategy="epoch", logging_steps=0)
    _assert_names(info.value, "TrainingArguments.eval_steps=0", "accepted")


INVALID_COMBINATIONS = [
    (dict(load_best_model_at_end=True, eval_strategy="steps", save_strategy="epoch"),
     ("load_best_model_at_end", "eval_strategy='steps'", "save_strategy='epoch'")),
    (dict(load_best_model_at_end=True, eval_strategy="no"),
     ("load_best_model_at_end", "eval_strategy='no'", "save_strategy='steps'")),
    (dict(load_best_model_at_end=True, eval_strategy="steps", eval_steps=10, save_steps=25),
     ("load_best_model_at_end", "save_steps=25", "eval_steps=10", "multiple")),
    (dict(load_best_model_at_end=True, eval_strategy="steps", eval_steps=0.1, save_steps=50),
     ("load_best_model_at_end", "save_steps=50", "eval_steps=0.1", "ratio")),
    (dict(load_best_model_at_end=True, eval_strategy="steps", eval_steps=0.2, save_steps=0.3),
     ("save_steps=0.3", "eval_steps=0.2", "multiple")),
    (dict(save_strategy="best"), ("save_strategy='best'", "eval_strategy")),
    (dict(fp16=True, bf16=True), ("fp16=True", "bf16=True", "accepted")),
]


@pytest.mark.parametrize("kwargs, needles", INVALID_COMBINATIONS, ids=[str(k) for k, _ in INVALID_COMBINATIONS])
def test_invalid_combinations(kwargs: dict[str, Any], needles: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as info:
        make(**kwargs)
    _assert_names(info.value, *needles)


@pytest.mark.parametrize("kwargs", [
    dict(load_best_model_at_end=True, eval_strategy="steps", eval_steps=10, save_steps=30),
    dict(load_best_model_at_end=True, eval_strategy="steps", eval_steps=0.1, save_steps=0.3),
    dict(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="epoch"),
    dict(load_best_model_at_end=True, eval_strategy="steps", save_strategy="best", eval_steps=7),
    dict(save_strategy="best", eval_strategy="epoch"),
    dict(logging_steps=0.25, save_steps=1.0, warmup_steps=0.1),
    dict(max_steps=10, num_train_epochs=0),
    dict(logging_strategy="STEPS", include_num_input_tokens_seen=True),
])
def test_valid_combinations(kwargs: dict[str, Any]) -> None:
    make(**kwargs)


def test_derived_best_model_settings() -> None:
    args = make(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="epoch")
    assert (args.metric_for_best_model, args.greater_is_better) == ("loss", False)
    args = make(metric_for_best_model="accuracy")
    assert args.greater_is_better is True
    assert make(include_num_input_tokens_seen=True).include_num_input_tokens_seen == "all"


def test_report_to_unknown_name_lists_known_trackers() -> None:
    with pytest.raises(ValueError) as info:
        make(report_to="tensorbord")
    _assert_names(info.value, "'tensorbord'", "tensorboard", "'none'")


# -- at Trainer construction --------------------------------------------------------------------------


class FailIfCalled(TrainerCallback):
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:  # pragma: no cover
        raise AssertionError("training must not start")

    on_step_begin = on_train_begin


def test_fp16_on_cpu_fails_at_construction(tmp_path: Path) -> None:
    args = make(output_dir=str(tmp_path), fp16=True, use_cpu=True)
    with pytest.raises(ValueError) as info:
        Trainer(model=RegressionModel(), args=args, train_dataset=RegressionDataset(), callbacks=[FailIfCalled()])
    _assert_names(info.value, "fp16=True", "'cpu'", "bf16=True")
    assert not any(tmp_path.iterdir())


def test_eval_strategy_without_eval_dataset_fails_at_construction(tmp_path: Path) -> None:
    args = make(output_dir=str(tmp_path), eval_strategy="steps", eval_steps=5)
    with pytest.raises(ValueError) as info:
        Trainer(model=RegressionModel(), args=args, train_dataset=RegressionDataset(), callbacks=[FailIfCalled()])
    _assert_names(info.value, "eval_strategy='steps'", "eval_dataset")


def test_compile_settings_imply_torch_compile_as_in_transformers() -> None:
    assert (make().torch_compile, make().torch_compile_backend) == (False, None)
    assert make(torch_compile=True).torch_compile_backend == "inductor"
    args = make(torch_compile_mode="reduce-overhead")
    assert (args.torch_compile, args.torch_compile_backend, args.torch_compile_mode) == (True, "inductor", "reduce-overhead")
    args = make(torch_compile_backend="aot_eager")
    assert (args.torch_compile, args.torch_compile_backend) == (True, "aot_eager")
    for mode in ("default", "max-autotune", "max-autotune-no-cudagraphs"):
        assert make(torch_compile_mode=mode).torch_compile_mode == mode
    assert make(gradient_checkpointing_kwargs='{"use_reentrant": false}').gradient_checkpointing_kwargs == {
        "use_reentrant": False}


def test_unknown_compile_backend_fails_at_construction(tmp_path: Path) -> None:
    args = make(output_dir=str(tmp_path), torch_compile_backend="inductr", use_cpu=True)
    with pytest.raises(ValueError) as info:
        Trainer(model=RegressionModel(), args=args, train_dataset=RegressionDataset(), callbacks=[FailIfCalled()])
    _assert_names(info.value, "TrainingArguments.torch_compile_backend='inductr'", "accepted", "'inductor'",
                  "'aot_eager'")
    assert not any(tmp_path.iterdir())


def test_gradient_checkpointing_without_support_fails_at_construction(tmp_path: Path) -> None:
    args = make(output_dir=str(tmp_path), gradient_checkpointing=True, use_cpu=True)
    with pytest.raises(ValueError) as info:
        Trainer(model=RegressionModel(), args=args, train_dataset=RegressionDataset(), callbacks=[FailIfCalled()])
    _assert_names(info.value, "gradient_checkpointing=True", "RegressionModel", "gradient_checkpointing_enable")
    with pytest.raises(ValueError) as info:  # model_init: the model built at construction is checked
        Trainer(model_init=lambda: RegressionModel(), args=args, train_dataset=RegressionDataset(), callbacks=[FailIfCalled()])
    _assert_names(info.value, "RegressionModel", "gradient_checkpointing_enable")
    assert not any(tmp_path.iterdir())


def test_report_to_reassigned_after_construction(tmp_path: Path) -> None:
    """transformers' pitfall: assigning the string "none" later made it iterate over the characters
    ("n is not supported"). Here reassignment resolves again."""
    args = make(output_dir=str(tmp_path), report_to="testrecorder", max_steps=2, disable_tqdm=True)
    assert args.report_to == ["testrecorder"]
    args.report_to = "none"
    assert args.report_to == []
    trainer = Trainer(model=RegressionModel(), args=args, train_dataset=RegressionDataset())
    assert trainer.callback_handler.trackers == {}
    trainer.train()
    assert trainer.state.global_step == 2
    args.report_to = ["testrecorder", "testrecorder"]
    assert args.report_to == ["testrecorder"]
    with pytest.raises(ValueError) as info:
        args.report_to = "nonexistent"
    _assert_names(info.value, "'nonexistent'")


# -- serialisation ------------------------------------------------------------------------------------


def test_to_dict_and_json_round_trip() -> None:
    args = make(eval_strategy="steps", eval_steps=0.25, logging_steps=10, save_steps=0.5,
                load_best_model_at_end=True, label_names=["labels"], report_to="testrecorder",
                include_num_input_tokens_seen=True, warmup_ratio=0.1)
    data = args.to_dict()
    assert data["report_to"] == ["testrecorder"] and data["lr_scheduler_type"] == "linear"
    text = args.to_json_string()
    assert json.loads(text) == data
    again = TrainingArguments(**json.loads(text))
    assert again == args
    assert again.to_json_string() == text
    assert set(data) == {f.name for f in dataclasses.fields(TrainingArguments)}
    sanitized = args.to_sanitized_dict()
    assert all(isinstance(v, (bool, int, float, str)) for v in sanitized.values())
    assert sanitized["train_batch_size"] == 8
