"""Weights & Biases: train through tracklink's Trainer with the real SDK in offline mode, then read back
the ``run-<id>.wandb`` transaction log it wrote (tests/readers/wandb.py).

Bad inputs handled (and tested here):
* ``WANDB_LOG_MODEL`` other than end/checkpoint/false (true/1/yes/on: deprecated, mean end) -> error at
  argument validation (report_to resolution) and in ``WandbCallback()``;
* ``WANDB_WATCH`` other than gradients/all/parameters/false -> the same;
* ``WANDB_DISABLED`` truthy -> the tracker is skipped (named explicitly: with a warning);
* no API key and not offline -> not ready (``report_to="all"`` skips it), never a login prompt;
* a failing SDK call (``Run.log`` raising) -> training finishes, the failure is reported;
* secrets on the command line -> W&B system metadata (which records argv) is not collected.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import (
    SECRET_ARG,
    SECRET_ENV,
    SECRET_ENV_VAR,
    SECRETS,
    RegressionConfig,
    assert_series,
    files_containing,
    make_trainer,
    only_one,
    raise_at,
    stop_at,
)
from readers.wandb import WandbRun, read_runs

pytestmark = pytest.mark.sdk("wandb")


def _teardown_wandb() -> None:
    # wandb reads WANDB_DIR & co. once per process (its setup singleton); teardown resets it
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()


@pytest.fixture
def wandb_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Everything wandb writes (runs, staging, cache) goes under one per-test directory."""
    _teardown_wandb()
    root = tmp_path / "wandb"
    for var, sub in (("WANDB_DIR", ""), ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts"),
                     ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(root / sub))
    for var in ("WANDB_LOG_MODEL", "WANDB_WATCH", "WANDB_DISABLED", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    yield root
    _teardown_wandb()


def _runs(root: Path) -> list[WandbRun]:
    _teardown_wandb()  # finish() returns before wandb-core has flushed the transaction log; teardown waits
    return read_runs(root)


def _only_run(root: Path) -> WandbRun:
    return only_one(_runs(root), lambda run: run.path)


def test_metrics_config_and_summary_read_back(tmp_path: Path, wandb_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "tracklink-tests")
    trainer = make_trainer(tmp_path / "out", ["wandb"], run_name="wb-run")
    trainer.train()
    run = _only_run(wandb_dir)
    history = trainer.state.log_history
    assert_series(run.series("train/loss"), [(h["step"], h["loss"]) for h in history if "loss" in h])
    assert_series(run.series("eval/loss"), [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h])
    assert [s for s, _ in run.series("train/learning_rate")] == [5, 10, 15, 20]
    assert run.series("train/epoch")[-1] == (20, 2.5)
    # transformers' end-of-training summary goes to run.summary under the raw names, not to history
    summary = history[-1]
    for key in ("train_runtime", "train_samples_per_second", "train_loss", "total_flos"):
        assert run.summary[key] == pytest.approx(summary[key])
    assert not any("train/train_loss" in row for row in run.history)
    assert {"name": "train/global_step", "glob": "", "step_metric": ""} in run.metrics
    assert {"name": "", "glob": "*", "step_metric": "train/global_step"} in run.metrics
    assert run.config["learning_rate"] == 0.1 and run.config["max_steps"] == 20
    assert run.config["model/num_parameters"] == 2 and run.config["hidden_note"] == "regression"
    assert (run.project, run.name, run.exit_code) == ("tracklink-tests", "wb-run", 0)
    assert run.artifacts == []  # WANDB_LOG_MODEL defaults to false


def test_checkpoint_artifacts_and_final_model(tmp_path: Path, wandb_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_LOG_MODEL", "checkpoint")
    trainer = make_trainer(tmp_path / "out", ["wandb"], save_total_limit=1)
    trainer.train()
    run = _only_run(wandb_dir)
    assert [a["name"] for a in run.artifacts] == [f"model-{run.run_id}"] * 3
    assert {a["type"] for a in run.artifacts} == {"model"}
    first, second, final = run.artifacts
    assert {"epoch_1.25", "checkpoint_global_step_10"} <= set(first["aliases"])
    assert {"epoch_2.5", "checkpoint_global_step_20"} <= set(second["aliases"])
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(first["files"])
    assert first["metadata"]["global_step"] == 10 and first["metadata"]["model/num_parameters"] == 2
    # the final model comes from the last checkpoint, without the optimizer/scheduler/RNG states
    assert "final_model" in final["aliases"] and final["metadata"]["final_model"] is True
    assert {"model.safetensors", "config.json", "model_architecture.txt"} <= set(final["files"])
    assert not {"optimizer.pt", "scheduler.pt", "rng_state.pth"} & set(final["files"])
    assert not (tmp_path / "out" / "checkpoint-10").exists()  # rotation waited for the upload, then ran


def test_end_model_without_checkpoints_uses_a_safetensors_save(tmp_path: Path, wandb_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_LOG_MODEL", "TRUE")  # deprecated spelling of "end"
    with pytest.warns(FutureWarning, match="WANDB_LOG_MODEL"):
        trainer = make_trainer(tmp_path / "out", ["wandb"], max_steps=5, eval_strategy="no", save_strategy="no")
    trainer.train()
    run = _only_run(wandb_dir)
    assert len(run.artifacts) == 1
    artifact = run.artifacts[0]
    assert artifact["aliases"] == ["latest", "final_model"] or set(artifact["aliases"]) == {"latest", "final_model"}
    assert set(artifact["files"]) == {"model.safetensors", "config.json", "model_architecture.txt"}
    assert not list((tmp_path / "out").glob("checkpoint-*"))


class VectorRegression(torch.nn.Module):
    """RegressionModel's task with vector parameters (FSDP cannot shard scalars)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = RegressionConfig()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, input_x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        y = self.linear(input_x[:, None]).sum(dim=1)  # not a view: FSDP hooks the output
        out = {"logits": y}
        if labels is not None:
            out["loss"] = torch.nn.functional.mse_loss(y, labels)
        return out


@pytest.mark.usefixtures("one_process_group")
def test_fsdp_final_model_is_the_consolidated_one(tmp_path: Path, wandb_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """FSDP (a torchrun group of one): the final model is the last checkpoint's consolidated weights,
    without the sharded model or optimizer directories."""
    monkeypatch.setenv("WANDB_LOG_MODEL", "end")
    trainer = make_trainer(tmp_path / "out", ["wandb"], model=VectorRegression(), fsdp="full_shard", use_cpu=True)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-20"
    assert {"pytorch_model_fsdp_0", "optimizer_0", "model.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    (artifact,) = _only_run(wandb_dir).artifacts
    assert "final_model" in artifact["aliases"]
    assert {"model.safetensors", "config.json", "trainer_state.json"} <= set(artifact["files"])
    assert not [f for f in artifact["files"] if f.startswith(("pytorch_model_fsdp_0/", "optimizer_0/"))]


@pytest.mark.usefixtures("one_process_group")
def test_fsdp_without_checkpoints_skips_the_final_model(tmp_path: Path, wandb_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Gathering a sharded model needs every process, and the upload runs on one: it is skipped, said."""
    monkeypatch.setenv("WANDB_LOG_MODEL", "end")
    trainer = make_trainer(tmp_path / "out", ["wandb"], model=VectorRegression(), fsdp="full_shard", use_cpu=True,
                           eval_strategy="no", save_strategy="no", max_steps=4)
    trainer.train()
    assert _only_run(wandb_dir).artifacts == []
    assert "the model is sharded by FSDP" in caplog.text


def test_no_secret_reaches_any_wandb_file(tmp_path: Path, wandb_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    monkeypatch.setenv("WANDB_LOG_MODEL", "checkpoint")  # checkpoints carry the model config: uploaded redacted
    monkeypatch.setattr(sys, "argv", [sys.argv[0], "--hub_token", SECRET_ARG])  # W&B metadata records argv
    trainer = make_trainer(tmp_path / "out", ["wandb"], secrets=True)
    trainer.train()
    assert files_containing(wandb_dir, SECRETS) == []
    run = _only_run(wandb_dir)
    assert run.config["learning_rate"] == 0.1
    assert run.config["hub_token"] == "<redacted>" and run.config["service_password"] == "<redacted>"
    assert SECRET_ENV not in run.name and run.name.startswith("run-")


@pytest.mark.parametrize(("exc", "code"), [(RuntimeError("boom at 7"), 1), (KeyboardInterrupt(), 130)])
def test_failed_and_killed_runs_exit_non_zero(tmp_path: Path, wandb_dir: Path, exc: BaseException,
                                              code: int) -> None:
    trainer = make_trainer(tmp_path / "out", ["wandb"], callbacks=[raise_at(7, exc)])
    with pytest.raises(type(exc)):
        trainer.train()
    run = _only_run(wandb_dir)
    assert run.exit_code == code
    assert [s for s, _ in run.series("train/loss")] == [5]  # what was logged before the failure is kept


def test_resume_reattaches_to_the_same_run(tmp_path: Path, wandb_dir: Path) -> None:
    out = tmp_path / "out"
    first = make_trainer(out, ["wandb"], callbacks=[stop_at(15)])
    first.train()
    resumed = make_trainer(out, ["wandb"])
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    runs = _runs(wandb_dir)
    assert len(runs) == 2, [r.path for r in runs]  # offline: one directory per session of the run
    assert runs[0].run_id == runs[1].run_id
    saved = json.loads((out / "checkpoint-10" / "trainer_state.json").read_text())["stateful_callbacks"]
    assert saved["WandbCallback"]["attributes"]["run"]["run_id"] == runs[0].run_id
    before, after = sorted(runs, key=lambda r: r.series("train/loss")[0][0])
    assert [s for s, _ in before.series("train/loss")] == [5, 10, 15]
    assert [s for s, _ in after.series("train/loss")] == [15, 20]  # continues after the restored step 10
    assert min(row["train/global_step"] for row in after.history) > 10
    assert after.exit_code == 0 and after.config["learning_rate"] == 0.1


def test_a_users_run_is_reused_and_left_open(tmp_path: Path, wandb_dir: Path) -> None:
    import wandb

    user_run = wandb.init(project="mine", name="user-run")
    try:
        trainer = make_trainer(tmp_path / "out", ["wandb"], max_steps=10)
        trainer.train()
        assert wandb.run is user_run  # not finished by tracklink
        user_run.log({"after_training": 1.0})
    finally:
        user_run.finish()
    run = _only_run(wandb_dir)
    assert (run.run_id, run.name) == (user_run.id, "user-run")
    assert [s for s, _ in run.series("train/loss")] == [5, 10]
    assert run.config["learning_rate"] == 0.1


def test_watch_logs_gradient_histograms(tmp_path: Path, wandb_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_WATCH", "all")
    trainer = make_trainer(tmp_path / "out", ["wandb"], max_steps=100, logging_steps=100, eval_strategy="no",
                           save_strategy="no", train_length=800)

    class WaitForSetup:  # the run (and wandb.watch) is set up on the tracker's thread, while training runs
        from tracklink import hookimpl

        @hookimpl
        def on_train_begin(self) -> None:
            trainer.callback_handler.wait_for_trackers()

    trainer.add_callback(WaitForSetup())
    trainer.train()
    run = _only_run(wandb_dir)
    keys = {key for row in run.history for key in row}
    assert {"gradients/a/_type", "parameters/a/_type", "gradients/b/bins"} <= keys, sorted(keys)
    assert trainer.callback_handler.tracker_failures() == {}


def test_failing_sdk_call_does_not_stop_training(tmp_path: Path, wandb_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from wandb.sdk.wandb_run import Run

    def broken_log(self, *args, **kwargs):
        raise ConnectionError("W&B is down")

    monkeypatch.setattr(Run, "log", broken_log)
    trainer = make_trainer(tmp_path / "out", ["wandb"])
    output = trainer.train()
    assert output.global_step == 20
    assert "W&B is down" in trainer.callback_handler.tracker_failures()["wandb"]


def test_bad_environment_values_fail_before_training(tmp_path: Path, wandb_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from tracklink import ReportToError
    from tracklink.integrations import WandbCallback

    monkeypatch.setenv("WANDB_LOG_MODEL", "sometimes")
    with pytest.raises(ReportToError, match=r"WANDB_LOG_MODEL='sometimes'.*end, checkpoint, false"):
        make_trainer(tmp_path / "out", ["wandb"])
    with pytest.raises(ValueError, match="WANDB_LOG_MODEL='sometimes'"):
        WandbCallback()
    monkeypatch.setenv("WANDB_LOG_MODEL", "End")  # case does not matter
    monkeypatch.setenv("WANDB_WATCH", "weights")
    with pytest.raises(ReportToError, match=r"WANDB_WATCH='weights'.*gradients, all, parameters, false"):
        make_trainer(tmp_path / "out", ["wandb"])
    monkeypatch.setenv("WANDB_WATCH", "false")
    monkeypatch.setenv("WANDB_DISABLED", "yes")
    trainer = make_trainer(tmp_path / "out", ["wandb", "tensorboard"])
    assert "wandb" not in trainer.callback_handler.trackers
    assert _runs(wandb_dir) == []


def test_ready_needs_a_key_or_offline_mode_and_never_prompts(tmp_path: Path) -> None:
    from tracklink.integrations import WandbCallback

    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "WANDB_MODE": "online"}
    assert "API key" in WandbCallback.ready(env)
    assert WandbCallback.ready({**env, "WANDB_MODE": "offline"}) is None
    assert WandbCallback.ready({**env, "WANDB_API_KEY": "k" * 40}) is None
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "p" * 40 + "\n")
    (home / ".netrc").chmod(0o600)
    assert WandbCallback.ready(env) is None
    (home / ".netrc").write_text("machine api.wandb.ai login user password\n")  # unparsable: not ready
    assert WandbCallback.ready(env) is not None
    assert WandbCallback.disabled_by({"WANDB_DISABLED": "TRUE"}) and not WandbCallback.disabled_by({})


def test_importing_the_plugin_does_not_import_wandb() -> None:
    code = ("import sys, tracklink.integrations.wandb, tracklink.integrations; "
            "from tracklink.integrations import WandbCallback; assert 'wandb' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
