"""CodeCarbon tracker (``report_to="codecarbon"``): energy and CO2 emissions of the training.

CodeCarbon's **offline** tracker (``OfflineEmissionsTracker``: no network, ever) measures from the
start of training (``on_train_begin``; not at ``Trainer()`` construction as in transformers) until its
end, once per node (``rank_policy="local_main"``). Its results go to:

* ``<output_dir>/emissions.csv``: one row per training (duration, emissions, energy_consumed,
  cpu/gpu/ram power and energy, country_iso_code, ...), appended by CodeCarbon;
* the final training summary that every other active tracker receives (and ``log_history``):
  ``emissions_kg`` (kg CO2-eq), ``energy_kwh`` (energy consumed, kWh) and ``emissions_duration_s``
  (measured seconds). Trackers with transformers' naming show them as ``train/emissions_kg``, ...

Settings come from CodeCarbon's own configuration (``~/.codecarbon.config``, ``./.codecarbon.config``,
``CODECARBON_*`` variables), with these tracklink defaults when it sets nothing: country
``USA`` (``country_iso_code``), log level ``error`` and ``allow_multiple_runs=True`` (no global lock
file). tracklink always writes only the CSV file (no API, Prometheus, Logfire or HTTP output) and never
uses Electricity Maps. A tracker that cannot start (CodeCarbon's lock file held by another process,
a hardware probe that fails, ...) is an isolated tracker error: training goes on without it.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
from typing import Any, ClassVar

from tracklink.envvars import EnvVar
from tracklink.tracker import RunEnd, RunInfo, Tracker

__all__ = ["CodeCarbonCallback"]

logger = logging.getLogger("tracklink")

DEFAULT_COUNTRY = "USA"
DEFAULT_LOG_LEVEL = "error"


def _sdk_defaults(conf: dict[str, Any]) -> dict[str, Any]:
    """tracklink's defaults for what CodeCarbon's configuration leaves unset."""
    out: dict[str, Any] = {}
    if not any(conf.get(k) for k in ("country_iso_code", "cloud_provider")):
        out["country_iso_code"] = DEFAULT_COUNTRY
    if not conf.get("log_level"):
        out["log_level"] = DEFAULT_LOG_LEVEL
    if not conf.get("allow_multiple_runs"):
        out["allow_multiple_runs"] = True
    return out


class CodeCarbonCallback(Tracker):
    """Tracks the energy use and carbon emissions of training with CodeCarbon's offline tracker."""

    name = "codecarbon"
    sdk = "codecarbon"
    sdk_min_version = "2.4"
    sdk_module = "codecarbon"
    extra = "codecarbon"
    media = frozenset()  # emissions only: every media value is dropped
    rank_policy = "local_main"
    metric_style = "raw"
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("CODECARBON_COUNTRY_ISO_CODE", DEFAULT_COUNTRY,
               "3-letter ISO code of the country whose energy mix is used (also `country_iso_code` in "
               ".codecarbon.config).", read_by="sdk"),
        EnvVar("CODECARBON_REGION", None, "Region inside the country (US states, Canadian provinces).",
               read_by="sdk"),
        EnvVar("CODECARBON_CLOUD_PROVIDER", None, "Cloud provider (with CODECARBON_CLOUD_REGION) instead of a country.",
               read_by="sdk"),
        EnvVar("CODECARBON_CLOUD_REGION", None, "Cloud region, e.g. us-east-1.", read_by="sdk"),
        EnvVar("CODECARBON_LOG_LEVEL", DEFAULT_LOG_LEVEL, "CodeCarbon's log level.",
               choices=("debug", "info", "warning", "error", "critical"), read_by="sdk"),
        EnvVar("CODECARBON_MEASURE_POWER_SECS", "15", "Seconds between power measurements.", read_by="sdk", kind="number", minimum=0.001),
        EnvVar("CODECARBON_PROJECT_NAME", "codecarbon", "project_name column of emissions.csv.", read_by="sdk"),
        EnvVar("CODECARBON_EXPERIMENT_NAME", "base", "experiment_name of the run.", read_by="sdk"),
        EnvVar("CODECARBON_TRACKING_MODE", "machine", "'machine' (whole machine) or 'process'.",
               choices=("machine", "process"), read_by="sdk"),
        EnvVar("CODECARBON_ALLOW_MULTIPLE_RUNS", "true",
               "false: take CodeCarbon's global lock file (a second tracker on the machine then fails).",
               choices=("true", "false"), read_by="sdk"),
    )

    def __init__(self) -> None:
        problems = self.env_problems(os.environ)
        if problems:
            raise ValueError("invalid CodeCarbon settings: " + "; ".join(problems))
        self.tracker: Any = None
        self._stopped = True
        self._stop_lock = threading.Lock()

    def setup(self, run: RunInfo) -> None:
        if not run.training:
            # a standalone evaluate()/predict() opens the run lazily: trainings only are measured
            return
        codecarbon = self.import_sdk()
        from codecarbon.core.config import get_hierarchical_config

        if _on_rocm():
            logger.warning(
                "tracklink: codecarbon on ROCm: GPU energy is only counted when CodeCarbon finds AMD's amdsmi "
                "(CodeCarbon 3+); otherwise only CPU and RAM are measured"
            )
        output_dir = os.path.abspath(run.output_dir or ".")
        os.makedirs(output_dir, exist_ok=True)
        tracker_class = codecarbon.OfflineEmissionsTracker
        kwargs = {**_sdk_defaults(get_hierarchical_config()), **_offline_outputs(tracker_class)}
        kwargs["output_dir"] = output_dir
        tracker = tracker_class(**kwargs)
        if getattr(tracker, "_another_instance_already_running", False):
            from codecarbon.lock import LOCKFILE

            raise RuntimeError(
                f"CodeCarbon's lock file {LOCKFILE} is held by another CodeCarbon instance; no emissions are "
                "measured for this training (remove the file if no other instance runs, or allow multiple "
                "runs: CODECARBON_ALLOW_MULTIPLE_RUNS=true)"
            )
        if "_start_time" not in vars(tracker):
            raise RuntimeError("CodeCarbon's OfflineEmissionsTracker failed to initialise (see CodeCarbon's log)")
        if getattr(tracker, "_electricitymaps_api_token", None):
            tracker._electricitymaps_api_token = None  # offline: the bundled energy-mix data only
        # CodeCarbon's start() swallows its exceptions; call the undecorated method to report the cause
        start = getattr(tracker_class.start, "__wrapped__", None)
        try:
            if start is not None:
                start(tracker)
            else:
                tracker.start()
            if getattr(tracker, "_start_time", None) is None:
                raise RuntimeError("CodeCarbon's tracker did not start (see CodeCarbon's log)")
        except BaseException:
            tracker.stop()  # stops what did start and releases CodeCarbon's lock file (never raises)
            raise
        self.tracker = tracker
        self._stopped = False

    def _stop(self) -> Any:
        """Stop the emissions tracker once; returns CodeCarbon's ``EmissionsData`` (or ``None``)."""
        with self._stop_lock:
            if self._stopped or self.tracker is None:
                return None
            self._stopped = True
            self.tracker.stop()
            data = getattr(self.tracker, "final_emissions_data", None)
            if data is None:
                raise RuntimeError("CodeCarbon's tracker did not stop cleanly; no emissions were recorded")
            return data

    def final_metrics(self) -> dict[str, float] | None:
        data = self._stop()
        if data is None:
            return None
        return {
            "emissions_kg": float(data.emissions),
            "energy_kwh": float(data.energy_consumed),
            "emissions_duration_s": float(data.duration),
        }

    def finish(self, end: RunEnd) -> None:
        self._stop()
        self.tracker = None


def _offline_outputs(tracker_class: Any) -> dict[str, Any]:
    """Arguments that keep CodeCarbon to its CSV file, for the installed version's signature."""
    accepted: set[str] = set()
    for klass in tracker_class.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            accepted.update(inspect.signature(init).parameters)
    out: dict[str, Any] = {}
    if "output_methods" in accepted:
        from codecarbon.output_methods.base_output import OutputMethod

        out["output_methods"] = [OutputMethod.CSV]
    else:
        for flag in ("save_to_api", "save_to_prometheus", "save_to_logfire", "save_to_logger"):
            if flag in accepted:
                out[flag] = False
        out["save_to_file"] = True
    if "emissions_endpoint" in accepted:
        out["emissions_endpoint"] = None
    return out


def _on_rocm() -> bool:
    torch = sys.modules.get("torch")
    return bool(getattr(getattr(torch, "version", None), "hip", None))
