"""TrainerState / TrainerControl: transformers v5's fields, defaults and JSON form, in both directions.

Interop tests (``@pytest.mark.interop``) compare with the installed ``transformers`` and are skipped when it
is missing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
from pathlib import Path
from typing import Any

import pytest

from tracklink import EarlyStoppingCallback, TrainerControl, TrainerState
from tracklink.state import (
    HUB_STATE_KEY,
    INTERNAL_STATE_KEYS,
    SEARCH_STATE_KEY,
    collect_states,
    saved_attributes,
    state_key,
)

EXPECTED_STATE_DEFAULTS: dict[str, Any] = {
    "epoch": 0,
    "global_step": 0,
    "max_steps": 0,
    "logging_steps": 500,
    "eval_steps": 500,
    "save_steps": 500,
    "train_batch_size": None,
    "num_train_epochs": 0,
    "num_input_tokens_seen": 0,
    "total_flos": 0,
    "log_history": [],
    "best_metric": None,
    "best_global_step": None,
    "best_model_checkpoint": None,
    "is_local_process_zero": True,
    "is_world_process_zero": True,
    "is_hyper_param_search": False,
    "trial_name": None,
    "trial_params": None,
    "stateful_callbacks": {},
}
FLAGS = ("should_training_stop", "should_epoch_stop", "should_save", "should_evaluate", "should_log")

# A realistic log history: training logs, evaluation logs and the final summary, as transformers writes them.
LOG_HISTORY: list[dict[str, Any]] = [
    {"epoch": 0.375, "grad_norm": 1.2345678806304932, "learning_rate": 4.5e-05, "loss": 2.3026, "step": 3},
    {"epoch": 0.5, "eval_accuracy": 0.125, "eval_loss": 2.2958762645721436, "eval_runtime": 0.0123,
     "eval_samples_per_second": 650.407, "eval_steps_per_second": 325.203, "step": 4},
    {"epoch": 0.75, "grad_norm": 0.9876, "learning_rate": 3.125e-05, "loss": 2.1, "step": 6},
    {"epoch": 1.0, "eval_accuracy": 0.25, "eval_loss": 2.0, "eval_runtime": 0.011,
     "eval_samples_per_second": 727.3, "eval_steps_per_second": 363.6, "step": 8},
    {"epoch": 1.0, "step": 8, "total_flos": 1234567.0, "train_loss": 2.2, "train_runtime": 1.5,
     "train_samples_per_second": 10.667, "train_steps_per_second": 5.333},
]


def _hf() -> Any:
    return pytest.importorskip("transformers.trainer_callback")


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            out[f.name] = dataclasses.MISSING
    return out


# -- defaults ---------------------------------------------------------------------------------------


def test_state_defaults_are_transformers_v5_defaults() -> None:
    state = TrainerState()
    assert dataclasses.asdict(state) == EXPECTED_STATE_DEFAULTS
    assert [f.name for f in dataclasses.fields(TrainerState)] == list(EXPECTED_STATE_DEFAULTS)


def test_state_containers_are_not_shared_between_instances() -> None:
    a, b = TrainerState(), TrainerState()
    a.log_history.append({"loss": 1.0, "step": 1})
    a.stateful_callbacks["X"] = {"args": {}, "attributes": {}}
    assert b.log_history == [] and b.stateful_callbacks == {}


def test_control_defaults() -> None:
    control = TrainerControl()
    assert [f.name for f in dataclasses.fields(TrainerControl)] == list(FLAGS)
    assert all(getattr(control, flag) is False for flag in FLAGS)


@pytest.mark.interop
def test_state_fields_and_defaults_match_transformers() -> None:
    hf = _hf()
    assert [f.name for f in dataclasses.fields(TrainerState)] == [f.name for f in dataclasses.fields(hf.TrainerState)]
    assert _defaults(TrainerState) == _defaults(hf.TrainerState)
    assert dataclasses.asdict(TrainerState()) == dataclasses.asdict(hf.TrainerState())
    assert TrainerState().to_json_string() == json.dumps(
        dataclasses.asdict(hf.TrainerState()), indent=2, sort_keys=True) + "\n"


@pytest.mark.interop
def test_control_fields_defaults_and_state_match_transformers() -> None:
    hf = _hf()
    assert _defaults(TrainerControl) == _defaults(hf.TrainerControl)
    hf_control = hf.TrainerControl(should_save=True, should_training_stop=True)
    ours = TrainerControl(should_save=True, should_training_stop=True)
    assert ours.state() == hf_control.state()


# -- JSON round trips --------------------------------------------------------------------------------


def _hf_state_with_everything(hf: Any) -> Any:
    control = hf.TrainerControl(should_save=True, should_log=False)
    early = hf.EarlyStoppingCallback(early_stopping_patience=5, early_stopping_threshold=0.2)
    early.early_stopping_patience_counter = 2
    state = hf.TrainerState(
        epoch=1.0,
        global_step=8,
        max_steps=16,
        logging_steps=3,
        eval_steps=4,
        save_steps=500,
        train_batch_size=2,
        num_train_epochs=2,
        num_input_tokens_seen=4096,
        total_flos=1234567.0,
        log_history=[dict(entry) for entry in LOG_HISTORY],
        best_metric=2.0,
        best_global_step=8,
        best_model_checkpoint="out/checkpoint-8",
        is_hyper_param_search=False,
        trial_name="trial-\u03b1",
        trial_params={"learning_rate": 5e-05, "seed": 3},
        stateful_callbacks=[early, control],
    )
    return state


@pytest.mark.interop
def test_transformers_state_file_loads_and_saves_byte_for_byte(tmp_path: Path) -> None:
    hf = _hf()
    hf_state = _hf_state_with_everything(hf)
    written = tmp_path / "hf_trainer_state.json"
    hf_state.save_to_json(str(written))
    data = json.loads(written.read_text())
    assert data["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"] == {
        "early_stopping_patience_counter": 2}
    assert data["stateful_callbacks"]["TrainerControl"]["args"]["should_save"] is True

    ours = TrainerState.load_from_json(str(written))
    assert dataclasses.asdict(ours) == dataclasses.asdict(hf_state)
    assert ours.log_history[1]["eval_loss"] == 2.2958762645721436
    again = tmp_path / "tracklink_trainer_state.json"
    ours.save_to_json(str(again))
    assert again.read_bytes() == written.read_bytes()


@pytest.mark.interop
def test_transformers_state_file_with_duplicate_callbacks_round_trips(tmp_path: Path) -> None:
    hf = _hf()
    first = hf.EarlyStoppingCallback(early_stopping_patience=2)
    second = hf.EarlyStoppingCallback(early_stopping_patience=7, early_stopping_threshold=0.5)
    hf_state = hf.TrainerState(global_step=4, stateful_callbacks=[first, second, hf.TrainerControl()])
    written = tmp_path / "trainer_state.json"
    hf_state.save_to_json(str(written))
    ours = TrainerState.load_from_json(str(written))
    entry = ours.stateful_callbacks["EarlyStoppingCallback"]
    assert isinstance(entry, list) and [e["args"]["early_stopping_patience"] for e in entry] == [2, 7]
    again = tmp_path / "again.json"
    ours.save_to_json(str(again))
    assert again.read_bytes() == written.read_bytes()


@pytest.mark.interop
def test_tracklink_state_file_loads_in_transformers(tmp_path: Path) -> None:
    hf = _hf()
    control = TrainerControl(should_save=True, should_training_stop=True)
    early = EarlyStoppingCallback(early_stopping_patience=5, early_stopping_threshold=0.2)
    early.early_stopping_patience_counter = 3
    ours = TrainerState(
        epoch=2.0, global_step=16, max_steps=16, logging_steps=3, eval_steps=4, train_batch_size=2,
        num_train_epochs=2, total_flos=99.5, log_history=[dict(e) for e in LOG_HISTORY], best_metric=2.0,
        best_global_step=8, best_model_checkpoint="out/checkpoint-8", trial_params={"lr": 0.1},
        stateful_callbacks=[early, control],
    )
    path = tmp_path / "trainer_state.json"
    ours.save_to_json(str(path))
    theirs = hf.TrainerState.load_from_json(str(path))
    assert dataclasses.asdict(theirs) == dataclasses.asdict(ours)
    # transformers' own writer reproduces the file exactly
    hf_path = tmp_path / "hf.json"
    theirs.save_to_json(str(hf_path))
    assert hf_path.read_bytes() == path.read_bytes()
    # the exported callback states rebuild transformers' objects
    restored = hf.EarlyStoppingCallback(**theirs.stateful_callbacks["EarlyStoppingCallback"]["args"])
    assert restored.early_stopping_patience == 5 and restored.early_stopping_threshold == 0.2
    restored_control = hf.TrainerControl(**theirs.stateful_callbacks["TrainerControl"]["args"])
    assert restored_control.should_training_stop is True


def test_json_form_is_sorted_indented_with_trailing_newline(tmp_path: Path) -> None:
    state = TrainerState(global_step=3, log_history=[{"loss": 1.5, "step": 3}])
    path = tmp_path / "s.json"
    state.save_to_json(str(path))
    text = path.read_text()
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text == json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True) + "\n"
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    loaded = TrainerState.load_from_json(str(path))
    assert loaded == state


def test_unknown_keys_are_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = dataclasses.asdict(TrainerState(global_step=7))
    data["a_field_from_the_future"] = {"x": 1}
    data["another_new_one"] = 3
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        state = TrainerState.load_from_json(str(path))
    assert state.global_step == 7
    assert not hasattr(state, "a_field_from_the_future")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("a_field_from_the_future" in w and "another_new_one" in w for w in warnings), warnings


def test_no_warning_for_a_clean_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "trainer_state.json"
    TrainerState().save_to_json(str(path))
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        TrainerState.load_from_json(str(path))
    assert not caplog.records


# -- compute_steps ---------------------------------------------------------------------------------


def test_compute_steps_with_ratios() -> None:
    state = TrainerState()
    state.compute_steps(types.SimpleNamespace(logging_steps=0.1, eval_steps=0.2, save_steps=0.5), 100)
    assert (state.logging_steps, state.eval_steps, state.save_steps) == (10, 20, 50)


def test_compute_steps_absolute_values_and_ceil() -> None:
    state = TrainerState()
    state.compute_steps(types.SimpleNamespace(logging_steps=7, eval_steps=None, save_steps=0.3), 10)
    assert state.logging_steps == 7
    assert state.eval_steps == 500  # None keeps the default, as in transformers
    assert state.save_steps == 3
    state.compute_steps(types.SimpleNamespace(logging_steps=0.15, eval_steps=0.05, save_steps=1), 7)
    assert (state.logging_steps, state.eval_steps, state.save_steps) == (2, 1, 1)
    assert all(isinstance(v, int) for v in (state.logging_steps, state.eval_steps, state.save_steps))


@pytest.mark.interop
def test_compute_steps_matches_transformers() -> None:
    hf = _hf()
    for values, max_steps in (((0.1, 0.2, 0.5), 100), ((0.15, 0.05, 3), 7), ((5, 0.33, 0.999), 31)):
        args = types.SimpleNamespace(logging_steps=values[0], eval_steps=values[1], save_steps=values[2])
        ours, theirs = TrainerState(), hf.TrainerState()
        ours.compute_steps(args, max_steps)
        theirs.compute_steps(args, max_steps)
        assert (ours.logging_steps, ours.eval_steps, ours.save_steps) == (
            theirs.logging_steps, theirs.eval_steps, theirs.save_steps)


# -- TrainerControl and exported states ------------------------------------------------------------


def test_control_state_round_trip() -> None:
    control = TrainerControl(should_training_stop=True, should_save=True)
    exported = control.state()
    assert exported == {
        "args": {"should_training_stop": True, "should_epoch_stop": False, "should_save": True,
                 "should_evaluate": False, "should_log": False},
        "attributes": {},
    }
    assert json.loads(json.dumps(exported)) == exported
    restored = TrainerControl.from_state(exported)
    assert restored == control and restored is not control


def test_control_private_helpers_reset_like_transformers() -> None:
    control = TrainerControl(*([True] * 5))
    control._new_step()
    assert (control.should_save, control.should_evaluate, control.should_log) == (False, False, False)
    assert control.should_training_stop and control.should_epoch_stop
    control._new_epoch()
    assert not control.should_epoch_stop and control.should_training_stop
    control._new_training()
    assert not control.should_training_stop


@pytest.mark.interop
def test_control_state_loads_from_transformers_export() -> None:
    hf = _hf()
    exported = hf.TrainerControl(should_epoch_stop=True, should_log=True).state()
    assert TrainerControl.from_state(exported) == TrainerControl(should_epoch_stop=True, should_log=True)


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.count = start

    def state(self) -> dict[str, Any]:
        return {"args": {"start": 0}, "attributes": {"count": self.count}}


class Keyed(Counter):
    state_key = "my-counter"


def test_state_built_from_callback_objects() -> None:
    early = EarlyStoppingCallback(early_stopping_patience=5, early_stopping_threshold=0.2)
    state = TrainerState(stateful_callbacks=[early, TrainerControl()])
    assert state.stateful_callbacks == {
        "EarlyStoppingCallback": {"args": {"early_stopping_patience": 5, "early_stopping_threshold": 0.2},
                                  "attributes": {"early_stopping_patience_counter": 0}},
        "TrainerControl": TrainerControl().state(),
    }


def test_non_exportable_objects_are_rejected() -> None:
    with pytest.raises(TypeError, match="object"):
        TrainerState(stateful_callbacks=[object()])


def test_duplicate_stateful_callbacks_do_not_grow_across_saves(tmp_path: Path) -> None:
    """transformers appends every save's states to the list (reference 1.6); tracklink rebuilds it."""
    a, b = Counter(), Counter()
    control = TrainerControl()
    state = TrainerState(stateful_callbacks=[a, b, control])
    assert len(state.stateful_callbacks["Counter"]) == 2
    for step in (2, 4, 6):
        a.count, b.count = step, step * 10
        state.global_step = step
        state.stateful_callbacks = collect_states([a, b, control])
        path = tmp_path / f"checkpoint-{step}.json"
        state.save_to_json(str(path))
        loaded = TrainerState.load_from_json(str(path))
        entries = loaded.stateful_callbacks["Counter"]
        assert len(entries) == 2, entries
        assert [e["attributes"]["count"] for e in entries] == [step, step * 10]  # latest, in order
        assert loaded.stateful_callbacks["TrainerControl"] == control.state()


