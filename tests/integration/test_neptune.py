"""Neptune (1.x client): train through tracklink's Trainer with report_to=["neptune"] in offline mode (in a
chdir'd temp dir, where the client queues operations under ./.neptune/offline/) and replay that queue with
tests/readers/neptune.py; debug mode (in memory) checks round-trips through the client's own .fetch().

Bad inputs handled (each tested below):
* log_checkpoints not in same/last/best/None -> ValueError naming the value and the accepted ones;
* base_namespace empty, a non-bool log_parameters, a non-string api_token/project/name -> ValueError/TypeError;
* an unknown neptune.init_run keyword, or mode="read-only"/unknown -> TypeError/ValueError at construction;
* NEPTUNE_MODE=<unknown> -> ReportToError when report_to is resolved (before training);
* log_checkpoints="best" without load_best_model_at_end -> ValueError when the Trainer is built (check_args);
* get_run on a trainer without a NeptuneCallback -> ValueError.

There is no Neptune server here (the hosted service has closed), so re-attaching a resumed run and re-opening
a stopped run with init_run(with_id=...) are tested with a stand-in init_run that records the arguments and
opens an offline run instead (the only fake in this file).
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
    only_one,
    raise_at,
    stop_at,
)
from readers.neptune import offline_runs

pytestmark = [
    pytest.mark.sdk("neptune"),
    pytest.mark.filterwarnings("ignore:jsonschema.RefResolver is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*NVML.*"),
]

NS = "finetuning"


def _series(run, key: str) -> list[tuple[int, float]]:
    return run.series.get(f"{NS}/{key}", [])


def _only_run(root: Path):
    return only_one(offline_runs(root), lambda run: run.container_id)


def test_metrics_params_and_status(workdir: Path) -> None:
    trainer = make_trainer(workdir / "out", ["neptune"])
    trainer.train()
    run = _only_run(workdir)
    history = trainer.state.log_history
    assert_series(_series(run, "train/loss"), [(h["step"], h["loss"]) for h in history if "loss" in h])
    assert_series(_series(run, "eval/loss"), [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h])
    assert [s for s, _ in _series(run, "train/learning_rate")] == [5, 10, 15, 20]
    # epoch is a series (one point per step although every log call carries it)
    assert _series(run, "train/epoch") == [(5, 0.625), (10, 1.25), (15, 1.875), (20, 2.5)]
    summary = next(h for h in history if "train_runtime" in h)
    assert run.fields[f"{NS}/train/train_loss"] == pytest.approx(summary["train_loss"])
    assert f"{NS}/train/train_runtime" in run.fields
    params = run.namespace(f"{NS}/trainer_parameters")
    assert params["learning_rate"] == 0.1 and params["max_steps"] == 20
    assert run.namespace(f"{NS}/model_parameters")["hidden_note"] == "regression"
    assert run.fields[f"{NS}/status"] == "success" and run.fields["sys/failed"] is False
    assert run.fields["source_code/integrations/tracklink"]
    assert not run.files  # log_checkpoints=None uploads nothing
    stored = json.loads((workdir / "out/checkpoint-10/trainer_state.json").read_text())
    identity = stored["stateful_callbacks"]["NeptuneCallback"]["attributes"]["run"]
    assert identity["container_id"] == run.container_id and identity["mode"] == "offline"


def test_no_secret_reaches_neptune(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracklink.integrations import NeptuneCallback

    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    monkeypatch.setenv("NEPTUNE_API_TOKEN", SECRET_ENV)
    trainer = make_trainer(workdir / "out", "none", secrets=True,
                           callbacks=[NeptuneCallback(log_checkpoints="same", description="secret-free run")])
    trainer.train()
    assert trainer.callback_handler.tracker_failures() == {}
    assert files_containing(workdir / ".neptune", SECRETS) == []
    run = _only_run(workdir)
    params = run.namespace(f"{NS}/trainer_parameters")
    assert params["learning_rate"] == 0.1 and params["hub_token"] == "<redacted>"
    assert SECRET_ENV not in run.fields["sys/name"]


@pytest.mark.parametrize(
    ("policy", "extra", "expected"),
    [
        ("same", {}, {"checkpoint-10", "checkpoint-20"}),
        ("last", {"save_total_limit": 1}, {"checkpoint-20"}),
        # greater_is_better on a loss: the first evaluation stays the best
        ("best", {"load_best_model_at_end": True, "metric_for_best_model": "eval_loss",
                  "greater_is_better": True}, {"checkpoint-10"}),
    ],
)
def test_checkpoint_uploads(workdir: Path, policy: str, extra: dict, expected: set[str]) -> None:
    from tracklink.integrations import NeptuneCallback

    trainer = make_trainer(workdir / "out", "none", callbacks=[NeptuneCallback(log_checkpoints=policy)], **extra)
    trainer.train()
    run = _only_run(workdir)
    uploaded = {path.split("/")[2] for path in run.files}
    assert uploaded == expected
    weights = run.files[f"{NS}/checkpoints/{sorted(expected)[0]}/model.safetensors"]
    # offline: the client reads the bytes at `neptune sync` time, so a copy that survives rotation is uploaded
    assert Path(weights).is_file() and ".neptune" in Path(weights).parts
    copies = {p.name for p in (workdir / ".neptune" / "tracklink-checkpoints" / run.container_id).iterdir()}
    assert copies == expected


def test_best_without_load_best_model_at_end_is_refused_before_training(workdir: Path) -> None:
    from tracklink.integrations import NeptuneCallback

    with pytest.raises(ValueError, match=r"log_checkpoints='best'.*load_best_model_at_end=True"):
        make_trainer(workdir / "out", "none", callbacks=[NeptuneCallback(log_checkpoints="best")])
    assert not (workdir / ".neptune").exists()  # no run was started
    # accepted with load_best_model_at_end, or with another policy
    make_trainer(workdir / "out", "none", callbacks=[NeptuneCallback(log_checkpoints="best")],
                 load_best_model_at_end=True)
    make_trainer(workdir / "out", "none", callbacks=[NeptuneCallback(log_checkpoints="last")])


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"log_checkpoints": "every"}, ValueError, ["'every'", "'same'", "'last'", "'best'"]),
        ({"base_namespace": "/"}, ValueError, ["base_namespace"]),
        ({"log_parameters": "yes"}, TypeError, ["log_parameters", "'yes'"]),
        ({"api_token": 123}, TypeError, ["api_token"]),
        ({"capture_everything": True}, TypeError, ["capture_everything", "capture_stdout"]),
        ({"mode": "read-only"}, ValueError, ["'read-only'", "offline"]),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, error: type, words: list[str]) -> None:
    from tracklink.integrations import NeptuneCallback

    with pytest.raises(error) as info:
        NeptuneCallback(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_bad_mode_variable_fails_before_training(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracklink.errors import ReportToError

    monkeypatch.setenv("NEPTUNE_MODE", "offlne")
    with pytest.raises(ReportToError, match=r"NEPTUNE_MODE='offlne'.*offline"):
        make_trainer(workdir / "out", ["neptune"])


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), "failed"), (KeyboardInterrupt(), "killed")])
def test_failed_and_killed_status(workdir: Path, error: BaseException, status: str) -> None:
    trainer = make_trainer(workdir / "out", ["neptune"], callbacks=[raise_at(7, error)])
    with pytest.raises(type(error)):
        trainer.train()
    run = _only_run(workdir)
    assert run.fields[f"{NS}/status"] == status and run.fields["sys/failed"] is True
    assert [s for s, _ in _series(run, "train/loss")] == [5]


def _train_then_resume(out: Path, report_to: object = ("neptune",)) -> tuple:
    first = make_trainer(out, list(report_to), callbacks=[stop_at(15)])
    first.train()
    stored = json.loads((out / "checkpoint-10/trainer_state.json").read_text())
    identity = stored["stateful_callbacks"]["NeptuneCallback"]["attributes"]["run"]
    resumed = make_trainer(out, list(report_to))
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    return first, resumed, identity


def test_resume_offline_starts_a_linked_run(workdir: Path) -> None:
    _, resumed, identity = _train_then_resume(workdir / "out")
    first_run, second_run = offline_runs(workdir)
    assert identity["container_id"] == first_run.container_id
    assert [s for s, _ in _series(first_run, "train/loss")] == [5, 10, 15]
    history = [h for h in resumed.state.log_history if "loss" in h and h["step"] > 10]
    assert_series(_series(second_run, "train/loss"), [(h["step"], h["loss"]) for h in history])
    assert second_run.fields[f"{NS}/resumed_from_container"] == first_run.container_id
    assert second_run.fields[f"{NS}/resumed_at_step"] == 10


@pytest.fixture
def stand_in_server(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """init_run as on a server (mode async), recording its arguments; each call opens an offline run."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import neptune

    real = neptune.init_run
    calls: list[dict] = []

    def init_run(**kwargs):
        calls.append(dict(kwargs))
        kwargs.pop("with_id", None)
        return real(**{**kwargs, "mode": "offline"})

    monkeypatch.setattr(neptune, "init_run", init_run)
    monkeypatch.setenv("NEPTUNE_MODE", "async")
    return calls


