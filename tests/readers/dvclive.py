"""Read back what DVCLive wrote: ``plots/metrics/<name>.tsv``, ``metrics.json``, ``params.yaml``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def series(live_dir: Path, name: str) -> list[tuple[int, float]]:
    """The ``(step, value)`` rows of metric ``name`` (``plots/metrics/<name>.tsv``)."""
    path = Path(live_dir) / "plots" / "metrics" / f"{name}.tsv"
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    leaf = name.rsplit("/", 1)[-1]
    return [(int(row["step"]), float(row[leaf])) for row in rows]


def metric_names(live_dir: Path) -> set[str]:
    root = Path(live_dir) / "plots" / "metrics"
    return {str(p.relative_to(root))[: -len(".tsv")] for p in root.rglob("*.tsv")}


def summary(live_dir: Path) -> dict[str, Any]:
    return json.loads((Path(live_dir) / "metrics.json").read_text())


def params(live_dir: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((Path(live_dir) / "params.yaml").read_text())
