"""Test-wide settings: every tracker SDK offline, every output directory and ``HOME`` in a temp dir,
and no network connection allowed (a test fails if anything tries to reach a non-loopback address).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="tracklink-tests-"))

# Offline switches of every SDK (see shared/reference/sdk-offline.md), set before any SDK is imported.
OFFLINE_ENV = {
    "HOME": str(_SESSION_TMP / "home"),
    "TMPDIR": str(_SESSION_TMP / "tmp"),
    "MPLCONFIGDIR": str(_SESSION_TMP / "mpl"),
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_CONSOLE": "off",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_DIR": str(_SESSION_TMP / "wandb"),
    "WANDB_CACHE_DIR": str(_SESSION_TMP / "wandb" / "cache"),
    "WANDB_DATA_DIR": str(_SESSION_TMP / "wandb" / "data"),
    "WANDB_CONFIG_DIR": str(_SESSION_TMP / "wandb" / "config"),
    "WANDB_ARTIFACT_DIR": str(_SESSION_TMP / "wandb" / "artifacts"),
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "COMET_START_ONLINE": "0",
    "COMET_OFFLINE_DIRECTORY": str(_SESSION_TMP / "comet"),
    "COMET_ERROR_TRACKING_ENABLE": "false",
    "COMET_AUTO_LOG_ENV_DETAILS": "false",
    "COMET_AUTO_LOG_ENV_HOST": "false",
    "COMET_AUTO_LOG_CO2": "false",
    "COMET_DISABLE_AUTO_LOGGING": "1",
    "COMET_CONFIG": str(_SESSION_TMP / "comet" / "no-such.config"),
    "NEPTUNE_MODE": "offline",
    "CLEARML_OFFLINE_MODE": "1",
    "CLEARML_CACHE_DIR": str(_SESSION_TMP / "clearml"),
    "CLEARML_CONFIG_FILE": str(_SESSION_TMP / "clearml.conf"),
    "CLEARML_NO_DEFAULT_SERVER": "1",
    "DVC_NO_ANALYTICS": "1",
    "DVC_STUDIO_OFFLINE": "1",
    "DAGSHUB_CLIENT_TOKENS_CACHE": str(_SESSION_TMP / "dagshub-tokens"),
    "FLYTE_SDK_LOGGING_LEVEL": "40",
    "AZUREML_LOG_DEPRECATION_WARNING_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    # trackio: its local SQLite databases (read when trackio is first imported); Gradio's client without analytics
    "TRACKIO_DIR": str(_SESSION_TMP / "trackio"),
    "GRADIO_ANALYTICS_ENABLED": "False",
    # swanlab: offline mode (no login, no cloud), run files and its user folder in the session's temp dir
    "SWANLAB_MODE": "offline",
    "SWANLAB_LOG_DIR": str(_SESSION_TMP / "swanlab"),
    "SWANLAB_ROOT": str(_SESSION_TMP / "swanlab-root"),
}
for _key in ("TRACKLINK_REPORT_TO", "TRACKLINK_DISABLE", "TRACKLINK_ON_ERROR", "MLFLOW_TRACKING_URI",
             "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "WANDB_API_KEY", "COMET_API_KEY",
             "NEPTUNE_API_TOKEN", "NEPTUNE_PROJECT", "WANDB_PROJECT", "WANDB_RUN_ID",
             "TRACKIO_PROJECT", "TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_WRITE_TOKEN",
             "SWANLAB_API_KEY", "SWANLAB_PROJECT", "SWANLAB_RUN_ID", "SWANLAB_RESUME", "SWANLAB_LOG_MODEL",
             "KUBEFLOW_TRAINER_SERVER_URL", "KUBEFLOW_TRAINER_SERVER_CA_CERT", "KUBEFLOW_TRAINER_SERVER_TOKEN",
             "DISABLE_KUBEFLOW_INTEGRATION"):
    os.environ.pop(_key, None)
os.environ.update(OFFLINE_ENV)
for _dir in ("home", "tmp", "mpl", "wandb", "comet", "clearml", "trackio", "swanlab"):
    (_SESSION_TMP / _dir).mkdir(parents=True, exist_ok=True)
(_SESSION_TMP / "clearml.conf").write_text("sdk { development { report_use_subprocess: false } }\n")
tempfile.tempdir = None  # re-read TMPDIR


# -- no network ---------------------------------------------------------------------------------

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}
_network_attempts: list[str] = []
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _is_local(address: object) -> bool:
    if isinstance(address, tuple) and address:
        host = address[0]
    elif isinstance(address, (str, bytes)):
        return True  # AF_UNIX path
    else:
        return False
    if isinstance(host, bytes):
        host = host.decode()
    return host in _LOOPBACK_NAMES or str(host).startswith("127.") or host == socket.gethostname()


def _guarded_connect(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
        _network_attempts.append(f"connect {address!r}")
        raise OSError(101, f"network disabled in tests (tried to connect to {address!r})")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
        _network_attempts.append(f"connect_ex {address!r}")
        return 101
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
    name = host.decode() if isinstance(host, bytes) else host
    if not (name in _LOOPBACK_NAMES or str(name).startswith("127.") or name == socket.gethostname()):
        _network_attempts.append(f"getaddrinfo {name!r}")
        raise socket.gaierror(socket.EAI_NONAME, f"network disabled in tests (lookup of {name!r})")
    return _real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
socket.getaddrinfo = _guarded_getaddrinfo  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def no_network() -> object:
    """Fail the test when anything tried to reach the network (SDKs must stay offline)."""
    start = len(_network_attempts)
    yield
    attempts = _network_attempts[start:]
    if attempts:
        pytest.fail("network access attempted: " + "; ".join(sorted(set(attempts))[:10]), pytrace=False)


_ROOT_NOISE = {".pytest_cache", "__pycache__"}


@pytest.fixture(autouse=True)
def repository_untouched() -> object:
    """Fail the test that writes into the repository checkout (outputs belong in temp dirs; an SDK
    run from the checkout once left a DVC repository there)."""
    before = set(os.listdir(ROOT))
    yield
    new = sorted(set(os.listdir(ROOT)) - before - _ROOT_NOISE)
    if new:
        pytest.fail(f"the test wrote into the repository root: {new}", pytrace=False)


@pytest.fixture
def network_attempts() -> list[str]:
    """The list of refused network attempts (for tests that assert on them)."""
    return _network_attempts


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in its own empty working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _importable(module: str) -> bool:
    """Whether ``module`` can be found; a dotted name whose parent package is missing counts as absent
    (``find_spec("azureml.core")`` raises instead of returning None)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.sdk("x")`` tests when the SDK ``x`` is not installed, unless
    ``TRACKLINK_REQUIRE_SDKS=1`` (the SDK tox environment), where a missing SDK is an error."""

    required = os.environ.get("TRACKLINK_REQUIRE_SDKS") == "1"
    for item in items:
        for marker in item.iter_markers("sdk"):
            for module in marker.args:
                if not _importable(module):
                    if required:
                        raise pytest.UsageError(f"TRACKLINK_REQUIRE_SDKS=1 but SDK {module!r} is missing")
                    item.add_marker(pytest.mark.skip(reason=f"SDK {module!r} is not installed"))


@pytest.fixture
def one_process_group(monkeypatch: pytest.MonkeyPatch) -> object:
    """The environment of ``torchrun --nproc_per_node 1`` (a process group of one is created by the
    Trainer, e.g. for FSDP) and the group destroyed afterwards."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", str(port))):
        monkeypatch.setenv(name, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