def test_resume_reattaches_by_run_id(workdir: Path, stand_in_server: list[dict]) -> None:
    _, resumed, identity = _train_then_resume(workdir / "out")
    assert identity["run_id"] and identity["mode"] == "async"
    assert "with_id" not in stand_in_server[0]
    assert stand_in_server[1]["with_id"] == identity["run_id"]
    second_run = offline_runs(workdir)[1]
    assert f"{NS}/trainer_parameters/learning_rate" not in second_run.fields  # not logged twice
    assert f"{NS}/resumed_from" not in second_run.fields
    history = [h for h in resumed.state.log_history if "loss" in h and h["step"] > 10]
    assert_series(_series(second_run, "train/loss"), [(h["step"], h["loss"]) for h in history])


def test_get_run_reopens_the_stopped_run(workdir: Path, stand_in_server: list[dict]) -> None:
    from tracklink.integrations import NeptuneCallback

    trainer = make_trainer(workdir / "out", ["neptune"], max_steps=5, eval_strategy="no", save_strategy="no")
    trainer.train()
    first_id = trainer.callback_handler.trackers["neptune"].identity["run_id"]
    run = NeptuneCallback.get_run(trainer)
    assert run.get_state() == "started"
    assert stand_in_server[-1]["with_id"] == first_id
    assert stand_in_server[-1]["capture_hardware_metrics"] is False  # no monitoring on a re-opened run
    assert NeptuneCallback.get_run(trainer) is run
    run.stop()


