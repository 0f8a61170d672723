"""Read back what Trackio wrote to its local SQLite database (``<TRACKIO_DIR>/<project>.db``): the metric
rows of a run, its config and the project's alerts. The tables are Trackio's own (``metrics``, ``configs``,
``alerts``); the database path comes from Trackio, which derives the file name from the project name."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any


def database(project: str) -> Path:
    from trackio.sqlite_storage import SQLiteStorage

    return Path(SQLiteStorage.get_project_db_path(project))


def _query(project: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    path = database(project)
    assert path.is_file(), f"no Trackio database for project {project!r} at {path}"
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql, params))


def runs(project: str) -> list[tuple[str, str]]:
    """(run id, run name) of every run with a config, oldest first."""
    return [(r[0], r[1]) for r in _query(project, "SELECT run_id, run_name FROM configs ORDER BY id")]


def rows(project: str, run_id: str) -> list[tuple[int, dict[str, Any]]]:
    """(step, metrics) of each ``log`` call of a run, in the order written."""
    return [(int(step), json.loads(metrics))
            for step, metrics in _query(project, "SELECT step, metrics FROM metrics WHERE run_id = ? ORDER BY id",
                                        (run_id,))]


def series(project: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(step, metrics[key]) for step, metrics in rows(project, run_id) if key in metrics]


def config(project: str, run_id: str) -> dict[str, Any]:
    (raw,) = _query(project, "SELECT config FROM configs WHERE run_id = ?", (run_id,))[0]
    return json.loads(raw)


def alerts(project: str) -> list[dict[str, Any]]:
    names = ("run_id", "run_name", "title", "text", "level", "step")
    return [dict(zip(names, r)) for r in _query(project, f"SELECT {', '.join(names)} FROM alerts ORDER BY id")]
