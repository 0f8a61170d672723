"""A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts) for the MLflow and DagsHub
tests: session-scoped fixtures that start it once, poll ``/health`` and stop it by its PID at the end.

Import the fixtures into a test module with ``from mlflow_server import mlflow_server  # noqa: F401`` (or
``dagshub_mlflow_server``, which serves the API under ``/<owner>/<repo>.mlflow`` like DagsHub does).
:meth:`MlflowServer.restart` stops the server and starts it again on the same port and SQLite file (the
outage test).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracklink.tracker import close_open_trackers

__all__ = ["DAGSHUB_OWNER", "DAGSHUB_REPO", "MlflowServer", "dagshub_mlflow_server", "mlflow_server"]

DAGSHUB_OWNER = "tlowner"
DAGSHUB_REPO = "tlrepo"
START_TIMEOUT = float(os.environ.get("TRACKLINK_TEST_MLFLOW_START_TIMEOUT", "240"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """One ``mlflow server`` process: ``uri`` (with the static prefix), ``root`` (its SQLite file
    ``srv.db`` and artifact directory ``artifacts/``), ``start``/``stop``/``restart``."""

    def __init__(self, root: Path, prefix: str = "") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix.rstrip("/")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    @property
    def backend_dir(self) -> Path:
        return self.root

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self) -> None:
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'srv.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        if self.prefix:
            command += ["--static-prefix", self.prefix]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
            env.pop(name, None)
        self.starts += 1
        log = open(self.root / f"server-{self.starts}.log", "wb")
        # its own session, so that stop() can also reach the uvicorn child it spawns
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        cwd=self.root, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server not healthy after {START_TIMEOUT:.0f} s: {self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        pid = process.pid
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        try:  # children left in the session this fixture created (its own process group)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + 30
        while self._port_busy() and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _port_busy(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def log_tail(self, chars: int = 3000) -> str:
        logs = sorted(self.root.glob("server-*.log"))
        return logs[-1].read_text(errors="replace")[-chars:] if logs else ""

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


def _serve(root: Path, prefix: str = "") -> Iterator[MlflowServer]:
    server = MlflowServer(root, prefix)
    server.start()
    try:
        yield server
    finally:
        # runs that tests leave open on purpose (a log after train() re-opens its run until exit) are closed
        # while the server still answers: at interpreter exit MLflow would retry a stopped server for minutes
        close_open_trackers()
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A plain MLflow tracking server: ``mlflow_server.uri`` is ``http://127.0.0.1:<port>``."""
    yield from _serve(tmp_path_factory.mktemp("mlflow-server"))


@pytest.fixture(scope="session")
def dagshub_mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """An MLflow server at DagsHub's URI shape: ``http://127.0.0.1:<port>/<owner>/<repo>.mlflow``."""
    yield from _serve(tmp_path_factory.mktemp("dagshub-mlflow-server"), f"/{DAGSHUB_OWNER}/{DAGSHUB_REPO}.mlflow")
