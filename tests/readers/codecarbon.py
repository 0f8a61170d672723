"""Read back CodeCarbon's ``emissions.csv`` (one row per ``stop()``)."""

from __future__ import annotations

import csv
from pathlib import Path


def rows(output_dir: Path, file_name: str = "emissions.csv") -> list[dict[str, str]]:
    path = Path(output_dir) / file_name
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))
