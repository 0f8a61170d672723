"""Read back what the neptune 1.x client queued in offline mode.

An offline run is ``.neptune/offline/run__<container uuid>__<pid>__<rand>/`` (under the working directory)
holding ``metadata.json`` and ``data-<n>.log``: JSON lines ``{"obj": {"type": ..., "path": [...], ...},
"version": n}``, one per operation, in order. :func:`offline_runs` replays those operations into the
fields, series and file uploads the run would hold on a server. The format is the client's internal
queue (pinned SDK version; see shared/reference/sdk-offline.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class OfflineRun:
    directory: Path
    container_id: str
    created_at: str
    fields: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    op_types: set[str] = field(default_factory=set)

    def namespace(self, prefix: str) -> dict[str, Any]:
        """Assigned fields under ``prefix/`` as a flat mapping of the rest of the path."""
        start = prefix.rstrip("/") + "/"
        return {k[len(start):]: v for k, v in self.fields.items() if k.startswith(start)}


def _drop(mapping: dict[str, Any], path: str) -> None:
    for key in [k for k in mapping if k == path or k.startswith(path + "/")]:
        del mapping[key]


def read_run(directory: Path) -> OfflineRun:
    meta = json.loads((directory / "metadata.json").read_text())
    run = OfflineRun(directory, meta["containerId"], meta.get("createdAt", ""))
    ops: list[dict[str, Any]] = []
    for log in sorted(directory.glob("data-*.log"), key=lambda p: int(p.stem.split("-")[1])):
        ops += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    for op in sorted(ops, key=lambda o: o["version"]):
        obj = op["obj"]
        kind, path = obj["type"], "/".join(obj["path"])
        run.op_types.add(kind)
        if kind.startswith("Assign"):
            run.fields[path] = obj["value"]
        elif kind.startswith("Log") and "values" in obj:
            run.series.setdefault(path, []).extend((v.get("step"), v["value"]) for v in obj["values"])
        elif kind == "UploadFile":
            run.files[path] = obj.get("file_path") or obj.get("tmp_file_name")
        elif kind == "DeleteAttribute":
            for mapping in (run.fields, run.series, run.files):
                _drop(mapping, path)
    return run


def offline_runs(root: Path) -> list[OfflineRun]:
    """Every offline run under ``root/.neptune/offline``, oldest first."""
    base = Path(root) / ".neptune" / "offline"
    runs = [read_run(d) for d in base.iterdir() if d.is_dir() and (d / "metadata.json").is_file()] \
        if base.is_dir() else []
    return sorted(runs, key=lambda r: r.created_at)
