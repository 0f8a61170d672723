"""Kubeflow Trainer tracker (``report_to="kubeflow"``): training progress for the TrainJob controller.

Inside a Kubeflow TrainJob whose runtime status feature is on, the controller injects three variables
into the training pod (transformers' ``KubeflowCallback`` reads the same ones):

* ``KUBEFLOW_TRAINER_SERVER_URL``: the HTTPS endpoint of the TrainJob's status
  (``.../namespaces/<ns>/trainjobs/<name>/status``);
* ``KUBEFLOW_TRAINER_SERVER_CA_CERT``: the path of the CA certificate that signs the endpoint's TLS
  certificate;
* ``KUBEFLOW_TRAINER_SERVER_TOKEN``: the path of the pod's projected service-account token (it rotates,
  so the file is read again for every update).

The tracker is ready only there (``report_to="all"`` picks it inside a TrainJob and nowhere else) and
``DISABLE_KUBEFLOW_INTEGRATION`` switches it off. It needs no SDK: each update is one HTTPS ``POST`` made
with the standard library (``urllib`` with an ``ssl`` context that trusts only the given CA, the token
as ``Authorization: Bearer``), whose body is::

    {"trainerStatus": {"progressPercentage": 42, "estimatedRemainingSeconds": 310,
                       "metrics": [{"name": "loss", "value": "0.173"}, ...],
                       "lastUpdatedTime": "2026-12-04T18:21:42Z"}}

Progress and time remaining. The contract gives a tracker the step of each log, not the length of the
training, so the total comes from the run at setup: ``run.state.max_steps`` (the trainer's state, which
holds the planned number of optimizer steps when training begins), else ``run.args.max_steps`` when
positive. A run that has neither (``tracklink.init`` without a length) gets no percentage and no estimate,
only its metrics. With a total:

* ``progressPercentage = floor(100 * step / total)``, held at 99 until the run ends successfully, when
  100 is sent;
* ``estimatedRemainingSeconds = elapsed / (step - start_step) * (total - step)``: the time per step
  measured since this run (or this resumed part of it) began, times the steps left; ``0`` at success.

Updates go out at most every ``MIN_UPDATE_INTERVAL_S`` (5 s, as transformers): at the start of the run, then
at the first log after the interval has passed; the update at the end (success, failure or SIGTERM) is
always sent. A failed or killed run sends its last progress and metrics, never 100 %. The controller applies
each update as a whole (fields left out are removed), so an ``evaluate()``/``predict()`` after training
sends the training's progress again with its new metrics. Metrics are the
latest value of each numeric key logged (raw names: ``loss``, ``learning_rate``, ``eval_loss``, ...,
plus ``current_step``, ``total_steps`` and ``current_epoch``), values as text, as the controller takes them.

Reliability: calls run on the tracker's worker thread, each request has a short timeout
(``REQUEST_TIMEOUT_S``, 3 s), and a failed update is warned about once per kind of failure while training
goes on; the next update tries again. Only a failed final update raises, so it is reported with the
tracker's name in the end-of-training summary. The tracker has no run of its own: there is no identity to
store in checkpoints (the TrainJob is the identity), and a resumed training measures its time per step
from the restored step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from tracklink.envvars import EnvVar, truthy
from tracklink.redact import current_secrets, redact_text
from tracklink.tracker import RunEnd, RunInfo, Tracker

if TYPE_CHECKING:
    import ssl

__all__ = ["KubeflowCallback", "KubeflowStatusError"]

logger = logging.getLogger("tracklink")

BOOL_CHOICES = ("true", "false", "1", "0", "yes", "no", "on", "off")
ENV_URL = "KUBEFLOW_TRAINER_SERVER_URL"
ENV_CA_CERT = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
ENV_TOKEN = "KUBEFLOW_TRAINER_SERVER_TOKEN"
ENV_DISABLE = "DISABLE_KUBEFLOW_INTEGRATION"
#: Seconds between two updates (the first and the final one are always sent).
MIN_UPDATE_INTERVAL_S = 5.0
#: Seconds one request may take (connection and answer) before it counts as failed.
REQUEST_TIMEOUT_S = 3.0
#: The controller refuses bodies over 64 KiB; metrics beyond this many are left out.
MAX_METRICS = 200
MAX_VALUE_CHARS = 256


class KubeflowStatusError(RuntimeError):
    """A status update the controller did not accept (or that could not reach it)."""


def _clock_text(now: datetime | None = None) -> str:
    moment = now or datetime.now(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")  # RFC 3339, as Kubernetes' metav1.Time writes it


def _value_text(value: Any) -> str:
    return str(value)[:MAX_VALUE_CHARS]


class KubeflowCallback(Tracker):
    """Reports progress, time remaining and metrics to the Kubeflow Trainer controller (see the module
    documentation). Takes no arguments, like transformers'."""

    name = "kubeflow"
    sdk = None  # the standard library speaks HTTPS
    sdk_min_version = None
    sdk_module = None
    extra = None
    media = frozenset()  # progress and metrics for the TrainJob controller: no media values at all
    metric_style = "raw"
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar(ENV_URL, None, "HTTPS endpoint of the TrainJob's status, injected by the Kubeflow Trainer "
               "controller; the tracker is ready only when it is set (inside a TrainJob)."),
        EnvVar(ENV_CA_CERT, None, "Path of the CA certificate the endpoint's TLS certificate is checked against "
               "(injected; unset: the system's CA certificates)."),
        EnvVar(ENV_TOKEN, None, "Path of the service-account token file sent as the bearer token (injected; read "
               "again for every update, as the token rotates). Shown as set/unset: its name names a secret.",
               secret=True),
        EnvVar(ENV_DISABLE, "false", "Switch the Kubeflow tracker off.", choices=BOOL_CHOICES),
    )

    def __init__(self) -> None:
        self._url: str | None = None
        self._ca_file: str | None = None
        self._context: ssl.SSLContext | None = None
        self._metrics: dict[str, float] = {}
        self._total = 0
        self._start_step = 0
        self._started_at = 0.0
        self._last_attempt: float | None = None
        self._progress: int | None = None
        self._remaining: int | None = None
        self._step = 0
        self._epoch: float | None = None
        self._training = True
        self._trained = False
        self._sent = 0
        self._failed = 0

    # -- declarations -------------------------------------------------------------------------

    @classmethod
    def ready(cls, env: Mapping[str, str]) -> str | None:
        if (env.get(ENV_URL) or "").strip():
            return None
        return f"not inside a Kubeflow TrainJob ({ENV_URL} is not set)"

    @classmethod
    def disabled_by(cls, env: Mapping[str, str]) -> str | None:
        return f"disabled by {ENV_DISABLE}" if truthy(env.get(ENV_DISABLE)) else None

    @classmethod
    def connection_problems(cls, env: Mapping[str, str], timeout: float = 2.0) -> list[str]:
        """What ``tracklink doctor`` can tell inside a TrainJob: the token and CA files can be read and the
        controller accepts a TCP connection (nothing is sent). Never checked before training."""
        import socket

        url = (env.get(ENV_URL) or "").strip()
        if not url:
            return []
        problems = []
        parts = urlsplit(url)
        if parts.scheme.lower() != "https" or not parts.hostname:
            problems.append(f"{ENV_URL} is not an https:// URL; the tracker will not send the token")
        token = (env.get(ENV_TOKEN) or "").strip()
        if not token or not os.access(token, os.R_OK):
            problems.append(f"the token file ({ENV_TOKEN}) is {'not set' if not token else 'not readable'}")
        ca_file = (env.get(ENV_CA_CERT) or "").strip()
        if ca_file and not os.access(ca_file, os.R_OK):
            problems.append(f"the CA certificate ({ENV_CA_CERT}={ca_file!r}) is not readable")
        if parts.hostname and not problems:
            try:
                port = parts.port or 443
                with socket.create_connection((parts.hostname, port), timeout=timeout):
                    pass
            except (OSError, ValueError) as exc:
                shown = redact_text(url, current_secrets())
                problems.append(f"the Kubeflow Trainer controller at {shown} does not answer "
                                f"({getattr(exc, 'strerror', None) or exc}); progress updates will fail")
        return problems

    # -- lifecycle ----------------------------------------------------------------------------

    def setup(self, run: RunInfo) -> None:
        url = (os.environ.get(ENV_URL) or "").strip()
        if not url:
            raise KubeflowStatusError(f"{ENV_URL} is not set: not inside a Kubeflow TrainJob whose controller "
                                      "takes status updates, so there is nowhere to report progress")
        parts = urlsplit(url)
        if parts.scheme.lower() != "https" or not parts.hostname:
            raise KubeflowStatusError(f"{ENV_URL}={redact_text(url, current_secrets())!r} is not an https:// URL; "
                                      "the service-account token is only ever sent over TLS")
        self._url = url
        self._ca_file = (os.environ.get(ENV_CA_CERT) or "").strip() or None
        self._context = None
        self._training = run.training
        self._start_step = self._step = int(run.start_step or 0)
        self._started_at = time.monotonic()
        self._last_attempt = None
        self._sent = self._failed = 0
        if run.training or not self._trained:
            self._trained = self._trained or run.training
            self._metrics = {}
            self._epoch = None
            self._total = self.total_steps(run)
            self._progress = self._percent(self._step) if run.training else None
            self._remaining = None
        # else: an evaluate()/predict() after training: the controller applies each update as a whole (fields
        # left out are removed), so the progress and metrics of the training stay in every update
        self._update(final=False, force=True)

    @staticmethod
    def total_steps(run: RunInfo) -> int:
        """The planned number of optimizer steps: the driver's state (``max_steps``, which the trainer
        sets before training begins), else the arguments' ``max_steps`` when positive; 0 when unknown."""
        for source in (run.state, run.args):
            try:
                value = int(getattr(source, "max_steps", 0) or 0)
            except (TypeError, ValueError):
                continue
            if value > 0:
                return value
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self._remember(metrics, step, epoch)
        self._update(final=False)

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        self._remember(metrics, step, None)  # sent with the final update

    def finish(self, end: RunEnd) -> None:
        if self._url is None:
            return
        self._step = max(self._step, int(end.step or 0))
        if end.epoch is not None:
            self._epoch = float(end.epoch)
        if not self._training:
            pass  # an evaluate()/predict() run: the training's progress stands
        elif end == "success":
            self._progress, self._remaining = 100, 0
        else:  # progress where the run stopped, never 100 %; no estimate for a run that will not go on
            if self._total:
                self._progress = self._percent(self._step)
            self._remaining = None
        try:
            self._update(final=True, force=True)
        finally:
            self._url = None

    # -- progress ------------------------------------------------------------------------------

    def _remember(self, metrics: Mapping[str, float], step: int, epoch: float | None) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._metrics[key] = value
        self._step = max(self._step, int(step))
        if epoch is not None:
            self._epoch = float(epoch)
        if self._training and self._total:
            self._progress = self._percent(self._step)
            done = self._step - self._start_step
            if done > 0:
                per_step = (time.monotonic() - self._started_at) / done
                self._remaining = max(0, int(per_step * max(0, self._total - self._step)))

    def _percent(self, step: int) -> int | None:
        if not self._total:
            return None
        return max(0, min(99, int(100 * step / self._total)))

    def status(self) -> dict[str, Any]:
        """The ``trainerStatus`` object of the next update."""
        metrics: dict[str, Any] = dict(self._metrics)
        metrics["current_step"] = self._step
        if self._total:
            metrics["total_steps"] = self._total
        if self._epoch is not None:
            metrics["current_epoch"] = round(self._epoch, 2)
        status: dict[str, Any] = {"lastUpdatedTime": _clock_text()}
        if self._progress is not None:
            status["progressPercentage"] = self._progress
        if self._remaining is not None:
            status["estimatedRemainingSeconds"] = self._remaining
        status["metrics"] = [{"name": str(k), "value": _value_text(v)} for k, v in list(metrics.items())[:MAX_METRICS]]
        return status

    # -- HTTPS ---------------------------------------------------------------------------------

    def _update(self, *, final: bool, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self._last_attempt is not None and now - self._last_attempt < MIN_UPDATE_INTERVAL_S:
            return
        try:
            self.send(self.status())
        except KubeflowStatusError as exc:
            self._failed += 1
            if final:
                raise
            self._warn_once(f"update:{exc.args[0].split(':', 1)[0]}",
                            f"tracker {self.name!r}: a progress update failed ({exc}); training goes on and the "
                            "next update tries again")
        else:
            self._sent += 1
        finally:
            self._last_attempt = time.monotonic()  # the interval runs from the end of an attempt

    def _ssl_context(self) -> ssl.SSLContext:
        import ssl  # here, not at the top: `tracklink plugins` loads this module and never sends anything

        if self._context is None:
            try:
                self._context = ssl.create_default_context(cafile=self._ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise KubeflowStatusError(f"CA certificate: the file of {ENV_CA_CERT} cannot be used "
                                          f"({type(exc).__name__}: {exc})") from exc
        return self._context

    def _token(self) -> str:
        path = (os.environ.get(ENV_TOKEN) or "").strip()
        if not path:
            raise KubeflowStatusError(f"token: {ENV_TOKEN} is not set")
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:  # the path itself is masked (its variable's name names a secret)
            raise KubeflowStatusError(f"token: the file of {ENV_TOKEN} cannot be read ({exc.strerror or exc})") from exc
        if not token:
            raise KubeflowStatusError(f"token: the file of {ENV_TOKEN} is empty")
        return token

    def send(self, status: Mapping[str, Any]) -> None:
        """POST one ``trainerStatus`` to the controller; raises :class:`KubeflowStatusError` when it is not
        accepted (the message starts with the kind of failure)."""
        import urllib.error
        import urllib.request

        assert self._url is not None
        body = json.dumps({"trainerStatus": dict(status)}).encode("utf-8")
        request = urllib.request.Request(
            self._url, data=body, method="POST",
            headers={"Authorization": f"Bearer {self._token()}", "Content-Type": "application/json"},
        )
        shown = redact_text(self._url, current_secrets())
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S, context=self._ssl_context()) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            detail = ""
            try:
                detail = exc.read(300).decode("utf-8", "replace").strip()
            except Exception:
                pass
            exc.close()
            raise KubeflowStatusError(f"HTTP {exc.code}: the controller at {shown} answered {exc.code} {exc.reason}"
                                      + (f": {detail}" if detail else "")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise KubeflowStatusError(f"unreachable: no answer from the controller at {shown} "
                                      f"({type(reason).__name__}: {reason})") from None

    @property
    def updates_sent(self) -> int:
        """Updates the controller accepted in this run."""
        return self._sent
