"""Ordinary faults and mistakes keep tracklink's promises: nothing written is lost, a tracker never stalls
training, and a mistake is named before the first training step.

Catalogue of the bad inputs and faults tried here (each has a test below):

- values logged with ``Trainer.log``: a one-element tensor (``loss.detach()``), NumPy scalars
  (``np.float32``, ``np.int64``, ``np.bool_``), a 0-d array, a one-element array: logged as numbers; a
  multi-element tensor or array: left out with a warning naming key, type and shape; an arbitrary object
  in ``log_history`` (a set, a custom class): saved as JSON (converted) instead of failing the save;
- the state file: a serialiser failing mid-save leaves the previous ``trainer_state.json`` untouched and
  no temporary file behind;
- damaged checkpoints: an empty, truncated or non-object ``trainer_state.json``; a truncated or garbage
  ``model.safetensors``; a truncated ``optimizer.pt`` / ``rng_state.pth``; a checkpoint without state —
  ``resume_from_checkpoint=True`` skips them (warning) and resumes from the newest intact one; an explicit
  damaged path raises an error naming the file and the checkpoint; a path that does not exist, a file,
  a non-path value (``1``, ``3.5``);
- a tracker whose setup hangs (a server that does not answer): checkpoints are written without waiting,
  its run identity is added to them once known, and rotation keeps a checkpoint it still needs;
- a tracker whose setup fails: switched off at once (setup is not retried for every later event);
- at ``Trainer`` construction: ``output_dir`` a regular file, below a regular file, not writable;
  ``metric_for_best_model`` naming a metric no evaluation produces (no ``compute_metrics``, also with a
  dict of eval datasets); an empty training dataset; a dataset smaller than one batch with
  ``dataloader_drop_last``; an empty length-less dataset (fails before the first step, the tracker's run
  closed as failed, not finished);
- callbacks: transformers-style methods with other parameter names (called positionally, as transformers
  does); a method that cannot take transformers' arguments; a ``@hookimpl`` with an unknown argument
  (rejected, listing the accepted arguments);
- NaN: a NaN loss at every step (logged as nan, warned once), some NaN losses under
  ``logging_nan_inf_filter`` (replaced, warned once), NaN weights at a save (warned);
- ``remove_unused_columns`` dropping a key the model's forward requires (the error names the dropped keys);
- a third-party tracker plugin that fails to import: listed with its error in the start banner's skipped list;
- ``callbacks=`` holding a string (``"wandb"``: the hint says ``report_to``), ``None``, a number, a list, or a
  callback class whose constructor needs arguments;
- an empty ``eval_dataset`` (also one entry of a dict of them) with evaluation on;
- ``Trainer.log`` with keys that are not strings (converted, warned once);
- ``resume_from_checkpoint`` naming the output directory instead of one of its checkpoints (the error names
  the newest checkpoint), and a checkpoint of another model (the error names the checkpoint and the keys).

Tracker settings (each SDK's variables, tracking URIs, servers that do not answer) are catalogued in
``tests/integration/test_tracker_settings.py``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tracklink
from helpers import RegressionDataset, RegressionModel, make_trainer
from tracker_doubles import FailingTracker, RecordingTracker, read_records
from tracklink import TrainerCallback, TrainerState
from tracklink.trainer import Trainer, TrainingArguments
from tracklink.trainer.checkpoint import CorruptCheckpointError, checkpoint_problem, latest_checkpoint


def _state(path: Path) -> dict[str, Any]:
    return json.loads((path / "trainer_state.json").read_text())


# -- logged values ------------------------------------------------------------------------------------


class LoggingTrainer(Trainer):
    """Logs tensors and NumPy values the way users do, from an overridden compute_loss."""

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False) -> Any:
        result = super().compute_loss(model, inputs, return_outputs)
        loss = result[0] if return_outputs else result
        if model.training and self.state.global_step % 5 == 0:
            self.log({
                "custom": loss.detach(), "np32": np.float32(0.25), "np64": np.int64(7), "flag": np.bool_(True),
                "zero_d": np.array(1.5), "one": torch.tensor([2.5]), "vector": torch.ones(3),
            })
        return result


def test_tensor_and_numpy_values_are_logged_as_numbers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    trainer = make_trainer(tmp_path / "out", callbacks=[recorder])
    trainer.__class__ = LoggingTrainer
    caplog.set_level(logging.WARNING, logger="tracklink")
    trainer.train()
    saved = _state(tmp_path / "out" / "checkpoint-20")  # the save did not fail on a tensor
    custom = [entry for entry in saved["log_history"] if "custom" in entry]
    assert custom, "the custom logs are in the checkpoint's history"
    for entry in custom:
        assert type(entry["custom"]) is float and entry["np32"] == 0.25 and entry["np64"] == 7
        assert entry["flag"] == 1 and entry["zero_d"] == 1.5 and entry["one"] == 2.5
        assert "vector" not in entry
    warnings = [r.getMessage() for r in caplog.records if "'vector'" in r.getMessage()]
    assert len(warnings) == 1 and "Tensor of shape (3,)" in warnings[0] and "not a single number" in warnings[0]
    metrics = [r["metrics"] for r in read_records(recorder.path) if r["kind"] == "metrics" and "train/custom" in r["metrics"]]
    assert metrics and all(isinstance(m["train/custom"], float) and m["train/np32"] == 0.25 for m in metrics)
    # and the run resumes from that checkpoint
    again = make_trainer(tmp_path / "out", max_steps=25)
    assert again.train(resume_from_checkpoint=True).global_step == 25


def test_state_with_unusual_values_still_saves(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque-object"

    state = TrainerState(global_step=3, best_metric=np.float64(0.5))  # type: ignore[arg-type]
    state.log_history.append({"t": torch.tensor(1.25), "arr": np.arange(3), "s": {2, 1}, "o": Opaque(), "step": 3})
    path = tmp_path / "trainer_state.json"
    state.save_to_json(str(path))
    data = json.loads(path.read_text())
    assert data["best_metric"] == 0.5
    assert data["log_history"][0] == {"t": 1.25, "arr": [0, 1, 2], "s": [1, 2], "o": "opaque-object", "step": 3}


def test_state_file_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "trainer_state.json"
    TrainerState(global_step=5).save_to_json(str(path))
    before = path.read_text()

    def explode(self: Any) -> str:
        raise RuntimeError("serialiser failed")

    monkeypatch.setattr(TrainerState, "to_json_string", explode)
    with pytest.raises(RuntimeError):
        TrainerState(global_step=6).save_to_json(str(path))
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer_state.json"]


# -- damaged checkpoints ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "out"
    make_trainer(out, max_steps=30).train()
    return out


def _damaged_copy(trained: Path, tmp_path: Path, damage: str) -> Path:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(trained, out)
    newest = out / "checkpoint-30"
    if damage == "state-empty":
        (newest / "trainer_state.json").write_text("")
    elif damage == "state-truncated":
        text = (newest / "trainer_state.json").read_text()
        (newest / "trainer_state.json").write_text(text[: len(text) // 2])
    elif damage == "state-list":
        (newest / "trainer_state.json").write_text("[1, 2]")
    elif damage == "weights-truncated":
        data = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(data[:-4])
    elif damage == "weights-garbage":
        (newest / "model.safetensors").write_bytes(b"\x00\x01garbage")
    elif damage == "optimizer-truncated":
        data = (newest / "optimizer.pt").read_bytes()
        (newest / "optimizer.pt").write_bytes(data[: len(data) // 2])
    elif damage == "rng-truncated":
        data = (newest / "rng_state.pth").read_bytes()
        (newest / "rng_state.pth").write_bytes(data[:10])
    elif damage == "no-state":
        (newest / "trainer_state.json").unlink()
    return out


DAMAGES = ["state-empty", "state-truncated", "state-list", "weights-truncated", "weights-garbage",
           "optimizer-truncated", "rng-truncated", "no-state"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_resume_true_skips_a_damaged_newest_checkpoint(trained: Path, tmp_path: Path, damage: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    out = _damaged_copy(trained, tmp_path, damage)
    caplog.set_level(logging.WARNING, logger="tracklink")
    assert latest_checkpoint(out) == out / "checkpoint-20"
    if damage != "no-state":  # an interrupted save (no state file) is skipped silently, as before
        assert any("skipping checkpoint" in r.getMessage() and "checkpoint-30" in r.getMessage()
                   for r in caplog.records)
    trainer = make_trainer(out, max_steps=30)
    assert trainer.train(resume_from_checkpoint=True).global_step == 30
    assert trainer.state.log_history[0]["step"] <= 20 < trainer.state.log_history[-1]["step"]


@pytest.mark.parametrize("damage", [d for d in DAMAGES if d != "no-state"])
def test_explicit_damaged_checkpoint_names_the_file(trained: Path, tmp_path: Path, damage: str) -> None:
    out = _damaged_copy(trained, tmp_path, damage)
    trainer = make_trainer(out, max_steps=40)
    with pytest.raises(CorruptCheckpointError) as info:
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-30"))
    message = str(info.value)
    assert "checkpoint-30" in message
    expected = {"state": "trainer_state.json", "weights": "model.safetensors", "optimizer": "optimizer.pt",
                "rng": "rng_state.pth"}[damage.split("-")[0]]
    assert expected in message
    assert checkpoint_problem(out / "checkpoint-20") is None


def test_no_intact_checkpoint_at_all(trained: Path, tmp_path: Path) -> None:
    out = _damaged_copy(trained, tmp_path, "state-empty")
    (out / "checkpoint-10" / "trainer_state.json").write_text("{")
    (out / "checkpoint-20" / "trainer_state.json").write_text("")
    with pytest.raises(ValueError, match="incomplete or damaged"):
        make_trainer(out, max_steps=30).train(resume_from_checkpoint=True)


@pytest.mark.parametrize("value", [1, 3.5, ["checkpoint-10"]])
def test_resume_from_checkpoint_of_the_wrong_type(tmp_path: Path, value: Any) -> None:
    trainer = make_trainer(tmp_path / "out", max_steps=2, eval_strategy="no")
    with pytest.raises(TypeError, match="expected a checkpoint directory path"):
        trainer.train(resume_from_checkpoint=value)


def test_damaged_weights_loaded_directly_name_the_file(trained: Path, tmp_path: Path) -> None:
    from tracklink.trainer.checkpoint import load_model_weights

    out = _damaged_copy(trained, tmp_path, "weights-truncated")
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint-30.*model\.safetensors.*truncated"):
        load_model_weights(RegressionModel(), out / "checkpoint-30")


# -- trackers never stall a checkpoint -----------------------------------------------------------------


class HangingSetupTracker(RecordingTracker):
    """Its setup blocks until released, like an SDK waiting for a server that does not answer."""

    name = "hanging"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()
        self.setups = 0

    def setup(self, run: Any) -> None:
        self.setups += 1
        assert self.release.wait(60), "never released"
        super().setup(run)


class ReleaseAtEnd(TrainerCallback):
    """Records which checkpoints existed while the tracker was still blocked, then releases it."""

    def __init__(self, tracker: HangingSetupTracker, at_step: int) -> None:
        self.tracker = tracker
        self.at_step = at_step
        self.saved_while_blocked: list[int] = []
        self.present_while_blocked: list[str] = []

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.tracker.release.is_set():
            self.saved_while_blocked.append(state.global_step)
            self.present_while_blocked = sorted(p.name for p in Path(args.output_dir).glob("checkpoint-*"))
        if state.global_step >= self.at_step:
            self.tracker.release.set()


def test_checkpoints_do_not_wait_for_a_hanging_tracker_setup(tmp_path: Path) -> None:
    tracker = HangingSetupTracker(tmp_path / "rec.jsonl")
    release = ReleaseAtEnd(tracker, at_step=20)
    trainer = make_trainer(tmp_path / "out", callbacks=[tracker, release], max_steps=20, save_steps=5,
                           eval_strategy="no", save_total_limit=1)
    trainer.train()
    # every checkpoint was written while the tracker's setup still hung, and rotation kept the ones it
    # still needed instead of waiting
    assert release.saved_while_blocked == [5, 10, 15, 20]
    assert release.present_while_blocked == ["checkpoint-10", "checkpoint-15", "checkpoint-20", "checkpoint-5"]
    # once the tracker handled them, the identity went into the checkpoints and rotation caught up
    remaining = sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))
    assert remaining == ["checkpoint-20"]
    saved = _state(tmp_path / "out" / "checkpoint-20")["stateful_callbacks"]["HangingSetupTracker"]
    assert saved["attributes"]["run"] == {"run_id": tracker.run_id}
    assert tracker.setups == 1
    assert not list((tmp_path / "out" / "checkpoint-20").glob(".*.tmp"))
    # a resume from it re-attaches the same run
    again = HangingSetupTracker(tmp_path / "rec2.jsonl")
    again.release.set()
    make_trainer(tmp_path / "out", callbacks=[again], max_steps=25, save_steps=5, eval_strategy="no").train(
        resume_from_checkpoint=True)
    assert again.run_id == tracker.run_id


def test_a_failed_setup_switches_the_tracker_off_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class CountingFailure(FailingTracker):
        setups = 0

        def setup(self, run: Any) -> None:
            type(self).setups += 1
            super().setup(run)

    failing = CountingFailure(fail_setup=True)
    caplog.set_level(logging.WARNING, logger="tracklink")
    trainer = make_trainer(tmp_path / "out", callbacks=[failing])
    assert trainer.train().global_step == 20
    assert CountingFailure.setups == 1, "setup is not retried for every later event"
    summary = trainer.callback_handler.tracker_failures()["failing"]
    assert "1 error(s)" in summary and "could not be set up" in summary and "ConnectionError" in summary
    assert any("could not set up its run" in r.getMessage() for r in caplog.records)


# -- errors at construction -------------------------------------------------------------------------


def _build(output_dir: Any, **kwargs: Any) -> Trainer:
    train = kwargs.pop("train_dataset", RegressionDataset(length=16))
    evaluation = kwargs.pop("eval_dataset", None)
    compute_metrics = kwargs.pop("compute_metrics", None)
    args = TrainingArguments(output_dir=str(output_dir), report_to="none", disable_tqdm=True, **kwargs)
    return Trainer(model=RegressionModel(), args=args, train_dataset=train, eval_dataset=evaluation,
                   compute_metrics=compute_metrics)


def test_output_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("keep me")
    with pytest.raises(ValueError, match=r"output_dir=.*a-file.* is a regular file"):
        _build(target)
    with pytest.raises(ValueError, match=r"is below .*a-file.*, which is a regular file"):
        _build(target / "run")
    assert target.read_text() == "keep me"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_output_dir_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="is not writable"):
            _build(locked / "run")
    finally:
        locked.chmod(0o755)


def test_output_dir_on_a_read_only_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root can write anywhere, so a read-only file system is simulated at the probe
    import tempfile

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(ValueError, match=r"is not writable .Read-only file system"):
        _build(tmp_path / "run")


def test_metric_for_best_model_that_no_evaluation_produces(tmp_path: Path) -> None:
    common = dict(eval_strategy="steps", eval_steps=5, save_steps=5, eval_dataset=RegressionDataset(length=8))
    with pytest.raises(ValueError, match=r"metric_for_best_model='accuracy'.*evaluation metrics are eval_loss, eval_runtime"):
        _build(tmp_path, metric_for_best_model="accuracy", **common)
    _build(tmp_path, metric_for_best_model="eval_loss", **common)  # these are fine
    _build(tmp_path, metric_for_best_model="runtime", **common)
    _build(tmp_path, metric_for_best_model="accuracy", compute_metrics=lambda p: {"accuracy": 1.0}, **common)
    named = dict(common, eval_dataset={"a": RegressionDataset(length=8), "b": RegressionDataset(length=8)})
    _build(tmp_path, metric_for_best_model="eval_a_loss", **named)
    with pytest.raises(ValueError, match=r"eval_a_loss, .*eval_b_loss"):
        _build(tmp_path, metric_for_best_model="loss", **named)


def test_empty_training_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train_dataset is empty"):
        _build(tmp_path, train_dataset=RegressionDataset(length=0))


def test_dataset_smaller_than_one_batch_with_drop_last(tmp_path: Path) -> None:
    trainer = _build(tmp_path, train_dataset=RegressionDataset(length=3), per_device_train_batch_size=8,
                     dataloader_drop_last=True)
    with pytest.raises(ValueError, match=r"no batch: train_dataset has 3 sample.*dataloader_drop_last=True"):
        trainer.train()
    assert not list(tmp_path.glob("checkpoint-*"))


def test_empty_stream_fails_before_the_first_step(tmp_path: Path) -> None:
    class Empty(torch.utils.data.IterableDataset):
        def __iter__(self) -> Any:
            return iter(())

    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", max_steps=5, disable_tqdm=True)
    trainer = Trainer(model=RegressionModel(), args=args, train_dataset=Empty(), callbacks=[recorder])
    with pytest.raises(ValueError, match="produced no batch"):
        trainer.train()
    finishes = [r["status"] for r in read_records(recorder.path) if r["kind"] == "finish"]
    assert finishes == ["failed"]


# -- callbacks ----------------------------------------------------------------------------------------


def test_transformers_style_callback_with_other_parameter_names_runs(tmp_path: Path) -> None:
    seen: list[int] = []

    class Renamed(TrainerCallback):
        def on_log(self, _args: Any, st: Any, ctl: Any, **kw: Any) -> None:
            seen.append(st.global_step)

        def on_step_end(self, training_args: Any, trainer_state: Any, trainer_control: Any, **_: Any) -> None:
            if trainer_state.global_step == 10:
                trainer_control.should_training_stop = True

    trainer = make_trainer(tmp_path / "out", callbacks=[Renamed()], eval_strategy="no")
    assert trainer.train().global_step == 10
    assert seen[:2] == [5, 10]


def test_callback_that_cannot_take_transformers_arguments_is_refused() -> None:
    class TwoArgs(TrainerCallback):
        def on_log(self, args: Any, state: Any) -> None:
            pass

    class NoKwargs(TrainerCallback):
        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None) -> None:
            pass

    for plugin, event in ((TwoArgs(), "on_log"), (NoKwargs(), "on_evaluate")):
        with pytest.raises(tracklink.PluginRegistrationError) as info:
            tracklink.CallbackHandler([tracklink.DefaultFlowCallback, plugin])
        message = str(info.value)
        assert type(plugin).__name__ in message and event in message
        assert f"def {event}(self, args, state, control, **kwargs)" in message


def test_hookimpl_with_an_unknown_argument_lists_the_accepted_ones() -> None:
    class Wrong:
        @tracklink.hookimpl
        def on_evaluate(self, metrics: Any, loss: Any) -> None:
            pass

    with pytest.raises(tracklink.PluginRegistrationError) as info:
        tracklink.CallbackHandler([tracklink.DefaultFlowCallback, Wrong()])
    message = str(info.value)
    assert "'loss'" in message and "accepted arguments: args, state, control, model" in message
    assert message.rstrip(")").split("accepted arguments: ")[1].split(" (")[0].endswith("metrics")


# -- NaN ------------------------------------------------------------------------------------------


class NanModel(RegressionModel):
    """Its loss is NaN from ``nan_from`` calls on (or at the calls listed in ``nan_at``)."""

    def __init__(self, nan_from: int | None = None, nan_at: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.calls = 0
        self.nan_from = nan_from
        self.nan_at = nan_at

    def forward(self, input_x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        out = super().forward(input_x, labels)
        if self.training and labels is not None:
            self.calls += 1
            if (self.nan_from is not None and self.calls >= self.nan_from) or self.calls in self.nan_at:
                out["loss"] = out["loss"] * float("nan")
        return out


@pytest.mark.parametrize("nan_filter", [True, False])
def test_nan_loss_is_logged_as_nan_and_warned_once(tmp_path: Path, nan_filter: bool,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tracklink")
    trainer = make_trainer(tmp_path / "out", model=NanModel(nan_from=1), eval_strategy="no",
                           logging_nan_inf_filter=nan_filter)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(math.isnan(v) for v in losses)
    warned = [r.getMessage() for r in caplog.records if "training loss" in r.getMessage()]
    assert len(warned) == 1 and "nan" in warned[0]
    assert any("NaN/inf weights" in r.getMessage() and "checkpoint-10" in r.getMessage() for r in caplog.records)


def test_some_nan_losses_are_filtered_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tracklink")
    model = NanModel(nan_at=(20,))  # the last step: the weights stay finite up to it
    trainer = make_trainer(tmp_path / "out", model=model, eval_strategy="no", save_strategy="no")
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert all(math.isfinite(v) for v in losses)
    assert any("1 of 5 batch losses" in r.getMessage() and "logging_nan_inf_filter" in r.getMessage()
               for r in caplog.records)


# -- inputs ---------------------------------------------------------------------------------------


class RenamedKeys(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": torch.tensor(float(i)), "labels": torch.tensor(1.0), "note_id": torch.tensor(i)}


def test_dropped_columns_are_named_when_the_model_lacks_an_input(tmp_path: Path) -> None:
    trainer = _build(tmp_path, train_dataset=RenamedKeys(), max_steps=2)
    with pytest.raises(ValueError) as info:
        trainer.train()
    message = str(info.value)
    assert "requires 'input_x'" in message and "dropped 'note_id', 'x'" in message
    assert "remove_unused_columns=False" in message


# -- plugins --------------------------------------------------------------------------------------


def test_broken_third_party_plugin_is_listed_in_the_banner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    site = tmp_path / "site"
    info = site / "tracklink_broken_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tracklink-broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tracklink.trackers]\nbrokenone = tracklink_no_such_module:Tracker\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(sys, "path", list(sys.path))
    from tracklink.registry import discover

    others = [name for name in discover() if name != "brokenone"]
    monkeypatch.setenv("TRACKLINK_DISABLE", ",".join(others))  # only the broken plugin is considered
    caplog.set_level(logging.INFO, logger="tracklink")
    trainer = make_trainer(tmp_path / "out", report_to="all", max_steps=1, eval_strategy="no", save_strategy="no")
    trainer.train()
    skipped = [r for r in caplog.records if r.getMessage().startswith("tracklink: skipped:")]
    assert skipped and skipped[0].levelno == logging.WARNING
    assert "brokenone (its plugin failed to load (ModuleNotFoundError" in skipped[0].getMessage()


# -- more mistakes --------------------------------------------------------------------------------


def test_callbacks_that_are_not_callbacks() -> None:
    for wrong in ("wandb", None, 3, ["x"]):
        with pytest.raises(tracklink.PluginRegistrationError, match="which is not a callback") as info:
            tracklink.CallbackHandler([tracklink.DefaultFlowCallback, wrong])
        if wrong == "wandb":
            assert "report_to=['wandb']" in str(info.value)

    class NeedsArgs(TrainerCallback):
        def __init__(self, patience: int) -> None:
            self.patience = patience

    with pytest.raises(tracklink.PluginRegistrationError, match=r"NeedsArgs, whose constructor needs arguments.*NeedsArgs\(\.\.\.\)"):
        tracklink.CallbackHandler([tracklink.DefaultFlowCallback, NeedsArgs])


def test_empty_eval_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"eval_dataset is empty"):
        _build(tmp_path, eval_strategy="steps", eval_steps=5, eval_dataset=RegressionDataset(length=0))
    with pytest.raises(ValueError, match=r"eval_dataset\['b'\] is empty"):
        _build(tmp_path, eval_strategy="steps", eval_steps=5,
               eval_dataset={"a": RegressionDataset(length=4), "b": RegressionDataset(length=0)})


def test_non_string_log_keys_become_strings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trainer = make_trainer(tmp_path / "out", eval_strategy="no", save_strategy="no", max_steps=1)
    caplog.set_level(logging.WARNING, logger="tracklink")
    trainer.log({1: 0.5, ("a", 2): 1.0})  # type: ignore[dict-item]
    assert trainer.state.log_history[-1]["1"] == 0.5 and trainer.state.log_history[-1]["('a', 2)"] == 1.0
    assert any("metric names are strings" in r.getMessage() for r in caplog.records)


def test_resume_from_the_output_dir_itself_suggests_a_checkpoint(trained: Path) -> None:
    trainer = make_trainer(trained, max_steps=40)
    with pytest.raises(ValueError, match=r"not a checkpoint directory.*it holds checkpoints: pass .*checkpoint-30"):
        trainer.train(resume_from_checkpoint=str(trained))


def test_checkpoint_of_another_model_names_the_checkpoint(trained: Path, tmp_path: Path) -> None:
    from torch import nn

    from tracklink.trainer.checkpoint import load_model_weights

    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

    with pytest.raises(ValueError, match=r"checkpoint-30.*does not fit this model \(Other\)"):
        load_model_weights(Other(), trained / "checkpoint-30")
