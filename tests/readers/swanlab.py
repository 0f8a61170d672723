"""Read back a SwanLab run written in offline (or local) mode: its record file ``run-<id>.swanlab`` (a
LevelDB-style log of protobuf ``Record`` messages: the start record, columns, scalars, texts, the finish
record) read with SwanLab's own reader and message types, and its ``files/config.yaml``. These are SwanLab
0.10 internals (``swanlab.sdk.internal.core_python.store``), so the reader is kept small."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_dirs(log_dir: Path) -> list[Path]:
    """The run directories under ``log_dir``, oldest first (their names start with the start time)."""
    return sorted(p for p in Path(log_dir).glob("run-*") if p.is_dir())


def records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of a run as a dict (protobuf JSON names), in the order written."""
    from google.protobuf.json_format import MessageToDict
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    (path,) = Path(run_dir).glob("run-*.swanlab")
    reader = DataStoreReader()
    reader.open(path)
    out = []
    while (data := reader.scan()) is not None:
        record = Record()
        record.ParseFromString(data)
        out.append(MessageToDict(record))
    return out


def start(run_dir: Path) -> dict[str, Any]:
    return next(r["start"] for r in records(run_dir) if "start" in r)


def finish(run_dir: Path) -> dict[str, Any] | None:
    return next((r["finish"] for r in records(run_dir) if "finish" in r), None)


def scalars(run_dir: Path, key: str) -> list[tuple[int, float]]:
    return [(int(r["scalar"]["step"]), r["scalar"]["value"]["number"]) for r in records(run_dir)
            if "scalar" in r and r["scalar"]["key"] == key]


def columns(run_dir: Path) -> dict[str, str]:
    """Column key -> column type (``COLUMN_TYPE_SCALAR``, ``COLUMN_TYPE_TEXT``, ...)."""
    return {r["column"]["columnKey"]: r["column"]["columnType"] for r in records(run_dir) if "column" in r}


def config(run_dir: Path) -> dict[str, Any]:
    """``files/config.yaml``: each key's value (SwanLab stores ``{desc, sort, value}`` per key)."""
    import yaml  # swanlab's own dependency; absent in the core environment

    data = yaml.safe_load((Path(run_dir) / "files" / "config.yaml").read_text()) or {}
    return {k: v.get("value") if isinstance(v, dict) and "value" in v else v for k, v in data.items()}