def test_debug_mode_round_trip_and_run_usable_after_training(workdir: Path) -> None:
    from tracklink.integrations import NeptuneCallback

    trainer = make_trainer(workdir / "out", "none", callbacks=[NeptuneCallback(mode="debug", name="dbg")])
    trainer.train()
    run = NeptuneCallback.get_run(trainer)
    assert run[f"{NS}/trainer_parameters/learning_rate"].fetch() == 0.1
    values = run[f"{NS}/train/loss"].fetch_values()
    expected = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # the debug backend numbers points 0, 1, 2...; the real steps are checked on the offline queue above
    assert list(values["value"]) == pytest.approx(expected)
    assert run[f"{NS}/status"].fetch() == "success" and run["sys/name"].fetch() == "dbg"
    run["after_training/score"] = 1.5  # still usable
    assert run["after_training/score"].fetch() == 1.5
    run.stop()


def test_run_passed_in_is_used_and_left_open(workdir: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import neptune
    from tracklink.integrations import NeptuneCallback

    mine = neptune.init_run(mode="debug", capture_hardware_metrics=False, capture_stdout=False,
                            capture_stderr=False, source_files=[], git_ref=False)
    trainer = make_trainer(workdir / "out", "none", max_steps=5, eval_strategy="no", save_strategy="no",
                           callbacks=[NeptuneCallback(run=mine, base_namespace="custom/ns")])
    trainer.train()
    assert NeptuneCallback.get_run(trainer) is mine and mine.get_state() == "started"
    assert len(mine["custom/ns/train/loss"].fetch_values()) == 1
    mine.stop()


def test_get_run_without_callback() -> None:
    from tracklink.integrations import NeptuneCallback

    trainer = make_trainer("unused-out", "none", max_steps=1)
    with pytest.raises(ValueError, match="no NeptuneCallback"):
        NeptuneCallback.get_run(trainer)


def test_failing_sdk_does_not_stop_training(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import neptune

    def broken(**kwargs):
        raise ConnectionError("neptune server unreachable")

    monkeypatch.setattr(neptune, "init_run", broken)
    trainer = make_trainer(workdir / "out", ["neptune"])
    output = trainer.train()
    assert output.global_step == 20
    assert "neptune server unreachable" in trainer.callback_handler.tracker_failures()["neptune"]


def test_ready() -> None:
    from tracklink.integrations import NeptuneCallback

    assert "NEPTUNE_PROJECT" in NeptuneCallback.ready({"NEPTUNE_MODE": "async"})
    assert NeptuneCallback.ready({"NEPTUNE_MODE": "offline"}) is None
    assert NeptuneCallback.ready({"NEPTUNE_PROJECT": "ws/p", "NEPTUNE_API_TOKEN": "t"}) is None
