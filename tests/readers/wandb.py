"""Read what the wandb SDK wrote offline: the ``run-<id>.wandb`` transaction log.

The file is a 7-byte header (``:W&B``, magic 0xBEE1, version) followed by 32 KiB blocks of records, each
with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and a
``wandb_internal_pb2.Record`` payload. This is an internal format (pinned SDK in the lock file); see
shared/reference/sdk_scripts/sdk_wandb.py.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768


def _records(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        ident, magic, _version = struct.unpack("<4sHB", handle.read(7))
        assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a wandb transaction log"
        index, pending = 7, b""
        while True:
            left = BLOCK - index % BLOCK
            if left < 7:
                handle.read(left)
                index += left
            header = handle.read(7)
            if len(header) < 7:
                return
            _crc, length, kind = struct.unpack("<IHB", header)
            data = handle.read(length)
            index += 7 + length
            if kind == 1:
                yield data
            elif kind == 2:
                pending = data
            elif kind == 3:
                pending += data
            elif kind == 4:
                yield pending + data
                pending = b""


@dataclass
class WandbRun:
    """One offline run directory (one process session of a run)."""

    path: Path
    run_id: str = ""
    project: str = ""
    name: str = ""
    resumed: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None

    def series(self, key: str) -> list[tuple[int, float]]:
        """``(train/global_step, value)`` of every history row that has ``key``."""
        return [(row["train/global_step"], row[key]) for row in self.history if key in row]


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(wandb_file: Path) -> WandbRun:
    from wandb.proto import wandb_internal_pb2 as pb

    run = WandbRun(path=wandb_file)
    for raw in _records(wandb_file):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            # later "run" records are partial updates: keep the fields they leave empty
            run.run_id = record.run.run_id or run.run_id
            run.project = record.run.project or run.project
            run.name = record.run.display_name or run.name
            run.resumed = run.resumed or record.run.resumed
            for item in record.run.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "metric":
            run.metrics.append({"name": record.metric.name, "glob": record.metric.glob_name,
                                "step_metric": record.metric.step_metric})
        elif kind == "artifact":
            art = record.artifact
            run.artifacts.append({
                "name": art.name, "type": art.type, "aliases": list(art.aliases),
                "metadata": json.loads(art.metadata) if art.metadata else {},
                "files": sorted(c.path for c in art.manifest.contents),
            })
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config.pop("_wandb", None)
    return run


def read_runs(wandb_dir: Path) -> list[WandbRun]:
    """Every offline run under ``wandb_dir`` (``WANDB_DIR``), oldest first."""
    files = sorted(Path(wandb_dir).rglob("offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
    return [read_run(path) for path in files]
