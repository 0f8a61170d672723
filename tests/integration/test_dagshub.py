"""DagsHub: train through tracklink's Trainer with ``report_to=["dagshub"]``.

* The MLflow side is real: an ``mlflow server`` on 127.0.0.1 serving its API under ``/<owner>/<repo>.mlflow``
  (``--static-prefix``), exactly the URI shape ``dagshub.init()`` puts in ``MLFLOW_TRACKING_URI``; the run is
  read back over REST with ``MlflowClient``.
* The repository-upload side (``dagshub.upload.Repo``) talks to DagsHub's REST API, which has no offline
  mode: a small HTTP endpoint on 127.0.0.1 stands in for the hosted service (``DAGSHUB_CLIENT_HOST``),
  answers the few calls the client makes and records every request, which the tests then inspect.

Bad inputs handled (errors while the Trainer is built, naming ``dagshub.init()``): ``MLFLOW_TRACKING_URI``
unset, or not of the shape ``<scheme>://<host>/<owner>/<repo>.mlflow`` (a plain MLflow server, a DagsHub repo URL
without ``.mlflow``, a ``file:`` URI, extra path parts), credentials in it masked in the message;
``HF_DAGSHUB_LOG_ARTIFACTS`` not a boolean (at ``report_to`` resolution); plus everything the MLflow tracker
rejects. At run time: no token for the upload (skipped with a warning, never an OAuth
prompt), and an upload that fails (reported; training finishes and the MLflow run is still ended).
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow_server import DAGSHUB_OWNER, DAGSHUB_REPO, MlflowServer, dagshub_mlflow_server  # noqa: F401

from helpers import (
    SECRET_ENV,
    SECRET_ENV_VAR,
    SECRETS,
    assert_series,
    files_containing,
    make_trainer,
    raise_at,
)

pytestmark = pytest.mark.sdk("dagshub")

TOKEN = "dh-token-SECRET-4242ab"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _StubAPI(BaseHTTPRequestHandler):
    """Answers what ``dagshub.upload.Repo`` asks (user, repo, branch, content upload) and records it."""

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.recorded.append(Recorded(self.command, self.path, dict(self.headers), body))  # type: ignore[attr-defined]
        path = self.path.split("?")[0]
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        user = {"id": 1, "login": DAGSHUB_OWNER, "full_name": DAGSHUB_OWNER, "username": DAGSHUB_OWNER,
                "avatar_url": None, "public_email": None, "website": None, "company": None, "description": None}
        commit = {"id": "0" * 40, "message": "init", "url": "", "author": None, "committer": None,
                  "added": None, "removed": None, "modified": None, "timestamp": "2026-01-01T00:00:00Z"}
        if path.startswith("/api/v1/repos/") and path.count("/") == 5:
            data: dict = {
                "id": 1, "owner": user, "name": DAGSHUB_REPO, "full_name": f"{DAGSHUB_OWNER}/{DAGSHUB_REPO}",
                "description": "", "private": False, "fork": False, "parent": None, "empty": False,
                "mirror": False, "size": 0, "html_url": f"{host}/{DAGSHUB_OWNER}/{DAGSHUB_REPO}", "ssh_url": None,
                "clone_url": f"{host}/{DAGSHUB_OWNER}/{DAGSHUB_REPO}.git", "website": None, "stars_count": 0,
                "forks_count": 0, "watchers_count": 0, "open_issues_count": 0, "default_branch": "main",
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "permissions": None,
            }
        elif path == "/api/v1/user":
            data = user
        elif "/branches/" in path:
            data = {"name": path.rsplit("/", 1)[1], "commit": commit}
        else:
            data = {}
        out = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_HEAD = _reply

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def dagshub_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubAPI)
    server.recorded = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def dagshub_env(dagshub_mlflow_server: MlflowServer, dagshub_api, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                workdir: Path):
    """What ``dagshub.init(..., mlflow=True)`` leaves behind, pointed at the local stand-ins."""
    host = f"http://127.0.0.1:{dagshub_api.server_address[1]}"
    monkeypatch.setenv("DAGSHUB_CLIENT_HOST", host)  # read when dagshub is first imported
    monkeypatch.setenv("DAGSHUB_USER_TOKEN", TOKEN)
    monkeypatch.setenv("DAGSHUB_QUIET", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dagshub_mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", DAGSHUB_OWNER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", TOKEN)
    name = f"dh-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    from dagshub.common import config

    monkeypatch.setattr(config, "host", host)  # in case dagshub was imported earlier in this session
    dagshub_api.recorded.clear()
    return dagshub_mlflow_server.client(), name


def only_run(client, experiment_name: str):
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def uploads(api) -> list[Recorded]:
    return [r for r in api.recorded if r.method == "PUT"]


class Recorder:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def on_init_end(self, args, state, control, **kwargs):
        self.events.append("on_init_end")


def test_logs_to_the_dagshub_mlflow_uri_and_ends_the_run(dagshub_env, dagshub_api, dagshub_mlflow_server,  # noqa: F811
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, experiment = dagshub_env
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    assert dagshub_mlflow_server.uri.endswith(f"/{DAGSHUB_OWNER}/{DAGSHUB_REPO}.mlflow")
    trainer = make_trainer(tmp_path / "out", ["dagshub"], secrets=True)
    trainer.train()
    assert list(trainer.callback_handler.trackers) == ["dagshub"]
    run = only_run(client, experiment)
    assert run.info.status == "FINISHED"  # transformers' DagsHubCallback leaves it RUNNING
    expected = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    assert_series(history(client, run.info.run_id, "loss"), expected)
    assert [s for s, _ in history(client, run.info.run_id, "eval_loss")] == [10, 20]
    assert run.data.params["learning_rate"] == "0.1"
    assert run.data.tags["dagshub.model_name"] == "main"
    assert uploads(dagshub_api) == []  # HF_DAGSHUB_LOG_ARTIFACTS is off
    assert files_containing(dagshub_mlflow_server.backend_dir, (*SECRETS, TOKEN)) == []


def test_uploads_the_output_dir_at_the_end(dagshub_env, dagshub_api, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    client, experiment = dagshub_env
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    monkeypatch.setenv("HF_DAGSHUB_LOG_ARTIFACTS", "yes")
    monkeypatch.setenv("HF_DAGSHUB_MODEL_NAME", "regressor")
    monkeypatch.setenv("BRANCH", "dev")
    trainer = make_trainer(tmp_path / "out", ["dagshub"], secrets=True)
    trainer.train()
    assert trainer.callback_handler.tracker_failures() == {}
    run = only_run(client, experiment)
    assert run.info.status == "FINISHED" and run.data.tags["dagshub.model_name"] == "regressor"
    puts = uploads(dagshub_api)
    assert puts, [(r.method, r.path) for r in dagshub_api.recorded]
    prefix = f"/api/v1/repos/{DAGSHUB_OWNER}/{DAGSHUB_REPO}/content/dev/artifacts"
    assert all(r.path.startswith(prefix) for r in puts), [r.path for r in puts]
    body = b"".join(r.body for r in puts)
    for name in ("checkpoint-10/model.safetensors", "checkpoint-20/trainer_state.json", "checkpoint-20/config.json"):
        assert f'filename="{name}"'.encode() in body, name
    assert b"regressor" in body and run.info.run_id.encode() in body  # the commit message
    assert b"dvc" in body  # versioning, as transformers' add_dir upload
    assert not [secret for secret in (*SECRETS, TOKEN) if secret.encode() in body]
    assert b"<redacted>" in body  # config.json holds a masked service_password
    assert all(TOKEN in r.headers.get("Authorization", "") for r in puts)


def test_failed_training_fails_the_run_and_uploads_nothing(dagshub_env, dagshub_api, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    client, experiment = dagshub_env
    monkeypatch.setenv("HF_DAGSHUB_LOG_ARTIFACTS", "1")
    trainer = make_trainer(tmp_path / "out", ["dagshub"], callbacks=[raise_at(7, RuntimeError("boom"))])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert only_run(client, experiment).info.status == "FAILED"
    assert uploads(dagshub_api) == []


def test_no_token_skips_the_upload_without_prompting(dagshub_env, dagshub_api, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    client, experiment = dagshub_env
    monkeypatch.setenv("HF_DAGSHUB_LOG_ARTIFACTS", "1")
    monkeypatch.delenv("DAGSHUB_USER_TOKEN")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    trainer = make_trainer(tmp_path / "out", ["dagshub"], max_steps=5, eval_strategy="no", save_strategy="no")
    trainer.train()
    assert only_run(client, experiment).info.status == "FINISHED"
    assert uploads(dagshub_api) == [] and "not uploaded" in caplog.text


def test_failing_upload_does_not_stop_training(dagshub_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, experiment = dagshub_env
    monkeypatch.setenv("HF_DAGSHUB_LOG_ARTIFACTS", "1")
    from dagshub.upload import Repo

    def broken(self, *args, **kwargs):
        raise RuntimeError("repository unavailable")

    monkeypatch.setattr(Repo, "upload_files", broken)
    trainer = make_trainer(tmp_path / "out", ["dagshub"], max_steps=10, eval_strategy="no")
    assert trainer.train().global_step == 10
    assert "repository unavailable" in trainer.callback_handler.tracker_failures()["dagshub"]
    assert only_run(client, experiment).info.status == "FINISHED"  # the MLflow run is still ended


@pytest.mark.parametrize("uri", [
    None, "", "http://127.0.0.1:5000", "https://dagshub.com/owner/repo", "https://dagshub.com/owner/repo.git",
    "file:///tmp/owner/repo.mlflow", "https://dagshub.com/a/owner/repo.mlflow", "https://dagshub.com/owner/.mlflow",
])
def test_missing_or_malformed_uri_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        uri: str | None) -> None:
    from tracklink.integrations import DagsHubCallback

    if uri is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    built = []
    with pytest.raises(ValueError, match=r"dagshub\.init\(") as info:
        make_trainer(tmp_path / "out", ["dagshub"], callbacks=[Recorder(built)])
    assert built == [], "refused while building the Trainer, before any event"
    assert "MLFLOW_TRACKING_URI" in str(info.value) and "<owner>/<repo>.mlflow" in str(info.value)
    with pytest.raises(ValueError, match=r"dagshub\.init\("):
        DagsHubCallback()


def test_bad_switch_and_uri_credentials_not_echoed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracklink.errors import ReportToError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://dagshub.com/o/r.mlflow")
    monkeypatch.setenv("HF_DAGSHUB_LOG_ARTIFACTS", "sure")
    with pytest.raises(ReportToError, match="HF_DAGSHUB_LOG_ARTIFACTS='sure'"):
        make_trainer(tmp_path / "out", ["dagshub"])
    monkeypatch.delenv("HF_DAGSHUB_LOG_ARTIFACTS")
    for uri in (f"https://user:{TOKEN}@dagshub.com/o/r", f"https://{TOKEN}@dagshub.com/o/r"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(ValueError, match="not a DagsHub MLflow URI") as info:
            make_trainer(tmp_path / "out", ["dagshub"])
        assert TOKEN not in str(info.value) and "<redacted>@dagshub.com/o/r" in str(info.value)


def test_parse_uri_ready_and_all_resolution() -> None:
    from tracklink import resolve_report_to
    from tracklink.integrations import DagsHubCallback
    from tracklink.integrations.dagshub import parse_dagshub_uri

    assert parse_dagshub_uri("https://dagshub.com/me/my.repo.mlflow") == ("https://dagshub.com", "me", "my.repo")
    assert parse_dagshub_uri("http://127.0.0.1:8080/o/r.mlflow/") == ("http://127.0.0.1:8080", "o", "r")
    uri = "https://dagshub.com/o/r.mlflow"
    assert DagsHubCallback.ready({"MLFLOW_TRACKING_URI": uri, "DAGSHUB_USER_TOKEN": "t"}) is None
    assert DagsHubCallback.ready({"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_PASSWORD": "t"}) is None
    assert "token" in DagsHubCallback.ready({"MLFLOW_TRACKING_URI": uri})
    assert "dagshub.init" in DagsHubCallback.ready({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
                                                     "DAGSHUB_USER_TOKEN": "t"})
    env = {"MLFLOW_TRACKING_URI": uri, "DAGSHUB_USER_TOKEN": "t"}
    resolution = resolve_report_to("all", env=env)
    assert "dagshub" in resolution.names and "mlflow" not in resolution.names  # not both, unlike transformers
    assert "dagshub" in resolution.skipped["mlflow"]
    assert "dagshub" not in resolve_report_to("all", env={"MLFLOW_TRACKING_URI": uri}).names  # no token
    assert "disabled" in resolve_report_to("all", env={**env, "DISABLE_MLFLOW_INTEGRATION": "1"}).skipped["dagshub"]
