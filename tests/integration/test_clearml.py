"""ClearML: train through tracklink's Trainer with report_to=["clearml"] in ClearML's offline mode
(CLEARML_OFFLINE_MODE=1, sessions under CLEARML_CACHE_DIR, the no-subprocess clearml.conf from conftest) and
read the session back (task.json, metrics.jsonl) with tests/readers/clearml.py.

Bad inputs handled (each tested below):
* CLEARML_LOG_MODEL=<not a boolean> -> ReportToError naming the value and the accepted ones, before training;
* a ClearML call that raises (Task.init) -> reported by the hub, training finishes;
* removing an old output model fails -> one warning, no more removals, training goes on.

ClearML's offline mode cannot register output models (its offline OutputModel raises AttributeError), so
the checkpoint-registration test replaces OutputModel and Model.remove with recording fakes and opens the
plugin's own ``_can_register_models`` gate (the only fakes here); the real offline path is tested too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import (
    SECRET_ENV,
    SECRET_ENV_VAR,
    SECRETS,
    assert_series,
    files_containing,
    make_trainer,
    raise_at,
    stop_at,
)
from readers.clearml import offline_root, read_session

pytestmark = [
    pytest.mark.sdk("clearml"),
    # clearml's vendored pyhocon uses pyparsing's old camelCase names
    pytest.mark.filterwarnings("ignore:.*deprecated.*use:DeprecationWarning"),
]


def _task_id(trainer) -> str:
    return trainer.callback_handler.trackers["clearml"].identity["task_id"]


@pytest.fixture(autouse=True)
def no_task_left_open():
    from clearml import Task

    assert Task.current_task() is None
    yield
    task = Task.current_task()
    if task is not None:
        task.close()
        pytest.fail(f"a ClearML Task was left open: {task.id}")


def test_scalars_hyperparameters_and_status(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", ["clearml"])
    trainer.train()
    session = read_session(_task_id(trainer))
    history = trainer.state.log_history
    assert_series(session.scalars("train", "loss"), [(h["step"], h["loss"]) for h in history if "loss" in h])
    assert_series(session.scalars("eval", "loss"), [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h])
    assert [s for s, _ in session.scalars("train", "learning_rate")] == [5, 10, 15, 20]
    assert session.scalars("train", "epoch")[-1] == (20, 2.5)  # a series, not a single value
    summary = next(h for h in history if "train_runtime" in h)
    assert session.single_values["train_loss"] == pytest.approx(summary["train_loss"])
    assert session.titles() == {"train", "eval", "Summary"}
    params = session.hyperparams["Transformers"]
    assert params["learning_rate"] == "0.1" and params["max_steps"] == "20"
    assert "hidden_note" in session.configuration["Model Configuration"]
    assert session.hyperparams["properties"]["tracklink_status"] == "success"
    assert session.task["name"] == "Trainer" and session.task["project_name"] == "HuggingFace Transformers"
    stored = json.loads((tmp_path / "out/checkpoint-10/trainer_state.json").read_text())
    assert stored["stateful_callbacks"]["ClearMLCallback"]["attributes"]["run"]["task_id"] == _task_id(trainer)


def test_project_and_task_names_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEARML_PROJECT", "my-project")
    monkeypatch.setenv("CLEARML_TASK", "my-task")
    trainer = make_trainer(tmp_path / "out", ["clearml"], max_steps=5, eval_strategy="no", save_strategy="no")
    trainer.train()
    session = read_session(_task_id(trainer))
    assert (session.task["project_name"], session.task["name"]) == ("my-project", "my-task")


def test_no_secret_in_the_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    trainer = make_trainer(tmp_path / "out", ["clearml"], secrets=True)
    trainer.train()
    task_id = _task_id(trainer)
    assert files_containing(offline_root() / task_id, SECRETS) == []
    assert files_containing(offline_root(), SECRETS) == []  # the session zip too
    session = read_session(task_id)
    assert session.hyperparams["Transformers"]["learning_rate"] == "0.1"
    assert session.hyperparams["Transformers"]["hub_token"] == "<redacted>"
    assert SECRET_ENV not in session.task["name"]


def test_two_trainings_get_two_tasks(tmp_path: Path) -> None:
    first = make_trainer(tmp_path / "a", ["clearml"], max_steps=5, eval_strategy="no", save_strategy="no")
    first.train()
    second = make_trainer(tmp_path / "b", ["clearml"], max_steps=5, eval_strategy="no", save_strategy="no")
    second.train()
    assert _task_id(first) != _task_id(second)
    for trainer in (first, second):
        session = read_session(_task_id(trainer))
        assert session.titles() == {"train", "Summary"} and "Transformers" in session.hyperparams


def test_your_task_is_reused_with_separate_series_and_left_open(tmp_path: Path) -> None:
    from clearml import Task
    from tracklink.integrations.clearml import INIT_SETTINGS

    mine = Task.init(project_name="mine", task_name="outer", reuse_last_task_id=False, **INIT_SETTINGS)
    try:
        for name in ("a", "b"):
            trainer = make_trainer(tmp_path / name, ["clearml"], max_steps=5, eval_strategy="no", save_steps=5)
            trainer.train()
            tracker = trainer.callback_handler.trackers["clearml"]
            assert _task_id(trainer) == mine.id and not tracker.log_model  # default off on your Task
            assert Task.current_task() is mine
        session = read_session(mine.id)
        assert session.titles() == {"train", "train_2", "Summary"}
        assert {"Transformers", "Transformers_2"} <= set(session.hyperparams)
        assert {"train_loss", "train_loss_2"} <= set(session.single_values)
        assert session.hyperparams["properties"]["tracklink_status_2"] == "success"
    finally:
        mine.close()


@pytest.mark.parametrize(("error", "status", "mark"), [(RuntimeError("boom"), "failed", "mark_failed"),
                                                      (KeyboardInterrupt(), "killed", "mark_stopped")])
def test_failed_and_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, status: str,
                           mark: str) -> None:
    from clearml import Task

    calls: list[str] = []
    for name in ("close", "mark_failed", "mark_stopped"):
        real = getattr(Task, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Task, name, spy)
    trainer = make_trainer(tmp_path / "out", ["clearml"], callbacks=[raise_at(7, error)])
    with pytest.raises(type(error)):
        trainer.train()
    session = read_session(_task_id(trainer))
    assert session.hyperparams["properties"]["tracklink_status"] == status
    assert [s for s, _ in session.scalars("train", "loss")] == [5]
    # offline sessions do not keep a status; on a server: closed, then marked failed/stopped
    assert calls[:2] == ["close", mark]


def test_resume_continues_the_same_task(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = make_trainer(out, ["clearml"], callbacks=[stop_at(15)])
    first.train()
    resumed = make_trainer(out, ["clearml"])
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    assert _task_id(resumed) == _task_id(first)
    session = read_session(_task_id(first))
    expected = [(h["step"], h["loss"]) for h in resumed.state.log_history if "loss" in h]
    assert_series(session.scalars("train", "loss"), expected)  # 15 replaced, 20 added, no offset
    assert set(session.hyperparams) == {"Transformers", "properties"}  # no second section


class FakeOutputModel:
    """Stands in for clearml.OutputModel (its offline mode raises); records what it was given."""

    made: list[FakeOutputModel] = []

    def __init__(self, task=None, name=None, framework=None):
        self.task, self.name, self.framework = task, name, framework
        self.files: dict[str, bytes] = {}
        FakeOutputModel.made.append(self)

    def connect(self, task, name=None):
        self.connected = (task, name)

    def update_weights_package(self, weights_path, target_filename, iteration, auto_delete_file, async_enable):
        self.files = {p.relative_to(weights_path).as_posix(): p.read_bytes()
                      for p in Path(weights_path).rglob("*") if p.is_file()}
        self.iteration, self.target, self.async_enable = iteration, target_filename, async_enable


def _fake_models(monkeypatch: pytest.MonkeyPatch, remove) -> list:
    import clearml
    from tracklink.integrations.clearml import ClearMLCallback

    FakeOutputModel.made = []
    removed: list = []
    monkeypatch.setattr(clearml, "OutputModel", FakeOutputModel)
    monkeypatch.setattr(clearml.Model, "remove", classmethod(lambda cls, model, **kw: remove(removed, model, kw)))
    monkeypatch.setattr(ClearMLCallback, "_can_register_models", staticmethod(lambda: True))
    return removed


def test_checkpoints_registered_and_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    removed = _fake_models(monkeypatch, lambda log, model, kw: log.append((model.name, kw)) or True)
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    trainer = make_trainer(tmp_path / "out", ["clearml"], save_steps=5, save_total_limit=2, secrets=True)
    trainer.train()
    assert [m.name for m in FakeOutputModel.made] == ["checkpoint-5", "checkpoint-10", "checkpoint-15",
                                                      "checkpoint-20"]
    assert [m.iteration for m in FakeOutputModel.made] == [5, 10, 15, 20]
    assert all(not m.async_enable and "model.safetensors" in m.files for m in FakeOutputModel.made)
    assert [name for name, _ in removed] == ["checkpoint-5", "checkpoint-10"]
    assert removed[0][1] == {"delete_weights_file": True, "force": True, "raise_on_errors": True}
    config = json.loads(FakeOutputModel.made[0].files["config.json"])  # uploaded configs are redacted
    assert config["service_password"] == "<redacted>"
    assert not any(s.encode() in data for m in FakeOutputModel.made for data in m.files.values() for s in SECRETS)


def test_failed_model_removal_stops_pruning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    def refuse(log, model, kw):
        log.append(model.name)
        raise RuntimeError("permission denied")

    removed = _fake_models(monkeypatch, refuse)
    trainer = make_trainer(tmp_path / "out", ["clearml"], save_steps=5, save_total_limit=1)
    trainer.train()
    assert removed == ["checkpoint-5"] and len(FakeOutputModel.made) == 4
    assert "could not remove model checkpoint-5" in caplog.text
    assert trainer.callback_handler.tracker_failures() == {}


def test_offline_checkpoints_are_not_registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CLEARML_LOG_MODEL", "true")
    trainer = make_trainer(tmp_path / "out", ["clearml"])
    trainer.train()
    assert trainer.callback_handler.tracker_failures() == {}
    assert "cannot register output models in offline mode" in caplog.text


def test_bad_log_model_value_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracklink.errors import ReportToError

    monkeypatch.setenv("CLEARML_LOG_MODEL", "maybe")
    with pytest.raises(ReportToError, match=r"CLEARML_LOG_MODEL='maybe'.*TRUE"):
        make_trainer(tmp_path / "out", ["clearml"])


def test_failing_sdk_does_not_stop_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clearml import Task

    def broken(*args, **kwargs):
        raise ConnectionError("clearml server unreachable")

    monkeypatch.setattr(Task, "init", broken)
    trainer = make_trainer(tmp_path / "out", ["clearml"])
    assert trainer.train().global_step == 20
    assert "clearml server unreachable" in trainer.callback_handler.tracker_failures()["clearml"]


def test_ready() -> None:
    from tracklink.integrations import ClearMLCallback

    assert ClearMLCallback.ready({"CLEARML_OFFLINE_MODE": "1"}) is None
    assert ClearMLCallback.ready({"CLEARML_API_ACCESS_KEY": "a", "CLEARML_API_SECRET_KEY": "b"}) is None
    assert "credentials" in ClearMLCallback.ready({"HOME": "/nonexistent", "CLEARML_CONFIG_FILE": "/nope"})
