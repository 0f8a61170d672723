"""DagsHub tracker (``report_to="dagshub"``): MLflow logging to a DagsHub repository's tracking server, plus
an optional upload of the output directory into the repository at the end of training.

Everything :mod:`tracklink.integrations.mlflow` does (params, raw metric keys, run statuses, resume,
``MLFLOW_*`` variables, ``HF_MLFLOW_LOG_ARTIFACTS`` checkpoint artifacts), against the URI that
``dagshub.init(repo_owner, repo_name, mlflow=True)`` puts in ``MLFLOW_TRACKING_URI``:
``https://dagshub.com/<owner>/<repo>.mlflow`` (any host, same path shape). A missing or malformed URI is an
error before training. MLflow authenticates with ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``
(``dagshub.init()`` sets both).

Added by DagsHub:

* ``HF_DAGSHUB_LOG_ARTIFACTS`` truthy: when training ends successfully, ``TrainingArguments.output_dir``
  (checkpoints included) is uploaded to the repository directory ``artifacts/`` on branch ``BRANCH``
  (default ``main``) with ``dagshub.upload.Repo``, DVC-versioned, in commits of 100 files whose message
  names ``HF_DAGSHUB_MODEL_NAME`` (default ``main``) and the MLflow run id. The repository API host is
  DagsHub's own setting ``DAGSHUB_CLIENT_HOST`` (read when ``dagshub`` is imported; default
  ``https://dagshub.com``); the token is ``DAGSHUB_USER_TOKEN``, else ``MLFLOW_TRACKING_PASSWORD``. Without a
  token the upload is skipped with a warning (never an OAuth prompt).
* the run gets the tag ``dagshub.model_name`` = ``HF_DAGSHUB_MODEL_NAME``.
* the MLflow run is ended at the end of training (transformers forgets to).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any, ClassVar

from tracklink.envvars import EnvVar, truthy
from tracklink.redact import current_secrets, redact_text, redacted_upload
from tracklink.tracker import RunEnd, RunInfo

from .mlflow import BOOL_CHOICES, MLflowCallback

__all__ = ["DagsHubCallback", "parse_dagshub_uri"]

logger = logging.getLogger("tracklink")

EXPECTED = "https://dagshub.com/<owner>/<repo>.mlflow"
ARTIFACTS_DIR = "artifacts"
FILES_PER_COMMIT = 100


def parse_dagshub_uri(uri: str | None) -> tuple[str, str, str] | None:
    """``(origin, owner, repo)`` of a DagsHub MLflow URI ``<scheme>://<host>/<owner>/<repo>.mlflow``, or
    ``None`` when ``uri`` does not have that shape."""
    if not uri or not uri.strip():
        return None
    try:
        parts = urllib.parse.urlsplit(uri.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        return None
    segments = parts.path.rstrip("/").split("/")
    if len(segments) != 3 or segments[0] or not segments[1] or not segments[2].endswith(".mlflow"):
        return None
    repo = segments[2][: -len(".mlflow")]
    if not repo:
        return None
    origin = f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")
    return origin, urllib.parse.unquote(segments[1]), urllib.parse.unquote(repo)


def uri_problem(env: Mapping[str, str]) -> str | None:
    """Why ``MLFLOW_TRACKING_URI`` cannot be used by DagsHub, or ``None``."""
    uri = env.get("MLFLOW_TRACKING_URI")
    if not uri or not uri.strip():
        return (f"DagsHub needs MLFLOW_TRACKING_URI={EXPECTED}, but it is not set. Did you run "
                "dagshub.init(repo_owner=..., repo_name=..., mlflow=True)?")
    if parse_dagshub_uri(uri) is None:
        shown = redact_text(uri, current_secrets())
        return (f"MLFLOW_TRACKING_URI={shown!r} is not a DagsHub MLflow URI; expected {EXPECTED} "
                "(any host, path /<owner>/<repo>.mlflow). Did you run dagshub.init(repo_owner=..., "
                "repo_name=..., mlflow=True)?")
    return None


def _token(env: Mapping[str, str]) -> str | None:
    return (env.get("DAGSHUB_USER_TOKEN") or "").strip() or (env.get("MLFLOW_TRACKING_PASSWORD") or "").strip() or None


class DagsHubCallback(MLflowCallback):
    """Logs to DagsHub's MLflow server and uploads the output directory (see the module documentation)."""

    name = "dagshub"
    sdk = "dagshub"
    sdk_min_version = "0.3"
    sdk_module = "dagshub"
    extra = "dagshub"
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("MLFLOW_TRACKING_URI", None, f"Required: {EXPECTED} (dagshub.init() sets it).", read_by="sdk"),
        EnvVar("HF_DAGSHUB_LOG_ARTIFACTS", "false", "Upload output_dir to the repository directory "
               "artifacts/ when training ends.", choices=BOOL_CHOICES),
        EnvVar("HF_DAGSHUB_MODEL_NAME", "main", "Model name: the run tag dagshub.model_name and the "
               "upload commit message."),
        EnvVar("BRANCH", "main", "Repository branch the artifacts are committed to."),
        EnvVar("DAGSHUB_USER_TOKEN", None, "DagsHub token (upload; also makes the tracker ready).",
               secret=True, read_by="sdk"),
        EnvVar("DAGSHUB_CLIENT_HOST", "https://dagshub.com", "DagsHub host of the repository API (read when "
               "dagshub is imported).", read_by="sdk", kind="url"),
        *(v for v in MLflowCallback.env_vars if v.name != "MLFLOW_TRACKING_URI"),
    )

    def __init__(self) -> None:
        # The URI is checked here, when the Trainer is built, rather than in env_problems(): `tracklink
        # doctor` would otherwise warn every user of plain MLflow (or of no MLflow) about DagsHub's URI.
        problem = uri_problem(os.environ)
        if problem:
            raise ValueError(problem)
        super().__init__()  # validates the other variables
        self._output_dir: str | None = None
        self.repo: Any = None

    @classmethod
    def ready(cls, env: Mapping[str, str]) -> str | None:
        if parse_dagshub_uri(env.get("MLFLOW_TRACKING_URI")) is None:
            return f"MLFLOW_TRACKING_URI is not a DagsHub URI ({EXPECTED}); run dagshub.init()"
        if _token(env) is None:
            return "no DagsHub token: set DAGSHUB_USER_TOKEN (or MLFLOW_TRACKING_PASSWORD)"
        return None

    @classmethod
    def env_problems(cls, env: Mapping[str, str]) -> list[str]:
        problems = super().env_problems(env)
        if importlib.util.find_spec("mlflow") is None:
            problems.append('DagsHub logs through MLflow, which is not installed; pip install "tracklink[dagshub]"')
        branch = env.get("BRANCH")
        if branch is not None and branch != branch.strip():
            problems.append(f"BRANCH={branch!r} has surrounding spaces")
        return problems

    @classmethod
    def _uri_problem(cls, env: Mapping[str, str]) -> str | None:
        return None  # DagsHub's own URI rule is checked when the tracker is built (see __init__)

    @classmethod
    def connection_problems(cls, env: Mapping[str, str], timeout: float = 2.0) -> list[str]:
        return []  # DagsHub's host is a hosted service: no connection attempt when the trainer is built

    def tracking_uri(self, mlflow: Any) -> str:
        return os.environ["MLFLOW_TRACKING_URI"].strip()

    @property
    def model_name(self) -> str:
        return os.environ.get("HF_DAGSHUB_MODEL_NAME") or "main"

    def setup(self, run: RunInfo) -> None:
        problem = uri_problem(os.environ)
        if problem:
            raise ValueError(problem)
        env = os.environ
        if not (env.get("MLFLOW_TRACKING_PASSWORD") or env.get("MLFLOW_TRACKING_TOKEN")):
            self._warn_once("auth", "tracker 'dagshub': MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD are "
                                    "not set, so MLflow requests are not authenticated; dagshub.init() sets them")
        self._output_dir = run.output_dir
        super().setup(run)

    def extra_tags(self) -> dict[str, str]:
        return {**super().extra_tags(), "dagshub.model_name": self.model_name}

    def upload_output_dir(self) -> None:
        """Commit ``output_dir`` to the repository directory ``artifacts/`` on ``BRANCH``."""
        token = _token(os.environ)
        if token is None:
            self._warn_once("upload-token", "tracker 'dagshub': no DAGSHUB_USER_TOKEN or "
                                            "MLFLOW_TRACKING_PASSWORD, so the output directory is not uploaded")
            return
        if not self._output_dir or not os.path.isdir(self._output_dir):
            return
        parsed = parse_dagshub_uri(os.environ.get("MLFLOW_TRACKING_URI"))
        assert parsed is not None  # checked in setup
        origin, owner, repo_name = parsed
        from dagshub.common import config
        from dagshub.upload import Repo

        if origin.rstrip("/") != str(config.host).rstrip("/") and not os.environ.get("DAGSHUB_CLIENT_HOST"):
            logger.warning("tracklink: DagsHub uploads go to %s but the tracking URI's host is %s; set "
                           "DAGSHUB_CLIENT_HOST before importing dagshub", config.host, origin)
        self.repo = Repo(owner=owner, name=repo_name, token=token, branch=os.environ.get("BRANCH") or "main")
        message = f"tracklink: {self.model_name} (MLflow run {self._run_id})"
        dataset, staged = self.repo.directory(ARTIFACTS_DIR), 0
        with redacted_upload(self._output_dir) as upload:  # secrets masked in text files; read at commit
            for path in sorted(p for p in upload.rglob("*") if p.is_file()):
                dataset.add(file=str(path), path=path.relative_to(upload).as_posix())
                staged += 1
                if staged == FILES_PER_COMMIT:
                    dataset.commit(message, versioning="dvc", quiet=True)
                    staged = 0
            if staged:
                dataset.commit(message, versioning="dvc", quiet=True)

    def finish(self, end: RunEnd) -> None:
        upload_error: Exception | None = None
        if end == "success" and truthy(os.environ.get("HF_DAGSHUB_LOG_ARTIFACTS")):
            try:
                self.upload_output_dir()
            except Exception as exc:  # the MLflow run is still ended; the error is reported after
                upload_error = exc
        super().finish(end)
        if upload_error is not None:
            raise upload_error
