"""Read back a ClearML offline session: ``<CLEARML_CACHE_DIR>/offline/<task id>/``.

``task.json`` holds the Task (``hyperparams.<section>.<name>.value`` as strings, ``configuration.<name>.value``
as HOCON text, ``name``, ``project_name``); ``metrics.jsonl`` holds one JSON *array* of events per line:
scalars are ``{"type": "training_stats_scalar", "metric": title, "variant": series, "iter": n, "value": v}``,
single values have metric ``Summary`` and the minimum iteration. A later event at the same
(metric, variant, iter) replaces an earlier one, as on a ClearML server.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SINGLE_VALUE_ITER = -(2**31)


@dataclass
class Session:
    folder: Path
    task: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def hyperparams(self) -> dict[str, dict[str, str]]:
        return {section: {name: p.get("value") for name, p in params.items()}
                for section, params in (self.task.get("hyperparams") or {}).items()}

    @property
    def configuration(self) -> dict[str, str]:
        return {name: c.get("value") for name, c in (self.task.get("configuration") or {}).items()}

    def scalars(self, title: str, series: str) -> list[tuple[int, float]]:
        points: dict[int, float] = {}
        for event in self.events:
            if (event.get("type") == "training_stats_scalar" and event.get("metric") == title
                    and event.get("variant") == series and event.get("iter") != SINGLE_VALUE_ITER):
                points[event["iter"]] = event["value"]
        return sorted(points.items())

    def titles(self) -> set[str]:
        return {e.get("metric") for e in self.events if e.get("type") == "training_stats_scalar"}

    @property
    def single_values(self) -> dict[str, float]:
        return {e["variant"]: e["value"] for e in self.events
                if e.get("type") == "training_stats_scalar" and e.get("iter") == SINGLE_VALUE_ITER}


def offline_root() -> Path:
    return Path(os.environ["CLEARML_CACHE_DIR"]) / "offline"


def read_session(task_id: str, root: Path | None = None) -> Session:
    folder = (root or offline_root()) / task_id
    task = json.loads((folder / "task.json").read_text())
    events: list[dict[str, Any]] = []
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            if line.strip():
                batch = json.loads(line)
                events += batch if isinstance(batch, list) else [batch]
    return Session(folder, task, events)
