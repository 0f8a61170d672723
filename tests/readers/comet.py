"""Read what comet_ml wrote offline: the ``<experiment key>-<suffix>.zip`` archives in
``COMET_OFFLINE_DIRECTORY`` (``experiment.json`` plus ``messages.json``, one JSON message per line; asset
bytes are zip members named by the message's ``file_path``). See shared/reference/sdk_scripts/sdk_comet.py.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class CometArchive:
    """One offline experiment session."""

    path: Path
    experiment: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    others: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, bytes] = field(default_factory=dict)
    texts: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    histograms: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    asset_steps: dict[str, Any] = field(default_factory=dict)
    graph: str | None = None

    @property
    def key(self) -> str:
        return str(self.experiment.get("offline_id"))

    def series(self, name: str) -> list[tuple[int, float]]:
        """``(step, value)`` of metric ``name`` in logging order."""
        return [(m["step"], m["metricValue"]) for m in self.metrics if m["metricName"] == name]


def read_archive(path: Path) -> CometArchive:
    archive = CometArchive(path=Path(path))
    with zipfile.ZipFile(path) as zf:
        archive.experiment = json.loads(zf.read("experiment.json"))
        for line in zf.read("messages.json").decode().splitlines():
            if not line.strip():
                continue
            message = json.loads(line)
            kind, payload = message.get("type"), message.get("payload", {})
            if kind == "parameter_msg":
                param = payload.get("param") or payload.get("params")  # "params" for list values
                archive.params[param["paramName"]] = param["paramValue"]
            elif kind == "metric_msg":
                archive.metrics.append(payload["metric"])
            elif kind == "log_other":
                archive.others[payload["key"]] = payload["value"]
            elif kind == "file_upload" and payload.get("upload_type") == "text-sample":
                archive.texts.append({"text": zf.read(payload["file_path"]).decode(),
                                      "step": payload["additional_params"]["step"],
                                      "metadata": payload.get("metadata") or {}})
            elif kind == "file_upload" and "figName" in payload.get("additional_params", {}):  # log_image
                params = payload["additional_params"]
                archive.images.append({"name": params["figName"], "step": params.get("step"),
                                       "metadata": payload.get("metadata") or {}, "data": zf.read(payload["file_path"])})
            elif kind == "file_upload" and payload.get("additional_params", {}).get("type") == "histogram3d":
                params = payload["additional_params"]
                archive.histograms.setdefault(params["fileName"], []).append(
                    {"content": json.loads(zf.read(payload["file_path"])), "step": params.get("step")})
            elif kind == "file_upload":
                params = payload["additional_params"]
                archive.assets[params["fileName"]] = zf.read(payload["file_path"])
                archive.asset_steps[params["fileName"]] = params.get("step")
            elif kind == "graph":
                archive.graph = payload["graph"]
    return archive


def read_archives(directory: Path) -> list[CometArchive]:
    """Every archive in ``directory``, by experiment start time."""
    archives = [read_archive(p) for p in Path(directory).glob("*.zip")]
    return sorted(archives, key=lambda a: (a.experiment.get("start_time") or 0, a.path.name))


def extract_all(directory: Path, destination: Path) -> Path:
    """Unpack every archive (zip members are compressed: search the unpacked files for secrets)."""
    for path in Path(directory).glob("*.zip"):
        with zipfile.ZipFile(path) as zf:
            zf.extractall(destination / path.stem)
    return destination
