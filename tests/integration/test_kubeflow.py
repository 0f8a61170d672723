"""Kubeflow Trainer: train through tracklink's Trainer inside a simulated TrainJob (the controller's three
variables set) against a local HTTPS server on 127.0.0.1 whose certificate is signed by a CA made for the
test, which checks the bearer token like the controller does; assert on what the server received.

Handled and tested: progress, time remaining and metrics over a training (start, updates, 100 % at the end);
the rate limit (at most one update per interval; the first and the final update always); a failed or
interrupted training (its last progress, never 100 %); a plain run without a known length (no percentage);
a refused token (401 and the controller's own 403), a server that is not there, a server that never answers
and a certificate from another CA: training completes every time and the failure is reported; readiness,
``DISABLE_KUBEFLOW_INTEGRATION``; no request leaves the process outside a TrainJob.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import json
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import tracklink
from helpers import make_trainer, raise_at
from tracklink.integrations import kubeflow

TOKEN = "kf-token-7f1c2a9e4b"
# The controller stub's certificates are made with ``cryptography`` (an SDK dependency, absent from the
# core environment, where these tests skip; the SDK environment requires it).
NEEDS_CA = pytest.mark.sdk("cryptography")
STATUS_PATH = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team/trainjobs/job-1/status"


# -- a certificate authority and a controller stub ---------------------------------------------------


def _certificate_authority(name: str) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_certificate(ca_key: Any, ca_cert: Any) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubeflow-trainer-controller")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Controller:
    """A stand-in for the Kubeflow Trainer controller's status server: HTTPS on 127.0.0.1, ``POST`` on the
    TrainJob's status path, ``Authorization: Bearer <token>`` checked (``refuse_with`` for a wrong one)."""

    def __init__(self, directory: Path, token: str = TOKEN, refuse_with: int = 403) -> None:
        ca_key, ca_cert = _certificate_authority("tracklink test CA")
        key, cert = _server_certificate(ca_key, ca_cert)
        self.ca_file = directory / "ca.crt"
        self.ca_file.write_bytes(_pem(ca_cert))
        (directory / "tls.crt").write_bytes(_pem(cert))
        (directory / "tls.key").write_bytes(_key_pem(key))
        self.token, self.refuse_with = token, refuse_with
        self.requests: list[dict[str, Any]] = []
        controller = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                auth = self.headers.get("Authorization")
                controller.requests.append({"path": self.path, "authorization": auth,
                                            "content_type": self.headers.get("Content-Type"),
                                            "body": json.loads(body), "at": time.monotonic()})
                if self.path != STATUS_PATH:
                    self._answer(404, {"status": "Failure", "message": "Not found"})
                elif auth != f"Bearer {controller.token}":
                    reason = "Unauthorized" if controller.refuse_with == 401 else "Forbidden"
                    self._answer(controller.refuse_with, {"status": "Failure", "message": reason})
                else:
                    self._answer(200, json.loads(body))

            def _answer(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}{STATUS_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def statuses(self) -> list[dict[str, Any]]:
        return [r["body"]["trainerStatus"] for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def metrics_of(status: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["value"] for m in status["metrics"]}


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    server = Controller(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_URL", server.url)
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_CA_CERT", str(server.ca_file))
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_TOKEN", str(token_file))
    yield server
    server.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Slow:
    """A user callback that makes each step take ``seconds`` (so that updates fall due during training)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)


# -- what the controller receives -----------------------------------------------------------------------


@NEEDS_CA
def test_progress_time_remaining_and_metrics(controller: Controller, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubeflow, "MIN_UPDATE_INTERVAL_S", 0.2)
    trainer = make_trainer(tmp_path / "out", ["kubeflow"], callbacks=[_Slow(0.06)], logging_steps=2)
    trainer.train()
    assert trainer.callback_handler.tracker_failures() == {}
    requests = controller.requests
    assert len(requests) >= 4, [s.get("progressPercentage") for s in controller.statuses]
    for request in requests:
        assert request["path"] == STATUS_PATH
        assert request["authorization"] == f"Bearer {TOKEN}"
        assert request["content_type"] == "application/json"
        assert set(request["body"]) == {"trainerStatus"}
    first, *middle, last = controller.statuses
    assert first["progressPercentage"] == 0 and "estimatedRemainingSeconds" not in first
    assert metrics_of(first) == {"current_step": "0", "total_steps": "20"}
    progress = [s["progressPercentage"] for s in controller.statuses]
    assert progress == sorted(progress), "progress never goes back"
    for status in middle:
        assert 0 < status["progressPercentage"] <= 99
        metrics = metrics_of(status)
        step = int(metrics["current_step"])
        assert status["progressPercentage"] == min(99, 100 * step // 20)  # 100 only once it ended
        assert 0 <= status["estimatedRemainingSeconds"] <= 60  # about 0.06 s per step left to go
        assert metrics["total_steps"] == "20" and "loss" in metrics
        logged = next(h for h in trainer.state.log_history if h.get("step") == step and "loss" in h)
        assert float(metrics["loss"]) == pytest.approx(logged["loss"])
    assert last["progressPercentage"] == 100 and last["estimatedRemainingSeconds"] == 0
    final = metrics_of(last)
    assert final["current_step"] == "20" and final["total_steps"] == "20" and final["current_epoch"] == "2.5"
    assert float(final["eval_loss"]) == pytest.approx(trainer.state.log_history[-2]["eval_loss"])
    assert float(final["train_loss"]) == pytest.approx(trainer.state.log_history[-1]["train_loss"])
    assert last["lastUpdatedTime"].endswith("Z")
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(requests[:-1])]
    assert all(gap >= 0.2 for gap in gaps), gaps  # the rate limit (the final update is always sent)


@NEEDS_CA
def test_at_most_one_update_per_five_seconds(controller: Controller, tmp_path: Path) -> None:
    """A training shorter than the interval: the update at the start and the final one, nothing between."""
    trainer = make_trainer(tmp_path / "out", ["kubeflow"], logging_steps=1)
    trainer.train()
    assert [s["progressPercentage"] for s in controller.statuses] == [0, 100]
    assert trainer.callback_handler.trackers["kubeflow"].updates_sent == 2


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["failed", "killed"])
@NEEDS_CA
def test_a_stopped_training_reports_where_it_stopped(controller: Controller, tmp_path: Path,
                                                     error: BaseException) -> None:
    trainer = make_trainer(tmp_path / "out", ["kubeflow"], callbacks=[raise_at(7, error)])
    with pytest.raises(type(error)):
        trainer.train()
    last = controller.statuses[-1]
    assert last["progressPercentage"] == 35  # step 7 of 20, never 100 %
    assert "estimatedRemainingSeconds" not in last
    assert metrics_of(last)["current_step"] == "7" and "loss" in metrics_of(last)


@NEEDS_CA
def test_plain_run_without_a_known_length(controller: Controller, tmp_path: Path) -> None:
    with tracklink.init(name="loop", report_to=["kubeflow"], dir=tmp_path / "run") as run:
        for step in range(1, 4):
            run.log({"loss": 1.0 / step}, step=step)
    first, last = controller.statuses
    assert "progressPercentage" not in first and "estimatedRemainingSeconds" not in first
    assert last["progressPercentage"] == 100  # it ended successfully
    assert metrics_of(last)["loss"] == str(1 / 3) and "total_steps" not in metrics_of(last)


# -- failures: training completes, the failure is reported -----------------------------------------------


@pytest.mark.parametrize("code", [401, 403])
@NEEDS_CA
def test_refused_token(controller: Controller, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       caplog: pytest.LogCaptureFixture, code: int) -> None:
    controller.refuse_with = code
    (tmp_path / "token").write_text("not-the-token")
    caplog.set_level(logging.WARNING, logger="tracklink")
    trainer = make_trainer(tmp_path / "out", ["kubeflow"])
    assert trainer.train().global_step == 20
    assert [r["authorization"] for r in controller.requests] == ["Bearer not-the-token"] * 2  # start and final
    failure = trainer.callback_handler.tracker_failures()["kubeflow"]
    assert f"HTTP {code}" in failure and ("Unauthorized" if code == 401 else "Forbidden") in failure
    warned = [r.getMessage() for r in caplog.records if "progress update failed" in r.getMessage()]
    assert len(warned) == 1 and f"HTTP {code}" in warned[0]  # warned once, then only the final failure


@NEEDS_CA
def test_token_is_read_again_for_every_update(controller: Controller, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The projected token rotates: a token file rewritten during training is the one sent next."""
    monkeypatch.setattr(kubeflow, "MIN_UPDATE_INTERVAL_S", 0.0)

    class Rotate:
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 10:
                controller.token = "rotated-token"
                (tmp_path / "token").write_text("rotated-token")

    trainer = make_trainer(tmp_path / "out", ["kubeflow"], callbacks=[Rotate()])
    trainer.train()
    trainer.callback_handler.wait_for_trackers()
    tokens = [r["authorization"] for r in controller.requests]
    assert tokens[0] == f"Bearer {TOKEN}" and tokens[-1] == "Bearer rotated-token"
    assert trainer.callback_handler.tracker_failures() == {}


def test_unreachable_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "token").write_text(TOKEN)
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_URL", f"https://127.0.0.1:{_free_port()}{STATUS_PATH}")
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_TOKEN", str(tmp_path / "token"))
    caplog.set_level(logging.WARNING, logger="tracklink")
    trainer = make_trainer(tmp_path / "out", ["kubeflow"])
    assert trainer.train().global_step == 20
    failure = trainer.callback_handler.tracker_failures()["kubeflow"]
    assert "unreachable" in failure and "ConnectionRefusedError" in failure
    assert TOKEN not in caplog.text


def test_server_that_never_answers_does_not_hold_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubeflow, "REQUEST_TIMEOUT_S", 0.5)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are accepted by the kernel, and never answered
    try:
        (tmp_path / "token").write_text(TOKEN)
        monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_URL", f"https://127.0.0.1:{silent.getsockname()[1]}{STATUS_PATH}")
        monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_TOKEN", str(tmp_path / "token"))
        started = time.monotonic()
        trainer = make_trainer(tmp_path / "out", ["kubeflow"])
        assert trainer.train().global_step == 20
        assert time.monotonic() - started < 10  # two requests of at most 0.5 s each, off the training thread
        assert "timed out" in trainer.callback_handler.tracker_failures()["kubeflow"]
    finally:
        silent.close()


@NEEDS_CA
def test_certificate_from_another_authority_is_refused(controller: Controller, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    _, foreign = _certificate_authority("someone else's CA")
    (other / "ca.crt").write_bytes(_pem(foreign))
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_CA_CERT", str(other / "ca.crt"))
    trainer = make_trainer(tmp_path / "out", ["kubeflow"])
    assert trainer.train().global_step == 20
    assert controller.requests == [], "the token is never sent to a server the CA does not vouch for"
    assert "CERTIFICATE_VERIFY_FAILED" in trainer.callback_handler.tracker_failures()["kubeflow"]


def test_named_outside_a_trainjob(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", ["kubeflow"], max_steps=3)
    assert trainer.train().global_step == 3
    assert "not inside a Kubeflow TrainJob" in trainer.callback_handler.tracker_failures()["kubeflow"]


def test_plain_http_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_URL", f"http://127.0.0.1:{_free_port()}{STATUS_PATH}")
    trainer = make_trainer(tmp_path / "out", ["kubeflow"], max_steps=3)
    assert trainer.train().global_step == 3
    assert "is not an https:// URL" in trainer.callback_handler.tracker_failures()["kubeflow"]


# -- selection ------------------------------------------------------------------------------------------


def test_ready_only_inside_a_trainjob_and_disable_switch() -> None:
    inside = {"KUBEFLOW_TRAINER_SERVER_URL": f"https://127.0.0.1:1{STATUS_PATH}"}
    assert "kubeflow" in tracklink.resolve_report_to("all", env=inside).names
    skipped = tracklink.resolve_report_to("all", env={}).skipped["kubeflow"]
    assert skipped == "not inside a Kubeflow TrainJob (KUBEFLOW_TRAINER_SERVER_URL is not set)"
    for value in ("1", "TRUE", "yes", "on"):
        resolution = tracklink.resolve_report_to("all", env={**inside, "DISABLE_KUBEFLOW_INTEGRATION": value})
        assert resolution.skipped["kubeflow"] == "disabled by DISABLE_KUBEFLOW_INTEGRATION"
    assert "kubeflow" in tracklink.resolve_report_to("all", env={**inside, "DISABLE_KUBEFLOW_INTEGRATION": "0"}).names
    with pytest.raises(tracklink.ReportToError, match="DISABLE_KUBEFLOW_INTEGRATION='maybe' is not accepted"):
        tracklink.resolve_report_to(["kubeflow"], env={"DISABLE_KUBEFLOW_INTEGRATION": "maybe"})


@NEEDS_CA
def test_no_identity_to_resume(controller: Controller, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", ["kubeflow"])
    trainer.train()
    assert trainer.callback_handler.trackers["kubeflow"].identity is None


@NEEDS_CA
def test_an_evaluation_after_training_keeps_the_progress(controller: Controller, tmp_path: Path) -> None:
    """The controller applies each update as a whole: an ``evaluate()`` after ``train()`` (a run of its own)
    must not remove the 100 % the training reached."""
    trainer = make_trainer(tmp_path / "out", ["kubeflow"])
    trainer.train()
    done = len(controller.requests)
    result = trainer.evaluate()
    trainer.callback_handler.wait_for_trackers()
    trainer.callback_handler.trackers["kubeflow"].close("success")
    later = controller.statuses[done:]
    assert len(later) == 2, "the evaluation run sends its first and final update"
    for status in later:
        assert status["progressPercentage"] == 100 and status["estimatedRemainingSeconds"] == 0
        assert metrics_of(status)["total_steps"] == "20" and "train_loss" in metrics_of(status)
    assert float(metrics_of(later[-1])["eval_loss"]) == pytest.approx(result["eval_loss"])


@NEEDS_CA
def test_doctor_checks_the_files_and_the_controller(controller: Controller, tmp_path: Path) -> None:
    import os

    from tracklink.integrations import KubeflowCallback

    env = dict(os.environ)
    assert KubeflowCallback.connection_problems(env) == []
    assert controller.requests == [], "the check sends nothing"
    closed = {**env, "KUBEFLOW_TRAINER_SERVER_URL": f"https://127.0.0.1:{_free_port()}{STATUS_PATH}"}
    (problem,) = KubeflowCallback.connection_problems(closed)
    assert "does not answer" in problem
    missing = {**env, "KUBEFLOW_TRAINER_SERVER_TOKEN": str(tmp_path / "no-such-token")}
    assert KubeflowCallback.connection_problems(missing) == ["the token file (KUBEFLOW_TRAINER_SERVER_TOKEN) is not readable"]
    assert KubeflowCallback.connection_problems({}) == []  # not in a TrainJob: nothing to check
