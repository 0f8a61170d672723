"""System metrics: CPU and memory (psutil) and each visible GPU (NVML), sampled on a background thread.

Opt-in: ``TRACKLINK_SYSTEM_METRICS`` (``1``/``true``: every :data:`DEFAULT_INTERVAL` seconds; a number: that
many seconds; unset, ``0`` or ``false``: off) or ``tracklink.init(system_metrics=...)``. The run
(:class:`tracklink.Run`) owns the sampler; the loop's thread never samples: it only picks up the latest
sample when it logs (:meth:`SystemSampler.take`, a reference read), and each sample is logged once.

psutil and pynvml are optional third-party imports, made only when the feature is on (``import tracklink``
imports neither): without psutil the feature says so once and stays off; without NVML (no driver, no
``nvidia-ml-py``) the GPU metrics are absent and the rest is sampled.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .process import ProcessInfo

logger = logging.getLogger("tracklink")

__all__ = [
    "DEFAULT_INTERVAL", "ENV_SYSTEM_METRICS", "MIN_INTERVAL", "PREFIX", "THREAD_NAME", "SystemSampler",
    "system_metrics_interval", "system_prefix",
]

ENV_SYSTEM_METRICS = "TRACKLINK_SYSTEM_METRICS"
#: Seconds between samples when system metrics are switched on without an interval (MLflow's default).
DEFAULT_INTERVAL = 10.0
#: The shortest interval accepted (a shorter one would keep a core busy sampling).
MIN_INTERVAL = 0.1
PREFIX = "system/"
THREAD_NAME = "tracklink-system-metrics"
_MIB = 2.0**20
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off"})
_ACCEPTED_ENV = (f"unset, 0 or false (off); 1 or true (on, every {DEFAULT_INTERVAL:g} s); or a number of "
                 f"seconds >= {MIN_INTERVAL:g}")
_ACCEPTED_ARG = (f"None ({ENV_SYSTEM_METRICS} decides), False, True (every {DEFAULT_INTERVAL:g} s) or a number "
                 f"of seconds >= {MIN_INTERVAL:g}")
_warned_psutil = False


def system_metrics_interval(value: Any = None) -> float | None:
    """The sampling interval in seconds, or ``None`` when system metrics are off.

    ``value`` is the explicit setting (``None``: the variable ``TRACKLINK_SYSTEM_METRICS`` decides; ``False``;
    ``True``: every :data:`DEFAULT_INTERVAL` s; a number: the interval). A bad value is an error that names it
    and what is accepted (``TypeError`` for a value of the wrong type, ``ValueError`` otherwise).
    """
    if value is None:
        raw = os.environ.get(ENV_SYSTEM_METRICS)
        if raw is None:
            return None
        text = raw.strip().lower()
        if text in _OFF:
            return None
        if text in _ON:
            return DEFAULT_INTERVAL
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= MIN_INTERVAL):
            raise ValueError(f"{ENV_SYSTEM_METRICS}={raw!r} is not accepted; accepted: {_ACCEPTED_ENV}")
        return seconds
    if value is True:
        return DEFAULT_INTERVAL
    if value is False:
        return None
    if not isinstance(value, numbers.Real):  # a NumPy number too
        raise TypeError(f"system_metrics={value!r} ({type(value).__name__}) is not accepted; accepted: "
                        f"{_ACCEPTED_ARG}")
    seconds = float(value)
    if not (math.isfinite(seconds) and seconds >= MIN_INTERVAL):
        raise ValueError(f"system_metrics={value!r} is not accepted; accepted: {_ACCEPTED_ARG}")
    return seconds


def system_prefix(process: ProcessInfo) -> str:
    """``system/`` for a single process; ``system/node<N>/`` under torchrun (more than one process), ``N`` being
    the node's rank (torchrun's ``GROUP_RANK``, else the world rank divided by ``LOCAL_WORLD_SIZE``)."""
    if process.world_size <= 1:
        return PREFIX
    node = os.environ.get("GROUP_RANK", "").strip()
    if not node.isdigit():
        local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
        node = str(process.rank // int(local)) if local.isdigit() and int(local) > 0 else "0"
    return f"{PREFIX}node{int(node)}/"


class SystemSampler:
    """Samples system metrics every ``interval`` seconds on a daemon thread (``tracklink-system-metrics``).

    The newest sample is published as one dict (names already under ``prefix``) that is never changed
    afterwards; :meth:`take` hands it to the logging thread once. Nothing here runs on the caller's thread
    except :meth:`start` (which imports psutil) and :meth:`stop`.
    """

    def __init__(self, interval: float, prefix: str = PREFIX) -> None:
        self.interval = float(interval)
        self.prefix = prefix
        self.gpus: int | None = None  #: GPUs sampled through NVML (None until the thread has looked)
        self.gpu_problem: str | None = None  #: why there are no GPU metrics, when there are none
        self._latest: tuple[int, dict[str, float]] | None = None
        self._taken = 0
        self._new = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._psutil: Any = None

    # -- the caller's side ---------------------------------------------------------------------------

    def start(self) -> bool:
        """Start the sampling thread; ``False`` (and one warning per process) when psutil is missing."""
        global _warned_psutil
        try:
            import psutil  # optional third-party import: only when system metrics are on
        except ImportError:
            if not _warned_psutil:
                _warned_psutil = True
                logger.warning("tracklink: system metrics are off: they need psutil, which is not installed "
                               "(pip install psutil; for GPU metrics also nvidia-ml-py)")
            return False
        self._psutil = psutil
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def take(self) -> dict[str, float] | None:
        """The newest sample if it was not taken yet, else ``None`` (each sample is handed out once).

        A reference read on the caller's thread: the dict returned is never modified; do not modify it."""
        latest = self._latest
        if latest is None or latest[0] == self._taken:
            return None
        self._taken = latest[0]
        return latest[1]

    def wait(self, timeout: float) -> bool:
        """Block until a sample that :meth:`take` has not handed out exists (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._new:
            while self._latest is None or self._latest[0] == self._taken:
                left = deadline - time.monotonic()
                if left <= 0 or not self.running:
                    return False
                self._new.wait(left)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (at most ``timeout`` seconds: a hung NVML call is left behind as
        a daemon thread). The last sample stays available to :meth:`take`."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.debug("tracklink: the system-metrics thread did not stop within %g s", timeout)

    # -- the sampling thread -------------------------------------------------------------------------

    def _run(self) -> None:
        nvml, gpus = _open_nvml(self)
        try:
            try:
                sources = [_host_source(self._psutil)]
            except Exception as exc:  # never reaches training: the sampler ends, training goes on
                logger.warning("tracklink: system metrics are off: psutil failed: %r", exc)
                return
            if gpus:
                sources.append(_gpu_source(nvml, gpus))
            logger.debug("tracklink: system metrics every %g s under %r (%s)", self.interval, self.prefix,
                         f"{len(gpus)} GPU(s)" if gpus else f"no GPU metrics: {self.gpu_problem}")
            failed: set[str] = set()
            sequence = 0
            while not self._stop.wait(self.interval):
                sample: dict[str, float] = {}
                for source in sources:
                    try:
                        source(sample)
                    except Exception as exc:  # a sampling error never reaches training; told once per kind
                        kind = type(exc).__name__
                        if kind not in failed:
                            failed.add(kind)
                            logger.warning("tracklink: a system-metrics sample failed: %r", exc)
                if not sample:
                    continue
                sequence += 1
                published = {self.prefix + key: value for key, value in sample.items()}
                with self._new:
                    self._latest = (sequence, published)
                    self._new.notify_all()
        finally:
            with self._new:
                self._new.notify_all()
            if nvml is not None:
                try:
                    nvml.nvmlShutdown()
                except Exception as exc:  # pragma: no cover - best effort
                    logger.debug("tracklink: nvmlShutdown failed: %r", exc)


def _host_source(psutil: Any) -> Callable[[dict[str, float]], None]:
    """CPU and memory of the machine and of this process (psutil). CPU percentages are measured since the
    previous sample (primed here, so the first sample covers the first interval)."""
    process = psutil.Process()
    psutil.cpu_percent(None)
    process.cpu_percent(None)

    def sample(out: dict[str, float]) -> None:
        memory = psutil.virtual_memory()
        out["cpu_percent"] = float(psutil.cpu_percent(None))
        out["memory_percent"] = float(memory.percent)
        out["memory_used_mb"] = (memory.total - memory.available) / _MIB
        out["memory_available_mb"] = memory.available / _MIB
        with process.oneshot():
            out["process_cpu_percent"] = float(process.cpu_percent(None))
            out["process_rss_mb"] = process.memory_info().rss / _MIB

    return sample


def _open_nvml(sampler: SystemSampler) -> tuple[Any, list[Any]]:
    """NVML and the handles of the visible GPUs, or ``(None, [])`` with the reason in ``sampler.gpu_problem``."""
    sampler.gpus = 0
    try:
        import pynvml  # optional third-party import (nvidia-ml-py): only when system metrics are on
    except ImportError:
        sampler.gpu_problem = "pynvml (nvidia-ml-py) is not installed"
        return None, []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError: no driver, no library
        sampler.gpu_problem = f"NVML cannot be initialised: {exc}"
        return None, []
    try:
        handles = _visible_gpus(pynvml)
    except Exception as exc:
        handles, sampler.gpu_problem = [], f"NVML cannot list the GPUs: {exc}"
    if not handles:
        sampler.gpu_problem = sampler.gpu_problem or "no visible GPU"
        try:
            pynvml.nvmlShutdown()
        except Exception as exc:  # pragma: no cover - best effort
            logger.debug("tracklink: nvmlShutdown failed: %r", exc)
        return None, []
    sampler.gpus = len(handles)
    return pynvml, handles


def _visible_gpus(nvml: Any) -> list[Any]:
    """The GPUs this process can see, in CUDA's numbering: ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-``/``MIG-``
    UUIDs, read up to the first entry that names no device, as CUDA does), else every device NVML lists."""
    count = int(nvml.nvmlDeviceGetCount())
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    handles = []
    for item in (part.strip() for part in raw.split(",")):
        try:
            if item.isdigit() and int(item) < count:
                handles.append(nvml.nvmlDeviceGetHandleByIndex(int(item)))
            elif item[:4].upper() in ("GPU-", "MIG-"):
                handles.append(nvml.nvmlDeviceGetHandleByUUID(item))
            else:
                break
        except Exception:  # NVMLError: no such device
            break
    return handles


def _gpu_source(nvml: Any, handles: list[Any]) -> Callable[[dict[str, float]], None]:
    """Per GPU ``gpu<i>/``: utilisation (%), memory used (MiB and %), power (W), temperature (°C). A reading the
    device does not support (a MIG slice has no utilisation) is left out of every sample."""
    readings: list[tuple[str, Callable[[Any], dict[str, float]]]] = [
        ("utilization", lambda h: {"utilization": float(nvml.nvmlDeviceGetUtilizationRates(h).gpu)}),
        ("memory", lambda h: _gpu_memory(nvml.nvmlDeviceGetMemoryInfo(h))),
        ("power", lambda h: {"power_w": nvml.nvmlDeviceGetPowerUsage(h) / 1000.0}),
        ("temperature", lambda h: {"temperature_c": float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))}),
    ]
    unsupported: set[tuple[int, str]] = set()
    not_supported = getattr(nvml, "NVMLError_NotSupported", ())

    def sample(out: dict[str, float]) -> None:
        for index, handle in enumerate(handles):
            for name, read in readings:
                if (index, name) in unsupported:
                    continue
                try:
                    values = read(handle)
                except not_supported:
                    unsupported.add((index, name))
                    continue
                except nvml.NVMLError:  # e.g. the GPU is busy resetting: left out of this sample
                    continue
                for key, value in values.items():
                    out[f"gpu{index}/{key}"] = value

    return sample


def _gpu_memory(info: Any) -> dict[str, float]:
    used, total = float(info.used), float(info.total)
    return {"memory_used_mb": used / _MIB, "memory_percent": 100.0 * used / total if total else 0.0}