def test_state_key_override() -> None:
    keyed, plain = Keyed(3), Counter(4)
    assert state_key(keyed) == "my-counter" and state_key(plain) == "Counter"
    states = collect_states([keyed, plain])
    assert states == {"my-counter": keyed.state(), "Counter": plain.state()}
    # two objects of one class can be kept apart by giving them different keys
    other = Keyed(5)
    other.state_key = "my-other-counter"  # type: ignore[misc]
    assert set(collect_states([keyed, other])) == {"my-counter", "my-other-counter"}


def test_empty_state_key_falls_back_to_class_name() -> None:
    obj = Counter()
    obj.state_key = ""  # type: ignore[attr-defined]
    assert state_key(obj) == "Counter"


def test_collect_states_rejects_objects_without_state() -> None:
    with pytest.raises(TypeError, match="state"):
        collect_states([Counter(), object()])


def test_internal_state_keys_keep_their_on_disk_names() -> None:
    """Checkpoints written by earlier versions store tracklink's entries under these names."""
    assert (HUB_STATE_KEY, SEARCH_STATE_KEY) == ("TracklinkHub", "TracklinkSearch")
    assert frozenset({"TracklinkHub", "TracklinkSearch"}) == INTERNAL_STATE_KEYS


@pytest.mark.parametrize("entries, expected", [
    ({"TracklinkSearch": {"args": {}, "attributes": {"name": "s", "trial": 2}}}, {"name": "s", "trial": 2}),
    ({"TracklinkSearch": [{"args": {}, "attributes": {"trial": 1}}, {"attributes": {"trial": 2}}]}, {"trial": 1}),
    ({}, {}),
    (None, {}),
    ("garbage", {}),
    ({"TracklinkSearch": None}, {}),
    ({"TracklinkSearch": []}, {}),
    ({"TracklinkSearch": [None]}, {}),
    ({"TracklinkSearch": "garbage"}, {}),
    ({"TracklinkSearch": {"args": {}}}, {}),
    ({"TracklinkSearch": {"attributes": ["not", "a", "mapping"]}}, {}),
])
def test_saved_attributes_tolerates_missing_and_malformed_entries(entries: Any, expected: dict) -> None:
    state = types.SimpleNamespace(stateful_callbacks=entries)
    assert saved_attributes(state, SEARCH_STATE_KEY) == expected


def test_saved_attributes_is_a_copy_and_reads_objects_without_the_field() -> None:
    state = TrainerState(stateful_callbacks={HUB_STATE_KEY: {"args": {}, "attributes": {"tracker_failures": {}}}})
    attributes = saved_attributes(state, HUB_STATE_KEY)
    attributes["extra"] = 1
    assert state.stateful_callbacks[HUB_STATE_KEY]["attributes"] == {"tracker_failures": {}}
    assert saved_attributes(object(), HUB_STATE_KEY) == {}


def test_internal_state_keys_are_spelt_in_one_place() -> None:
    """The package code names tracklink's state entries through the constants only."""
    root = Path(__file__).resolve().parents[2]
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for package in ("core", "integrations", "trainer")
        for path in sorted((root / package).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for key in INTERNAL_STATE_KEYS
        if (f'"{key}"' in line or f"'{key}'" in line) and path != root / "core" / "state.py"
    ]
    assert offenders == []
