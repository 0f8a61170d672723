"""MLflow: train through tracklink's Trainer with ``report_to=["mlflow"]`` and read back what the real SDK
wrote, over REST (``MlflowClient`` against a real ``mlflow server`` on 127.0.0.1 with a SQLite backend, see
``mlflow_server.py``) and from a local SQLite store without a server.

Bad inputs handled (each fails before training with the value and what is accepted):
* ``MLFLOW_TAGS`` that is not JSON, or JSON that is not an object;
* ``MLFLOW_MAX_LOG_PARAMS`` that is not digits only (``"1e3"``, ``"-5"``);
* ``MLFLOW_RUN_ID`` that is not a run id (``"bad id!"``);
* boolean switches (``HF_MLFLOW_LOG_ARTIFACTS``, ``MLFLOW_NESTED_RUN``, ``MLFLOW_FLATTEN_PARAMS``,
  ``DISABLE_MLFLOW_INTEGRATION``) with a value that is not true/false/1/0/yes/no/on/off;
and at run time (the tracker fails, training does not): a run id that does not exist, a deleted experiment,
an SDK call that raises, a server that goes away for a while (metrics are retried/spooled, none is lost).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest
from mlflow_server import MlflowServer, mlflow_server  # noqa: F401 - the session fixture

from helpers import (
    SECRET_ENV,
    SECRET_ENV_VAR,
    SECRETS,
    RegressionModel,
    assert_series,
    files_containing,
    make_trainer,
    raise_at,
    sigterm_during_training,
    stop_at,
)

pytestmark = pytest.mark.sdk("mlflow")

TESTS = Path(__file__).resolve().parent.parent
#: a token used as a URL's whole user part (``https://TOKEN@host``): masked by the central redaction only
URL_TOKEN = "ghp_tokenonly-SECRET-4d1f07"


@pytest.fixture
def server_env(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch, workdir: Path):  # noqa: F811
    """MLFLOW_TRACKING_URI -> the server, a fresh experiment per test; returns (client, experiment name)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    name = f"exp-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    return mlflow_server.client(), name


def only_run(client, experiment_name: str):
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"experiment {experiment_name} was not created"
    runs = client.search_runs([experiment.experiment_id], run_view_type=3)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def expected(trainer, key: str) -> list[tuple[int, float]]:
    return [(h["step"], h[key]) for h in trainer.state.log_history if key in h]


def tracker(trainer):
    return trainer.callback_handler.trackers["mlflow"]


# -- metrics, params, statuses -----------------------------------------------------------------------


def test_metrics_params_and_finished_status_over_rest(server_env, tmp_path: Path) -> None:
    client, experiment = server_env
    trainer = make_trainer(tmp_path / "out", ["mlflow"], run_name="my-run")
    trainer.train()
    run = only_run(client, experiment)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "my-run"
    for key in ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch"):
        assert_series(history(client, run.info.run_id, key), expected(trainer, key))
    for key in ("train_loss", "train_runtime", "train_samples_per_second", "total_flos"):
        assert [s for s, _ in history(client, run.info.run_id, key)] == [20], key
    assert run.data.params["learning_rate"] == "0.1"
    assert run.data.params["max_steps"] == "20"
    assert run.data.params["a"] == "0.0"  # model config (RegressionConfig) merged under the arguments
    assert tracker(trainer).identity["run_id"] == run.info.run_id
    assert trainer.callback_handler.tracker_failures() == {}
    # the same run, read with plain REST calls
    url = f"{os.environ['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/runs/get?run_id={run.info.run_id}"
    with urllib.request.urlopen(url, timeout=30) as response:
        raw = json.loads(response.read())["run"]
    assert raw["info"]["status"] == "FINISHED"
    assert {"key": "learning_rate", "value": "0.1"} in raw["data"]["params"]


