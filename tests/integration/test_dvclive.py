"""DVCLive: train through tracklink's Trainer and read back the files the real DVCLive wrote
(``plots/metrics/*.tsv``, ``metrics.json``, ``params.yaml``, ``dvc.yaml``, ``*.dvc`` and the DVC cache).

Bad inputs handled (each has a test below):
* ``DVCLiveCallback(live="not a Live")``            -> TypeError naming the type;
* ``DVCLiveCallback(live=Live(...), dir="x")``      -> TypeError (either a Live or its arguments);
* ``DVCLiveCallback(dirr="x")`` (unknown argument)  -> TypeError listing Live's arguments;
* ``DVCLiveCallback(log_model="best")``             -> ValueError listing the accepted values;
* ``HF_DVCLIVE_LOG_MODEL=best`` with report_to      -> ReportToError before training;
* ``HF_DVCLIVE_LOG_MODEL=best`` with an instance    -> ValueError at construction.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import tracklink
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
from readers import dvclive as reader

pytestmark = [
    pytest.mark.sdk("dvclive"),
    # dvc's own deprecation noise (pygtrie's _NoneStep.value) while it tracks artifacts
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]


@pytest.fixture(autouse=True)
def own_working_directory(workdir: Path) -> Path:
    """Every test in its own working directory: started inside a git checkout (this repository),
    DVCLive runs `dvc init` at its root."""
    return workdir


def read_yaml(path: Path) -> Any:
    import yaml  # a DVCLive dependency: absent from the environment without SDKs

    return yaml.safe_load(path.read_text())


def _callback(live_dir: Path, **kwargs):
    from tracklink.integrations import DVCLiveCallback

    return DVCLiveCallback(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, **kwargs)


def test_metrics_summary_and_params_read_back(tmp_path: Path) -> None:
    live_dir = tmp_path / "live"
    trainer = make_trainer(tmp_path / "out", ["dvclive"], callbacks=[_callback(live_dir)])
    trainer.train()
    history = trainer.state.log_history
    train_logs = [h for h in history if "loss" in h]
    eval_logs = [h for h in history if "eval_loss" in h]
    assert_series(reader.series(live_dir, "loss"), [(h["step"], h["loss"]) for h in train_logs])
    assert_series(reader.series(live_dir, "eval/loss"), [(h["step"], h["eval_loss"]) for h in eval_logs])
    assert [s for s, _ in reader.series(live_dir, "learning_rate")] == [5, 10, 15, 20]
    # DVCLive's step is the global step: the train and eval logs at step 10 share it, and the epoch that
    # both carry is written once per step
    assert [s for s, _ in reader.series(live_dir, "epoch")] == [5, 10, 15, 20]
    names = reader.metric_names(live_dir)
    assert {"loss", "grad_norm", "learning_rate", "epoch", "eval/loss"} <= names
    assert not any(n.startswith("train/") for n in names), "the final summary is not plotted"

    summary = reader.summary(live_dir)
    final = next(h for h in history if "train_loss" in h)
    assert summary["step"] == 20
    assert summary["train"]["loss"] == pytest.approx(final["train_loss"])
    assert summary["train"]["runtime"] == pytest.approx(final["train_runtime"])
    assert summary["eval"]["loss"] == pytest.approx(eval_logs[-1]["eval_loss"])
    assert summary["total_flos"] == final["total_flos"]

    params = reader.params(live_dir)
    assert params["learning_rate"] == 0.1 and params["max_steps"] == 20
    assert trainer.state.stateful_callbacks["DVCLiveCallback"]["attributes"]["run"] == {"dir": str(live_dir)}


def test_defaults_write_dvclive_dir_in_cwd(workdir: Path) -> None:
    trainer = make_trainer(workdir / "out", "dvclive", max_steps=5, eval_strategy="no", save_strategy="no")
    trainer.train()
    assert [s for s, _ in reader.series(workdir / "dvclive", "loss")] == [5]
    assert reader.params(workdir / "dvclive")["learning_rate"] == 0.1
    dvcyaml = read_yaml(workdir / "dvc.yaml")  # DVCLive's default dvcyaml
    assert "dvclive/metrics.json" in dvcyaml["metrics"]


def test_no_secret_in_any_file(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    trainer = make_trainer(workdir / "out", "dvclive", secrets=True, max_steps=10)
    trainer.train()
    assert files_containing(workdir / "dvclive", SECRETS) == []
    assert SECRET_ENV not in (workdir / "dvc.yaml").read_text()
    params = reader.params(workdir / "dvclive")
    assert params["learning_rate"] == 0.1
    assert params["hub_token"] == "<redacted>"


def test_log_model_all_tracks_every_checkpoint(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvc.repo import Repo

    Repo.init(no_scm=True)
    monkeypatch.setenv("HF_DVCLIVE_LOG_MODEL", "all")
    trainer = make_trainer(workdir / "out", "dvclive")
    trainer.train()
    for step in (10, 20):
        dvc_file = read_yaml(workdir / "out" / f"checkpoint-{step}.dvc")
        out = dvc_file["outs"][0]
        assert out["path"] == f"checkpoint-{step}" and out["md5"].endswith(".dir")
        cached = workdir / ".dvc" / "cache" / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
        assert cached.is_file(), "the checkpoint is in the DVC cache"
    assert (workdir / "out" / "checkpoint-20" / "model.safetensors").is_file()


@pytest.mark.parametrize("best", [False, True])
def test_log_model_true_logs_the_final_checkpoint_once(workdir: Path, best: bool) -> None:
    from dvc.repo import Repo

    from tracklink.integrations import DVCLiveCallback

    Repo.init(no_scm=True)
    # "best" by a rising loss: the first evaluation (step 10) stays the best, so best != last
    extra = dict(load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True) if best else {}
    trainer = make_trainer(workdir / "out", "dvclive", callbacks=[DVCLiveCallback(log_model=True)], **extra)
    trainer.train()
    artifacts = read_yaml(workdir / "dvc.yaml")["artifacts"]
    name = "best" if best else "last"
    step = 10 if best else 20
    assert trainer.state.best_global_step == (10 if best else None)
    assert artifacts == {name: {"path": f"dvclive/artifacts/checkpoint-{step}", "type": "model"}}
    copied = workdir / "dvclive" / "artifacts"
    assert (copied / f"checkpoint-{step}.dvc").is_file()
    assert (copied / f"checkpoint-{step}" / "model.safetensors").is_file()
    assert not (workdir / "out" / "checkpoint-10.dvc").exists(), "only the final model is logged"


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_live_end_is_called_when_training_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type) -> None:
    from dvclive import Live

    ended: list[int] = []
    real_end = Live.end

    def end(self):
        result = real_end(self)
        ended.append(self.step)
        return result

    monkeypatch.setattr(Live, "end", end)

    live_dir = tmp_path / "live"
    trainer = make_trainer(tmp_path / "out", ["dvclive"], callbacks=[_callback(live_dir), raise_at(7, error("boom"))])
    with pytest.raises(error):
        trainer.train()
    assert ended == [5], "live.end() once, at the last logged step"
    assert reader.summary(live_dir)["step"] == 5
    assert [s for s, _ in reader.series(live_dir, "loss")] == [5]


def test_resume_reopens_the_live_dir_and_continues_after_the_restored_step(workdir: Path) -> None:
    out = workdir / "out"
    make_trainer(out, "dvclive", callbacks=[stop_at(15)]).train()
    live_dir = workdir / "dvclive"
    assert [s for s, _ in reader.series(live_dir, "loss")] == [5, 10, 15]

    resumed = make_trainer(out, "dvclive")
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    assert sorted(p.name for p in workdir.iterdir() if p.is_dir()) == ["dvclive", "out"], "same Live dir"
    loss = reader.series(live_dir, "loss")
    assert [s for s, _ in loss] == [5, 10, 15, 20], "the old step-15 row was replaced, not duplicated"
    step15 = next(h["loss"] for h in resumed.state.log_history if h.get("step") == 15 and "loss" in h)
    assert loss[2][1] == pytest.approx(step15)
    assert [s for s, _ in reader.series(live_dir, "eval/loss")] == [10, 20]
    assert reader.params(live_dir)["learning_rate"] == 0.1
    assert reader.summary(live_dir)["step"] == 20


def test_failing_sdk_call_does_not_stop_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    from dvclive import Live

    def broken(self, *args, **kwargs):
        raise OSError("disk full (planted)")

    monkeypatch.setattr(Live, "log_metric", broken)
    caplog.set_level(logging.WARNING, logger="tracklink")
    trainer = make_trainer(tmp_path / "out", ["dvclive"], callbacks=[_callback(tmp_path / "live")])
    assert trainer.train().global_step == 20
    failures = trainer.callback_handler.tracker_failures()
    assert "disk full (planted)" in failures["dvclive"]
    assert any("tracker 'dvclive' failed" in r.getMessage() for r in caplog.records)


# -- bad inputs --------------------------------------------------------------------------------------


def test_bad_constructor_arguments(tmp_path: Path) -> None:
    from dvclive import Live
    from tracklink.integrations import DVCLiveCallback

    with pytest.raises(TypeError, match=r"must be a dvclive\.Live or None, got str"):
        DVCLiveCallback(live="not a Live")
    live = Live(dir=str(tmp_path / "l"), save_dvc_exp=False, dvcyaml=None)
    with pytest.raises(TypeError, match="either an existing Live or the arguments"):
        DVCLiveCallback(live=live, dir="x")
    with pytest.raises(TypeError, match=r"unknown dvclive.Live argument\(s\) \['dirr'\]; accepted: dir, resume"):
        DVCLiveCallback(dirr="x")
    with pytest.raises(ValueError, match=r"log_model\)='best' is not accepted; accepted values: True, False, None or 'all'"):
        DVCLiveCallback(log_model="best")
    assert DVCLiveCallback(live=live, log_model="ALL").log_model == "all"


def test_bad_log_model_env_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracklink.integrations import DVCLiveCallback

    monkeypatch.setenv("HF_DVCLIVE_LOG_MODEL", "best")
    with pytest.raises(tracklink.ReportToError, match="HF_DVCLIVE_LOG_MODEL='best' is not accepted; accepted values: true"):
        make_trainer(tmp_path / "out", ["dvclive"])
    with pytest.raises(ValueError, match="HF_DVCLIVE_LOG_MODEL='best' is not accepted"):
        DVCLiveCallback()
    assert not (tmp_path / "out").exists()


def test_given_live_is_used_and_ended(tmp_path: Path) -> None:
    from dvclive import Live
    from tracklink.integrations import DVCLiveCallback

    live = Live(dir=str(tmp_path / "mine"), save_dvc_exp=False, dvcyaml=None)
    callback = DVCLiveCallback(live=live)
    make_trainer(tmp_path / "out", ["dvclive"], callbacks=[callback], max_steps=10).train()
    assert callback.live is live
    assert [s for s, _ in reader.series(tmp_path / "mine", "loss")] == [5, 10]
    assert reader.summary(tmp_path / "mine")["step"] == 10


def test_metric_names_follow_dvclive_on_the_prefix_only() -> None:
    from tracklink.integrations.dvclive import dvclive_metric_name

    assert dvclive_metric_name("loss") == "loss"
    assert dvclive_metric_name("eval_loss") == "eval/loss"
    assert dvclive_metric_name("eval_train_acc") == "eval/train_acc", "DVCLive's rule replaced both"
    assert dvclive_metric_name("train_runtime") == "train/runtime"
    assert dvclive_metric_name("test_accuracy@1") == "test/accuracy@1"
    assert dvclive_metric_name("eval_../../etc") == "eval/etc"
    assert dvclive_metric_name("a b:c") == "a_b_c"
