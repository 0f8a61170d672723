"""MLflow tracker (``report_to="mlflow"``): runs, params, metrics and checkpoint artifacts in MLflow.

Where: the tracking URI MLflow itself would use (``mlflow.set_tracking_uri()``, else ``MLFLOW_TRACKING_URI``,
else MLflow's default: ``sqlite:///mlflow.db`` in the working directory for MLflow 3.x). A legacy ``./mlruns``
file store that MLflow refuses (``MLFLOW_ALLOW_FILE_STORE`` unset) is replaced by ``sqlite:///mlflow.db``.

Which run, first match wins:

1. ``MLFLOW_RUN_ID``: re-attach to that run (set back to RUNNING, ended by this tracker);
2. the run identity stored in the checkpoint training resumes from (same run, points the run already holds
   after the restored step are not logged twice);
3. an MLflow run active in the training thread (``mlflow.start_run()`` around ``train()``): reused and left
   open, unless ``MLFLOW_NESTED_RUN`` is truthy, then a child run is created under it;
4. a new run named ``TrainingArguments.run_name`` in ``MLFLOW_EXPERIMENT_NAME`` (created when missing), else
   ``MLFLOW_EXPERIMENT_ID`` / ``mlflow.set_experiment()`` / the default experiment.

What is logged: params = model config merged under the (redacted) training arguments, nested dicts
flattened with ``.`` when ``MLFLOW_FLATTEN_PARAMS`` is truthy (else JSON text), at most
``MLFLOW_MAX_LOG_PARAMS`` of them, in batches of 100, values longer than MLflow's limit truncated with a
``…[truncated]`` marker; tags from ``MLFLOW_TAGS`` (a JSON object); metrics under their raw keys (``loss``,
``eval_loss``, ``learning_rate``, ``epoch``, ``train_runtime`` …; characters MLflow rejects become ``_``) at
``global_step``; with ``HF_MLFLOW_LOG_ARTIFACTS`` truthy, every checkpoint directory as artifacts under
``checkpoint-<step>/``. The run ends FINISHED, FAILED (training raised) or KILLED (Ctrl-C, SIGTERM).

Media values: ``tracklink.Image`` with ``log_image(key=, step=)`` (the run's image grid, with a step
slider; needs Pillow, which MLflow installs), ``Figure`` with ``log_figure`` as
``figures/<key>/<step>.png``, ``Table`` with ``log_table`` as ``tables/<key>/<step>.json`` (MLflow's table
view; image cells as ``[image WxH]``), ``File`` values and fallbacks with ``log_artifact`` under
``media/<key>/`` (a histogram is drawn as an image; ``Text`` becomes ``media/<key>/<step>.txt``).

Reliability: calls run on the tracker's worker thread (training never waits). Over HTTP, MLflow retries
failed requests (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7, exponential backoff); metric batches that
still fail stay in an in-memory spool that is replayed with the next batch and before the run ends.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import posixpath
import re
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from tracklink.envvars import EnvVar, truthy
from tracklink.media import Figure, Image, Media, Table, safe_name
from tracklink.redact import current_secrets, redact, redact_text, redacted_upload
from tracklink.shaping import param_text
from tracklink.tracker import RunEnd, RunInfo, Tracker

__all__ = ["MLflowCallback"]

logger = logging.getLogger("tracklink")

BOOL_CHOICES = ("true", "false", "1", "0", "yes", "no", "on", "off")
TRUNCATION_MARKER = "…[truncated]"
STATUS = {"success": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
_BAD_NAME_CHARS = re.compile(r"[^\w\-. :/]")  # MLflow's own rule; \w includes non-ASCII letters
_RUN_ID = re.compile(r"^[a-zA-Z0-9][\w\-]{0,255}$")
_MAX_SPOOL = 1_000_000
SPOOL_RETRY_S = 30.0  # seconds between attempts to replay spooled metrics


def sanitize_name(name: str, limit: int = 250) -> str:
    """A metric/param/tag name MLflow accepts: characters outside letters (any script: ``精度`` is kept),
    digits and ``_ - . space : /`` become ``_`` (``:`` too on Windows); a name that is not a unique path (``a//b``, ``/x``, ``./y``) loses
    its slashes; at most ``limit`` characters."""
    clean = _BAD_NAME_CHARS.sub("_", str(name))
    if os.name == "nt":
        clean = clean.replace(":", "_")
    norm = posixpath.normpath(clean) if clean else ""
    if norm != clean or norm in ("", ".") or norm.startswith(("..", "/")):
        clean = clean.replace("/", "_")
        if clean in ("", ".") or clean.startswith(".."):
            clean = "_" + clean
    return clean[:limit]


def truncate(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, ending with a visible marker when it was too long."""
    if len(value) <= limit:
        return value
    return value[: max(0, limit - len(TRUNCATION_MARKER))] + TRUNCATION_MARKER


_DATABASE_DRIVERS: dict[str, tuple[tuple[str, ...], str]] = {
    "sqlite": (("sqlite3",), "(built in)"),
    "postgresql": (("psycopg2", "psycopg"), "psycopg2-binary"),
    "mysql": (("MySQLdb", "pymysql"), "pymysql"),
    "mssql": (("pyodbc", "pymssql"), "pyodbc"),
}


def _scheme(uri: str) -> str:
    """The scheme of a tracking URI (``postgresql+psycopg2`` -> ``postgresql``); ``""`` for a plain path.
    A Windows drive letter (``C:\\runs``) is a path, not a scheme."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*):", uri)
    if not match or (len(match.group(1)) == 1 and os.name == "nt"):
        return ""
    return match.group(1).split("+", 1)[0].lower()


def _plugin_schemes() -> set[str]:
    """Tracking-store schemes registered by MLflow plugins (entry-point metadata only)."""
    from importlib import metadata

    try:
        return {ep.name.lower() for ep in metadata.entry_points(group="mlflow.tracking_store")}
    except Exception:
        return set()


def _file_store_problem(uri: str, shown: str, env: Mapping[str, str]) -> str | None:
    """A local directory store (``./mlruns``, ``file:///runs``): MLflow 3 refuses it unless
    ``MLFLOW_ALLOW_FILE_STORE`` is true, and it must be a directory that can be created."""
    from importlib import metadata

    path = uri[len("file://"):] if uri.startswith("file://") else uri[len("file:"):] if uri.startswith("file:") else uri
    if uri.startswith("file:") is False and ":" in uri:
        return (f"{shown} is neither a URL (scheme://...) nor a usable directory; expected e.g. "
                "http://127.0.0.1:5000 or sqlite:///mlflow.db")
    try:
        major = int(metadata.version("mlflow").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        major = 0
    if major >= 3 and not truthy(env.get("MLFLOW_ALLOW_FILE_STORE")):
        return (f"{shown} is a file store, which MLflow {metadata.version('mlflow')} refuses (it would log "
                "nothing); use sqlite:///mlflow.db or a tracking server, or set MLFLOW_ALLOW_FILE_STORE=true")
    existing = os.path.abspath(path or ".")
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{shown} lies in or below the regular file {existing!r}; a file store needs a directory"
    return None


class MLflowCallback(Tracker):
    """Logs to MLflow (see the module documentation). Takes no arguments, like transformers'."""

    name = "mlflow"
    init_kwargs_target = "the run: {'tags': {...}} adds tags"
    sdk = ("mlflow", "mlflow-skinny")  # the slim build provides the same mlflow module
    sdk_min_version = "2.8"
    sdk_module = "mlflow"
    extra = "mlflow"
    media = frozenset({"image", "table", "figure"})
    metric_style = "raw"
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("MLFLOW_TRACKING_URI", None, "Tracking server or store URI (default: MLflow's own default, "
               "sqlite:///mlflow.db in the working directory for MLflow 3.x).", read_by="sdk"),
        EnvVar("MLFLOW_EXPERIMENT_NAME", None, "Experiment of new runs; created when missing."),
        EnvVar("MLFLOW_EXPERIMENT_ID", None, "Experiment id of new runs when no name is given.", read_by="sdk"),
        EnvVar("MLFLOW_RUN_ID", None, "Re-attach to this existing run instead of creating one."),
        EnvVar("MLFLOW_TAGS", None, 'Tags for the run, a JSON object such as {"team": "nlp"}.'),
        EnvVar("MLFLOW_NESTED_RUN", "false", "Create a child run under the run active in the training "
               "thread instead of reusing it.", choices=BOOL_CHOICES),
        EnvVar("MLFLOW_FLATTEN_PARAMS", "false", "Flatten nested config dicts into a.b.c params "
               "(otherwise they are logged as JSON text).", choices=BOOL_CHOICES),
        EnvVar("MLFLOW_MAX_LOG_PARAMS", None, "Log at most this many params (digits only).", kind="int", minimum=0),
        EnvVar("HF_MLFLOW_LOG_ARTIFACTS", "false", "Upload every checkpoint directory as artifacts "
               "under checkpoint-<step>/.", choices=BOOL_CHOICES),
        EnvVar("DISABLE_MLFLOW_INTEGRATION", "false", "Switch the MLflow tracker off.", choices=BOOL_CHOICES),
        EnvVar("MLFLOW_TRACKING_USERNAME", None, "HTTP basic-auth user for the tracking server.", read_by="sdk"),
        EnvVar("MLFLOW_TRACKING_PASSWORD", None, "HTTP basic-auth password.", secret=True, read_by="sdk"),
        EnvVar("MLFLOW_TRACKING_TOKEN", None, "Bearer token for the tracking server.", secret=True,
               read_by="sdk"),
        EnvVar("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7", "Retries of a failed HTTP request.", read_by="sdk", kind="int", minimum=0),
        EnvVar("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2", "Exponential backoff factor between retries.",
               read_by="sdk", kind="number", minimum=0),
        EnvVar("DATABRICKS_HOST", None, "Databricks workspace URL, with MLFLOW_TRACKING_URI=databricks.",
               read_by="sdk", kind="url"),
        EnvVar("DATABRICKS_TOKEN", None, "Databricks access token, with MLFLOW_TRACKING_URI=databricks.",
               secret=True, read_by="sdk"),
        EnvVar("MLFLOW_DISABLE_TELEMETRY", "true", "MLflow usage telemetry; tracklink sets it to true "
               "unless you set it.", read_by="sdk"),
    )

    def __init__(self) -> None:
        problems = self.env_problems(os.environ)
        store = self._store_problem(os.environ)
        if store:
            problems.append(store)
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self._log_artifacts = truthy(os.environ.get("HF_MLFLOW_LOG_ARTIFACTS"))
        # The fluent API's active run is per thread and this tracker runs on a worker thread: remember
        # the thread that built it (the training thread, normally) and any run active right now.
        self._owner_thread = threading.get_ident()
        self._construction_run_id = self._fluent_active_run_id()
        self._client: Any = None
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._owned = False
        self._spool: list[Any] = []
        self._retry_at = 0.0
        self._floors: dict[str, int] = {}
        self._stamps: dict[str, tuple[int, int]] = {}  # key -> (step, millisecond) of its last point
        self._start_step = 0
        self._project: str | None = None
        self._init_tags: dict[str, str] = {}

    # -- declarations ----------------------------------------------------------------------

    @classmethod
    def disabled_by(cls, env: Mapping[str, str]) -> str | None:
        if truthy(env.get("DISABLE_MLFLOW_INTEGRATION")):
            return "disabled by DISABLE_MLFLOW_INTEGRATION"
        return None

    @classmethod
    def ready(cls, env: Mapping[str, str]) -> str | None:
        uri = (env.get("MLFLOW_TRACKING_URI") or "").strip()
        if uri.startswith("databricks") and not (env.get("DATABRICKS_HOST") and env.get("DATABRICKS_TOKEN")):
            return "MLFLOW_TRACKING_URI points to Databricks but DATABRICKS_HOST/DATABRICKS_TOKEN are not set"
        return cls._store_problem(env)  # otherwise local stores and plain servers need no interaction

    @classmethod
    def _store_problem(cls, env: Mapping[str, str]) -> str | None:
        """mlflow-skinny alone has no database support (SQLAlchemy), which MLflow's default local store
        (``sqlite:///mlflow.db``) and database URIs need; a tracking server or a file store works."""
        from importlib import metadata

        try:
            metadata.version("mlflow")
            return None
        except metadata.PackageNotFoundError:
            pass
        uri = (env.get("MLFLOW_TRACKING_URI") or "").strip()
        scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if uri else ""
        if scheme in ("", "sqlite", "postgresql", "mysql", "mssql"):
            shown = f"MLFLOW_TRACKING_URI={redact_text(uri)!r}" if uri else "MLFLOW_TRACKING_URI is not set"
            return (f"only mlflow-skinny is installed and {shown}: that store needs the full mlflow "
                    "(pip install mlflow), or point MLFLOW_TRACKING_URI to a tracking server (http://...)")
        return None

    @classmethod
    def env_problems(cls, env: Mapping[str, str]) -> list[str]:
        # the boolean switches (declared with choices); an empty value means false
        problems = [p for var in cls.env_vars if (env.get(var.name) or "").strip() and (p := var.problem(env))]
        tags = env.get("MLFLOW_TAGS")
        if tags is not None and tags.strip():
            shown = redact_text(tags, current_secrets())
            try:
                parsed = json.loads(tags)
            except ValueError as exc:
                problems.append(f"MLFLOW_TAGS={shown!r} is not valid JSON ({exc}); expected a JSON "
                                'object such as {"team": "nlp"}')
            else:
                if not isinstance(parsed, dict):
                    problems.append(f"MLFLOW_TAGS={shown!r} is a JSON {type(parsed).__name__}; "
                                    'expected a JSON object such as {"team": "nlp"}')
        limit = env.get("MLFLOW_MAX_LOG_PARAMS")
        if limit is not None and limit.strip() and not limit.strip().isdigit():
            problems.append(f"MLFLOW_MAX_LOG_PARAMS={limit!r} is not accepted; expected digits only, e.g. 100")
        run_id = env.get("MLFLOW_RUN_ID")
        if run_id is not None and run_id.strip() and not _RUN_ID.match(run_id.strip()):
            problems.append(f"MLFLOW_RUN_ID={run_id!r} is not an MLflow run id (letters, digits, _ and -)")
        uri_problem = cls._uri_problem(env)
        if uri_problem:
            problems.append(uri_problem)
        return problems

    @classmethod
    def _uri_problem(cls, env: Mapping[str, str]) -> str | None:
        """What can be known about ``MLFLOW_TRACKING_URI`` without contacting anything: a known scheme, a
        host for a server, a store MLflow accepts, a database driver that is installed."""
        raw = env.get("MLFLOW_TRACKING_URI")
        uri = (raw or "").strip()
        if not uri:
            return None
        shown = f"MLFLOW_TRACKING_URI={redact_text(uri, current_secrets())!r}"
        scheme = _scheme(uri) or (uri.lower() if uri.lower() in ("databricks", "databricks-uc", "uc") else "")
        if scheme in ("http", "https"):
            try:
                parsed = urlsplit(uri)
                parsed.port  # noqa: B018 - raises on a port that is not a number
            except ValueError as exc:
                return f"{shown} is not a valid URL ({exc}); expected {scheme}://HOST[:PORT][/PATH]"
            if not parsed.hostname:
                return f"{shown} has no host; expected {scheme}://HOST[:PORT][/PATH], e.g. http://127.0.0.1:5000"
            return None
        if scheme in ("", "file"):
            return _file_store_problem(uri, shown, env)
        if scheme in _DATABASE_DRIVERS:
            if scheme == "sqlite":
                path = uri.split(":", 1)[1].lstrip("/") if uri.startswith("sqlite:///") else ""
                target = ("/" if uri.startswith("sqlite:////") else "") + path
                if target and os.path.isdir(target):
                    return f"{shown} names a directory, not a database file; use sqlite:///PATH/mlflow.db"
                return None
            modules, package = _DATABASE_DRIVERS[scheme]
            if not any(importlib.util.find_spec(m) is not None for m in modules):
                return (f"{shown} needs a {scheme} driver, which is not installed: pip install {package} "
                        "(or use sqlite:///mlflow.db or a tracking server)")
            return None
        if scheme.startswith("databricks") or scheme in ("uc",) or scheme in _plugin_schemes():
            return None
        return (f"{shown} has scheme {scheme!r}, which MLflow does not know; accepted: http(s)://HOST, "
                "sqlite:///PATH, postgresql://, mysql://, mssql://, databricks, file:PATH (with "
                "MLFLOW_ALLOW_FILE_STORE=true) or a store registered by an MLflow plugin")

    @classmethod
    def connection_problems(cls, env: Mapping[str, str], timeout: float = 2.0) -> list[str]:
        """Whether a tracking server answers at all (a TCP connection within ``timeout`` seconds); used by
        ``tracklink doctor`` and warned about when the trainer is built."""
        uri = (env.get("MLFLOW_TRACKING_URI") or "").strip()
        if _scheme(uri) not in ("http", "https") or cls._uri_problem(env):
            return []
        parsed = urlsplit(uri)
        port = parsed.port or (443 if parsed.scheme.lower() == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                return []
        except OSError as exc:
            shown = redact_text(uri, current_secrets())
            return [f"the MLflow tracking server at MLFLOW_TRACKING_URI={shown!r} does not answer "
                    f"({exc.strerror or exc}); start it, or fix MLFLOW_TRACKING_URI, or leave mlflow out of "
                    "report_to (DISABLE_MLFLOW_INTEGRATION=true)"]

    @property
    def uploads_checkpoints(self) -> bool:
        return self._log_artifacts

    def check_args(self, args: Any) -> None:
        """On the training thread at trainer construction: remember it (see ``_user_run``), and warn when
        the tracking server does not answer (training goes on: it never waits for MLflow)."""
        self._owner_thread = threading.get_ident()
        self._construction_run_id = self._fluent_active_run_id() or self._construction_run_id
        for problem in self.connection_problems(os.environ):
            logger.warning("tracklink: %s. Training does not wait for it; this run's MLflow data is lost unless "
                           "the server answers when the run starts", problem)

    # -- SDK helpers -------------------------------------------------------------------------

    @staticmethod
    def _fluent_active_run_id() -> str | None:
        import sys

        mlflow = sys.modules.get("mlflow")  # never import it here: no active run without it
        try:
            run = mlflow.active_run() if mlflow is not None else None
        except Exception:
            return None
        return run.info.run_id if run is not None else None

    def _mlflow(self) -> Any:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # set before the first import
        return self.import_sdk("mlflow")

    def tracking_uri(self, mlflow: Any) -> str:
        """The URI MLflow would use, with a working local default."""
        uri = mlflow.get_tracking_uri()
        if mlflow.is_tracking_uri_set():
            return str(uri)
        if str(uri).startswith("file:") and not truthy(os.environ.get("MLFLOW_ALLOW_FILE_STORE")):
            return "sqlite:///" + os.path.abspath("mlflow.db")
        return str(uri)

    def _user_run(self, mlflow: Any) -> Any:
        """The run active in the training thread (checked from this worker thread), if any."""
        run = mlflow.active_run()  # when called inline
        if run is not None:
            return run
        try:
            from mlflow.tracking import fluent

            stacks = fluent._active_run_stack.get_all_thread_values()
        except Exception:
            stacks = {}
        for ident in (self._owner_thread, threading.main_thread().ident):
            stack = stacks.get(ident)
            if stack:
                return stack[-1]
        if self._construction_run_id:  # active when the Trainer was built; still running?
            try:
                found = self._client.get_run(self._construction_run_id)
            except Exception:  # e.g. started against another tracking URI
                return None
            return found if found.info.status == "RUNNING" else None
        return None

    def _experiment(self, mlflow: Any) -> str:
        from mlflow.entities import LifecycleStage
        from mlflow.exceptions import MlflowException

        name = (self._project or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "").strip()
        if name:
            experiment = self._client.get_experiment_by_name(name)
            if experiment is not None and experiment.lifecycle_stage == LifecycleStage.DELETED:
                raise ValueError(f"MLFLOW_EXPERIMENT_NAME={name!r} names a deleted experiment; restore it "
                                 "or choose another name")
            if experiment is not None:
                return str(experiment.experiment_id)
            try:
                return str(self._client.create_experiment(name))
            except MlflowException:  # created concurrently
                experiment = self._client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                return str(experiment.experiment_id)
        try:
            from mlflow.tracking.fluent import _get_experiment_id

            return str(_get_experiment_id() or "0")
        except Exception:
            return os.environ.get("MLFLOW_EXPERIMENT_ID") or "0"

    # -- lifecycle ----------------------------------------------------------------------------

    def setup(self, run: RunInfo) -> None:
        mlflow = self._mlflow()
        from mlflow.tracking import MlflowClient

        self._log_artifacts = truthy(os.environ.get("HF_MLFLOW_LOG_ARTIFACTS"))
        self._project = run.project
        unknown = sorted(set(run.extra) - {"tags"})
        if unknown or not isinstance(run.extra.get("tags", {}), Mapping):
            raise ValueError(f"init_kwargs for mlflow accept only 'tags' (a dict), got {run.extra!r}")
        self._init_tags = {str(k): param_text(v, json_scalars=False) for k, v in dict(run.extra.get("tags") or {}).items()}
        self._client = MlflowClient(tracking_uri=self.tracking_uri(mlflow))
        self._spool, self._floors, self._start_step, self._retry_at = [], {}, run.start_step, 0.0
        self._stamps = {}
        env_run_id = (os.environ.get("MLFLOW_RUN_ID") or "").strip()
        resume_id = (run.resume or {}).get("run_id")
        user_run = self._user_run(mlflow)
        target = env_run_id or resume_id
        if target:
            self._attach(str(target), user_run, run.start_step, run.replay)
        elif user_run is not None and not truthy(os.environ.get("MLFLOW_NESTED_RUN")):
            self._run_id, self._experiment_id, self._owned = user_run.info.run_id, user_run.info.experiment_id, False
        else:
            tags = {}
            if user_run is not None:  # nested: a child of the user's run, in its experiment
                tags["mlflow.parentRunId"] = user_run.info.run_id
                experiment_id = user_run.info.experiment_id
            else:
                experiment_id = self._experiment(mlflow)
            if run.group:  # a search trial: a child of the search's parent run, tagged with both names
                tags.update({"tracklink.search": run.group, "tracklink.trial": str(run.trial_name)})
                tags.setdefault("mlflow.parentRunId", self._search_parent(experiment_id, run.group))
            created = self._client.create_run(experiment_id, tags=tags, run_name=run.name or None)
            self._run_id, self._experiment_id, self._owned = created.info.run_id, experiment_id, True
        try:  # the run exists now: a failure here must not orphan it (metrics may still get through)
            self._log_params(run)
            self._log_tags(self.extra_tags())
        except Exception as exc:
            self._warn_once("params", f"tracker {self.name!r} could not log params/tags of run "
                                      f"{self._run_id}: {type(exc).__name__}: {exc}")

    def _search_parent(self, experiment_id: str, search: str) -> str:
        """The run that stands for a hyper-parameter search (created, finished at once, by its first trial)."""
        quoted = search.replace("'", "")
        found = self._client.search_runs(
            [experiment_id], filter_string=f"tags.`tracklink.search_parent` = '{quoted}'", max_results=1,
        )
        if found:
            return str(found[0].info.run_id)
        parent = self._client.create_run(experiment_id, tags={"tracklink.search_parent": search}, run_name=search)
        self._client.set_terminated(parent.info.run_id, "FINISHED")
        return str(parent.info.run_id)

    def _attach(self, run_id: str, user_run: Any, start_step: int, replay: bool = False) -> None:
        existing = self._client.get_run(run_id)  # a clear MlflowException when it does not exist
        if existing.info.lifecycle_stage == "deleted":
            raise ValueError(f"MLflow run {run_id} is deleted; cannot re-attach to it")
        self._run_id, self._experiment_id = run_id, existing.info.experiment_id
        self._owned = user_run is None or user_run.info.run_id != run_id
        if self._owned and existing.info.status != "RUNNING":
            self._client.update_run(run_id, status="RUNNING")
        if replay:  # tracklink sync: every point the run holds already is left out (exactly once per key and step)
            self._start_step = -1
        if start_step > 0 or replay:  # points after the restored step that the run already holds are kept
            for metric in getattr(existing.data, "_metric_objs", None) or ():
                self._floors[metric.key] = max(self._floors.get(metric.key, 0), int(metric.step))

    def extra_tags(self) -> dict[str, str]:
        """Tags added to every run: ``MLFLOW_TAGS`` and ``init_kwargs={"mlflow": {"tags": ...}}`` (redacted)."""
        raw = (os.environ.get("MLFLOW_TAGS") or "").strip()
        tags = {**(json.loads(raw) if raw else {}), **getattr(self, "_init_tags", {})}
        tags = redact(tags, current_secrets())
        return {str(k): param_text(v, json_scalars=False) for k, v in tags.items()}

    def _log_in_batches(self, field: str, items: list[Any]) -> None:
        """``log_batch`` the params or tags ``items``, as many per request as MLflow accepts."""
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            batch = {field: items[i : i + MAX_PARAMS_TAGS_PER_BATCH]}
            self._client.log_batch(self._run_id, **batch, synchronous=True)

    def _log_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag
        from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

        self._log_in_batches("tags", [RunTag(sanitize_name(k), truncate(v, MAX_TAG_VAL_LENGTH))
                                      for k, v in tags.items()])

    def params_of(self, run: RunInfo) -> dict[str, str]:
        """The params to log, as MLflow names and text, in order (model config first, then arguments)."""
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        source = run.params if truthy(os.environ.get("MLFLOW_FLATTEN_PARAMS")) else run.config
        out: dict[str, str] = {}
        owners: dict[str, str] = {}
        for key, value in source.items():
            name = sanitize_name(key)
            if name in owners:  # two keys sanitised to one name: keep both, the later one suffixed
                suffix = hashlib.sha1(str(key).encode()).hexdigest()[:6]
                unique = sanitize_name(f"{name[:240]}_{suffix}")
                self._warn_once(f"param:{key}", f"tracker {self.name!r} logs param {key!r} as {unique!r}: "
                                                f"{name!r} is already used by {owners[name]!r}")
                name = unique
            owners[name] = str(key)
            out[name] = truncate(param_text(value, json_scalars=False), MAX_PARAM_VAL_LENGTH)
        limit = (os.environ.get("MLFLOW_MAX_LOG_PARAMS") or "").strip()
        if limit.isdigit() and int(limit) < len(out):
            out = dict(list(out.items())[: int(limit)])
        return out

    def _log_params(self, run: RunInfo) -> None:
        from mlflow.entities import Param

        existing = self._client.get_run(self._run_id).data.params
        # MLflow refuses to change a param: on a re-attached or reused run, keep what is there
        self._log_in_batches("params", [Param(k, v) for k, v in self.params_of(run).items() if k not in existing])

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self._spool_points([(metrics, step, epoch)])

    def log_metrics_batch(self, points: list[tuple[dict[str, float], int, float | None]]) -> None:
        """Every point into the spool, then one ``log_batch`` request per 1,000 metric values."""
        self._spool_points(points)

    def _spool_points(self, points: list[tuple[dict[str, float], int, float | None]]) -> None:
        from mlflow.entities import Metric

        stamps = self._stamps
        for index, (metrics, step, _epoch) in enumerate(points):
            # stamped with the time the point was logged (the journal keeps it): a point sent again after a
            # crash, by tracklink sync, is then the same point, and MLflow stores a point once per (key, step,
            # timestamp, value) however late the first request landed
            logged = int(self.logged_at(index) * 1000)
            for key, value in metrics.items():
                if self._start_step < step <= self._floors.get(key, -1):
                    continue  # the resumed run already holds this point
                # a key logged twice at one step within a millisecond (epoch in the train and the eval log)
                # gets the next millisecond, as separate calls would; the same on a replay, which starts at a step
                stamp = logged
                last = stamps.get(key)
                if last is not None and last[0] == step and stamp <= last[1]:
                    stamp = last[1] + 1
                stamps[key] = (step, stamp)
                self._spool.append(Metric(key, float(value), stamp, int(step)))
        if len(self._spool) > _MAX_SPOOL:
            dropped = len(self._spool) - _MAX_SPOOL
            del self._spool[:dropped]
            self._warn_once("spool", f"tracker {self.name!r}: the backend is unreachable; dropped the "
                                     f"{dropped} oldest unsent metric points")
        self.flush()

    def sanitize_metric_name(self, name: str) -> str:
        return sanitize_name(name)

    def unsent_count(self) -> int:
        return len(self._spool)

    def flush(self, final: bool = False) -> None:
        """Send the spooled metric points. A batch that fails for a transient reason (server down or
        overloaded, after MLflow's own HTTP retries) stays in the spool and is retried with a later batch
        (not before ``SPOOL_RETRY_S``) or at the end of the run, where a failure is raised."""
        from mlflow.exceptions import MlflowException
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        if not final and time.monotonic() < self._retry_at:
            return
        while self._spool and self._run_id:
            chunk = self._spool[:MAX_METRICS_PER_BATCH]
            try:
                self._client.log_batch(self._run_id, metrics=chunk, synchronous=True)
            except MlflowException as exc:
                status = exc.get_http_status_code()
                if 400 <= status < 500 and status not in (401, 403, 408, 429):  # will never succeed
                    del self._spool[: len(chunk)]
                    self._warn_once(f"rejected:{exc.error_code}", f"tracker {self.name!r}: MLflow rejected "
                                    f"{len(chunk)} metric points: {exc.message}")
                    continue
                if final:
                    raise
                self._retry_at = time.monotonic() + SPOOL_RETRY_S
                self._warn_once("spooled", f"tracker {self.name!r}: MLflow is unreachable ({exc.message}); "
                                           "metric points are kept and sent when it answers again")
                return
            del self._spool[: len(chunk)]
            self._retry_at = 0.0

    def log_media(self, values: dict[str, Media], step: int) -> None:
        for name, value in values.items():
            if isinstance(value, Image):
                self._client.log_image(self._run_id, value.pil(), key=name, step=step, synchronous=True)
            elif isinstance(value, Figure):
                self._client.log_figure(self._run_id, value.figure(), f"figures/{safe_name(name)}/{step}.png")
            elif isinstance(value, Table):
                columns = {c: [row[i] for row in value.text_rows()] for i, c in enumerate(value.columns)}
                self._client.log_table(self._run_id, columns, f"tables/{safe_name(name)}/{step}.json")

    def log_artifact(self, path: str, name: str, step: int) -> None:
        folder = posixpath.dirname(name)
        self._client.log_artifact(self._run_id, path, artifact_path=f"media/{folder}" if folder else "media")

    def log_checkpoint(self, path: str, state: Any) -> None:
        """Upload the checkpoint directory under ``checkpoint-<step>/``, secrets masked in its text files."""
        if self._log_artifacts and self._run_id:
            with redacted_upload(path) as upload:
                self._client.log_artifacts(self._run_id, str(upload), artifact_path=upload.name)

    def run_identity(self) -> dict[str, Any] | None:
        if not self._run_id:
            return None
        return {"run_id": self._run_id, "experiment_id": self._experiment_id}

    def finish(self, end: RunEnd) -> None:
        status = end.status
        if self._client is None or not self._run_id:
            return
        try:
            self.flush(final=True)
        finally:
            if self._owned:
                self._client.set_terminated(self._run_id, STATUS[status])