def test_local_sqlite_store_without_server(workdir: Path) -> None:
    """No MLFLOW_TRACKING_URI: MLflow 3's default, sqlite:///mlflow.db in the working directory."""
    trainer = make_trainer(workdir / "out", ["mlflow"], eval_strategy="no", save_strategy="no", max_steps=10)
    trainer.train()
    assert (workdir / "mlflow.db").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs(["0"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert_series(history(client, runs[0].info.run_id, "loss"), expected(trainer, "loss"))
    assert runs[0].data.params["learning_rate"] == "0.1"
    assert not (workdir / "mlruns" / "0" / "meta.yaml").exists()  # no legacy file store


def test_failed_run_keeps_metrics(server_env, tmp_path: Path) -> None:
    client, experiment = server_env
    trainer = make_trainer(tmp_path / "out", ["mlflow"], callbacks=[raise_at(7, RuntimeError("boom"))])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    run = only_run(client, experiment)
    assert run.info.status == "FAILED"
    assert [s for s, _ in history(client, run.info.run_id, "loss")] == [5]


def test_keyboard_interrupt_is_killed(server_env, tmp_path: Path) -> None:
    client, experiment = server_env
    trainer = make_trainer(tmp_path / "out", ["mlflow"], callbacks=[raise_at(7, KeyboardInterrupt())])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert only_run(client, experiment).info.status == "KILLED"




def test_sigterm_ends_run_killed_with_every_metric(server_env, tmp_path: Path) -> None:
    client, experiment = server_env
    result = sigterm_during_training(tmp_path, ["mlflow"])
    logged = result.logged
    assert result.returncode == 143, result.output[-3000:]
    run = only_run(client, experiment)
    assert run.info.status == "KILLED"
    steps = [s for s, _ in history(client, run.info.run_id, "loss")]
    assert set(logged) <= set(steps), (steps, logged)  # every metric logged before the signal...
    assert steps == list(range(2, steps[-1] + 1, 2))  # ...once, with no gap


@pytest.mark.slow
@pytest.mark.parametrize("retries", ["default", "0"])
def test_server_outage_loses_no_metric(server_env, mlflow_server: MlflowServer, tmp_path: Path,  # noqa: F811
                                       monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                       retries: str) -> None:
    """The server is stopped at step 8 (once the run exists) and restarted on the same port and SQLite file
    while training goes on. With MLflow's HTTP retries ("default": 7 with exponential backoff) the worker's
    request waits for the server; without them ("0") the points go to the tracker's spool and are replayed
    when the server answers again, at the latest when the run ends."""
    client, experiment = server_env
    if retries == "0":
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    restarted = threading.Event()
    trainers = []

    class Outage:
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 8:
                trainers[0].callback_handler.wait_for_trackers()  # the run exists; metrics at 5 are in
                mlflow_server.stop()
                assert not mlflow_server.healthy()
                threading.Thread(target=lambda: (mlflow_server.start(), restarted.set()), daemon=True).start()
            if state.global_step == 18 and retries == "0":
                assert restarted.wait(300)  # without HTTP retries the final flush needs the server back

    trainers.append(make_trainer(tmp_path / "out", ["mlflow"], callbacks=[Outage()]))
    trainer = trainers[0]
    trainer.train()  # the final drain waits for the worker to deliver everything
    assert restarted.wait(300)
    assert trainer.callback_handler.tracker_failures() == {}
    if retries == "0":
        assert "metric points are kept" in caplog.text  # the spool was used
    run = only_run(client, experiment)
    assert run.info.status == "FINISHED"
    assert_series(history(client, run.info.run_id, "loss"), expected(trainer, "loss"))
    assert_series(history(client, run.info.run_id, "eval_loss"), expected(trainer, "eval_loss"))
    assert [s for s, _ in history(client, run.info.run_id, "train_loss")] == [20]


# -- runs: resume, MLFLOW_RUN_ID, the user's run, nesting --------------------------------------------


def test_resume_reattaches_to_the_same_run(server_env, tmp_path: Path) -> None:
    client, experiment = server_env
    out = tmp_path / "out"
    first = make_trainer(out, ["mlflow"], callbacks=[stop_at(15)])
    first.train()
    run_id = only_run(client, experiment).info.run_id
    state = json.loads((out / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["MLflowCallback"]["attributes"]["run"]["run_id"] == run_id

    resumed = make_trainer(out, ["mlflow"])
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    run = only_run(client, experiment)  # still exactly one run
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert [s for s, _ in history(client, run_id, "loss")] == [5, 10, 15, 20]  # 15 not logged twice
    assert [s for s, _ in history(client, run_id, "eval_loss")] == [10, 20]
    assert [s for s, _ in history(client, run_id, "train_runtime")] == [15, 20]  # one per train() call


def test_evaluate_then_resume_on_the_same_trainer_keeps_one_run(server_env, tmp_path: Path) -> None:
    """evaluate() re-opens the finished run on the worker thread while train(resume_from_checkpoint=True)
    restores the checkpoint's run identity on the training thread: still one run."""
    client, experiment = server_env
    trainer = make_trainer(tmp_path / "out", ["mlflow"], max_steps=10)
    trainer.train()
    trainer.evaluate()
    trainer.train(resume_from_checkpoint=True)
    run = only_run(client, experiment)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history(client, run.info.run_id, "loss")] == [5, 10]


def test_mlflow_run_id_really_reattaches(server_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, experiment = server_env
    experiment_id = client.create_experiment(experiment)
    existing = client.create_run(experiment_id, run_name="prepared")
    client.set_terminated(existing.info.run_id, "FINISHED")
    monkeypatch.setenv("MLFLOW_RUN_ID", existing.info.run_id)
    trainer = make_trainer(tmp_path / "out", ["mlflow"], max_steps=10, eval_strategy="no", save_strategy="no")
    trainer.train()
    run = only_run(client, experiment)
    assert run.info.run_id == existing.info.run_id and run.info.run_name == "prepared"
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history(client, run.info.run_id, "loss")] == [5, 10]

    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef0123456789abcdef")  # does not exist
    missing = make_trainer(tmp_path / "out2", ["mlflow"], max_steps=5, eval_strategy="no", save_strategy="no")
    missing.train()  # training goes on; the tracker reports its failure
    assert "0123456789abcdef0123456789abcdef" in missing.callback_handler.tracker_failures()["mlflow"]


def test_active_user_run_is_reused_and_left_open(server_env, tmp_path: Path) -> None:
    client, _ = server_env
    import mlflow

    with mlflow.start_run(run_name="users-run") as user_run:
        trainer = make_trainer(tmp_path / "out", ["mlflow"], max_steps=10, eval_strategy="no", save_strategy="no")
        trainer.train()
        assert client.get_run(user_run.info.run_id).info.status == "RUNNING"  # left open
        assert tracker(trainer).identity["run_id"] == user_run.info.run_id
    run = client.get_run(user_run.info.run_id)
    assert run.info.status == "FINISHED"  # ended by the user's with-block
    assert [s for s, _ in history(client, run.info.run_id, "loss")] == [5, 10]
    assert run.data.params["learning_rate"] == "0.1"


def test_nested_run_under_the_user_run(server_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = server_env
    monkeypatch.setenv("MLFLOW_NESTED_RUN", "true")
    import mlflow

    with mlflow.start_run() as parent:
        trainer = make_trainer(tmp_path / "out", ["mlflow"], max_steps=5, eval_strategy="no", save_strategy="no")
        trainer.train()
        child_id = tracker(trainer).identity["run_id"]
        assert child_id != parent.info.run_id
        child = client.get_run(child_id)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert client.get_run(parent.info.run_id).info.status == "RUNNING"


# -- params, names, tags, artifacts, secrets ---------------------------------------------------------


def test_params_truncated_and_batched(server_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, experiment = server_env
    from mlflow.tracking import MlflowClient
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    batches: list[int] = []
    real = MlflowClient.log_batch

    def spy(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
        if params:
            batches.append(len(params))
        return real(self, run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous)

    monkeypatch.setattr(MlflowClient, "log_batch", spy)
    model = RegressionModel()
    model.config = {f"key_{i:03d}": i for i in range(250)}
    model.config["long_value"] = "x" * 10_000
    trainer = make_trainer(tmp_path / "out", ["mlflow"], model=model, max_steps=5, eval_strategy="no",
                           save_strategy="no")
    trainer.train()
    params = only_run(client, experiment).data.params
    assert all(params[f"key_{i:03d}"] == str(i) for i in range(250))
    assert len(params["long_value"]) == MAX_PARAM_VAL_LENGTH
    assert params["long_value"].endswith("…[truncated]") and params["long_value"].startswith("xxx")
    assert params["learning_rate"] == "0.1"
    assert len(params) == sum(batches) and max(batches) <= 100 and len(batches) >= 3

    monkeypatch.setenv("MLFLOW_MAX_LOG_PARAMS", "30")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment + "-max")
    make_trainer(tmp_path / "out2", ["mlflow"], model=model, max_steps=5, eval_strategy="no",
                 save_strategy="no").train()
    params = only_run(client, experiment + "-max").data.params
    assert sorted(params) == sorted(f"key_{i:03d}" for i in range(30))  # the first 30, model config first


def test_flatten_params(server_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, experiment = server_env
    model = RegressionModel()
    model.config = {"nested": {"depth": 3, "inner": {"width": 8}}, "labels": ["a", "b"]}
    kwargs = dict(model=model, max_steps=5, eval_strategy="no", save_strategy="no")
    make_trainer(tmp_path / "out", ["mlflow"], **kwargs).train()
    params = only_run(client, experiment).data.params
    assert json.loads(params["nested"]) == {"depth": 3, "inner": {"width": 8}}
    assert json.loads(params["labels"]) == ["a", "b"]

    monkeypatch.setenv("MLFLOW_FLATTEN_PARAMS", "1")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment + "-flat")
    make_trainer(tmp_path / "out2", ["mlflow"], **kwargs).train()
    params = only_run(client, experiment + "-flat").data.params
    assert params["nested.depth"] == "3" and params["nested.inner.width"] == "8" and "nested" not in params


def test_metric_names_sanitised_and_tags(server_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, experiment = server_env
    monkeypatch.setenv("MLFLOW_TAGS", json.dumps({"team": "nlp", "ticket": 42}))
    trainer = make_trainer(tmp_path / "out", ["mlflow"], max_steps=5, eval_strategy="no", save_strategy="no")
    trainer.train()
    trainer.log({"eval_cosine_accuracy@1": 0.75, "eval_f1(macro)": 0.5, "note": "text is skipped"})
    trainer.callback_handler.wait_for_trackers()
    run = only_run(client, experiment)
    assert history(client, run.info.run_id, "eval_cosine_accuracy_1") == [(5, 0.75)]
    assert history(client, run.info.run_id, "eval_f1_macro_") == [(5, 0.5)]
    assert run.data.tags["team"] == "nlp" and run.data.tags["ticket"] == "42"
    assert trainer.callback_handler.tracker_failures() == {}


def test_checkpoint_artifacts_and_no_secrets(server_env, mlflow_server: MlflowServer, tmp_path: Path,  # noqa: F811
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    client, experiment = server_env
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    monkeypatch.setenv("HF_MLFLOW_LOG_ARTIFACTS", "true")
    monkeypatch.setenv("MLFLOW_TAGS", json.dumps({"team": "nlp", "db": f"postgresql://u:{SECRETS[2]}@h/db",
                                                  "repo": f"https://{URL_TOKEN}@github.com/org/x.git"}))
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRETS[0])
    trainer = make_trainer(tmp_path / "out", ["mlflow"], secrets=True)
    trainer.model.config["data_url"] = f"https://{URL_TOKEN}@huggingface.co/datasets/org/set"
    trainer.train()
    run = only_run(client, experiment)
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"checkpoint-10", "checkpoint-20"}
    files = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint-20")}
    assert {"checkpoint-20/model.safetensors", "checkpoint-20/trainer_state.json"} <= files
    assert run.data.params["learning_rate"] == "0.1"
    assert run.data.params["hub_token"] == "<redacted>"
    config = Path(client.download_artifacts(run.info.run_id, "checkpoint-20/config.json", str(tmp_path)))
    assert json.loads(config.read_text())["service_password"] == "<redacted>"  # the local file keeps it
    assert run.data.tags["repo"] == "https://<redacted>@github.com/org/x.git"
    assert run.data.params["data_url"] == "https://<redacted>@huggingface.co/datasets/org/set"
    texts = json.dumps([run.data.params, run.data.tags, run.info.run_name])
    assert not [s for s in (*SECRETS, URL_TOKEN) if s in texts]
    # the SQLite file and artifacts (the checkpoints' config.json is uploaded redacted)
    assert files_containing(mlflow_server.backend_dir, (*SECRETS, URL_TOKEN)) == []


# -- bad inputs, switches, failures ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "accepted"), [
    ("MLFLOW_TAGS", "{not json", "JSON object"),
    ("MLFLOW_TAGS", "[1, 2]", "JSON object"),
    ("MLFLOW_MAX_LOG_PARAMS", "1e3", "digits only"),
    ("MLFLOW_MAX_LOG_PARAMS", "-5", "digits only"),
    ("MLFLOW_RUN_ID", "bad id!", "run id"),
    ("HF_MLFLOW_LOG_ARTIFACTS", "ture", "true, false"),
    ("MLFLOW_NESTED_RUN", "maybe", "true, false"),
    ("MLFLOW_FLATTEN_PARAMS", "2", "true, false"),
    ("DISABLE_MLFLOW_INTEGRATION", "please", "true, false"),
])
def test_bad_environment_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                               value: str, accepted: str) -> None:
    from tracklink.errors import ReportToError
    from tracklink.integrations import MLflowCallback

    monkeypatch.setenv(name, value)
    with pytest.raises(ReportToError) as info:
        make_trainer(tmp_path / "out", ["mlflow"])
    assert name in str(info.value) and value in str(info.value) and accepted in str(info.value)
    with pytest.raises(ValueError, match=name):  # the same check for an instance passed in callbacks=
        MLflowCallback()


def test_bad_tags_error_masks_url_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracklink.errors import ReportToError

    monkeypatch.setenv("MLFLOW_TAGS", f'{{"repo": "https://{URL_TOKEN}@github.com/x.git", "db": "mysql://u:pw-9f8e7d@h"')
    with pytest.raises(ReportToError, match="not valid JSON") as info:
        make_trainer(tmp_path / "out", ["mlflow"])
    assert URL_TOKEN not in str(info.value) and "pw-9f8e7d" not in str(info.value)
    assert "https://<redacted>@github.com/x.git" in str(info.value)


def test_disable_switch_and_readiness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracklink.integrations import MLflowCallback

    assert MLflowCallback.ready({}) is None  # local stores are always ready
    assert MLflowCallback.ready({"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}) is None
    assert "DATABRICKS" in MLflowCallback.ready({"MLFLOW_TRACKING_URI": "databricks"})
    monkeypatch.setenv("DISABLE_MLFLOW_INTEGRATION", "TRUE")
    trainer = make_trainer(tmp_path / "out", ["mlflow"], max_steps=5, eval_strategy="no", save_strategy="no")
    assert "mlflow" not in trainer.callback_handler.trackers
    assert "DISABLE_MLFLOW_INTEGRATION" in trainer.args.report_to_resolution.skipped["mlflow"]


def test_failing_sdk_call_does_not_stop_training(server_env, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    client, experiment = server_env
    from mlflow.tracking import MlflowClient

    def broken(self, *args, **kwargs):
        raise ConnectionError("backend exploded")

    monkeypatch.setattr(MlflowClient, "log_batch", broken)
    trainer = make_trainer(tmp_path / "out", ["mlflow"])
    result = trainer.train()
    assert result.global_step == 20
    assert "backend exploded" in trainer.callback_handler.tracker_failures()["mlflow"]
    assert only_run(client, experiment).info.status == "FAILED"  # switched off, its run closed as failed


def test_no_sdk_import_until_training(tmp_path: Path) -> None:
    code = ("import sys\nfrom tracklink.integrations import MLflowCallback\nMLflowCallback()\n"
            "print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.stdout.strip() == "False", out.stderr
