"""Media values in the run journal: written as files beside it, and read back for a replay.

A logged media value (:mod:`tracklink.media`) is too large for a journal row. The journal's writer thread
stores it in ``<journal file without .sqlite>.media/`` and the event's row keeps a small description of it
(``data["media"][key]``):

=============  =========================================================================================
kind           stored as
=============  =========================================================================================
``image``      ``<event id>-<key>.png`` (or ``.img``, an image logged encoded), and the caption
``figure``     the figure's rendered PNG, replayed as an image
``histogram``  its counts, edges and statistics, in the row itself (no file)
``table``      columns and rows in the row; image cells as PNG files
``text``       the text, in the row, with secret values masked
``file``       a hard link to the logged file's snapshot (a copy across file systems), under its name
=============  =========================================================================================

Each file is written under a temporary name and renamed before the row that names it is committed, so
a committed event never names a half-written file. Images and files cannot be redacted: they are stored as
logged. Everything here runs on the journal's writer thread (writing) or in ``tracklink sync`` and a tracker
catching up from the journal (reading), never on the training thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .media import Figure as MediaFigure
from .media import File as MediaFile
from .media import Histogram, Image, Media, MediaError, Table, Text, png_size, safe_name
from .redact import redact_text

logger = logging.getLogger("tracklink")

__all__ = ["media_folder", "read_media", "write_media"]


def media_folder(journal_path: str | os.PathLike[str]) -> Path:
    """Where the media files of the journal at ``journal_path`` are kept."""
    path = Path(journal_path)
    return path.with_name(path.stem + ".media")


def _write_bytes(folder: Path, name: str, data: bytes) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    temporary = folder / f".{name}.tmp"
    temporary.write_bytes(data)
    os.replace(temporary, target)
    return name


def _link_file(folder: Path, name: str, source: str) -> str:
    import shutil  # lazy: only when a File value is logged

    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.tmp"
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, temporary)
    os.replace(temporary, folder / name)
    return name


def _number_list(values: Any) -> list[float]:
    return [float(v) for v in values]


def _describe(value: Media, key: str, stem: str, folder: Path, secrets: Sequence[str]) -> dict[str, Any]:
    if isinstance(value, Image):
        caption = None if value.caption is None else redact_text(value.caption, secrets)
        data = value.data
        if isinstance(data, bytes) and png_size(data) is None:  # logged encoded (a JPEG file): kept as it is
            return {"kind": "image", "file": _write_bytes(folder, f"{stem}.img", data), "caption": caption}
        return {"kind": "image", "file": _write_bytes(folder, f"{stem}.png", value.png()), "caption": caption}
    if isinstance(value, MediaFigure):
        return {"kind": "image", "file": _write_bytes(folder, f"{stem}.png", value.to_image(key).png()),
                "caption": None, "figure": True}
    if isinstance(value, Histogram):
        counts, edges = value.histogram(key)
        return {"kind": "histogram", "counts": _number_list(counts), "edges": _number_list(edges),
                "stats": value.stats(key)}
    if isinstance(value, Table):
        rows: list[list[Any]] = []
        for r, row in enumerate(value.rows):
            cells: list[Any] = []
            for c, cell in enumerate(row):
                if isinstance(cell, Image):
                    cells.append({"image": _write_bytes(folder, f"{stem}-r{r}c{c}.png", cell.png())})
                elif isinstance(cell, str):
                    cells.append(redact_text(cell, secrets))
                else:
                    cells.append(cell)
            rows.append(cells)
        return {"kind": "table", "columns": [redact_text(c, secrets) for c in value.columns], "rows": rows}
    if isinstance(value, Text):
        return {"kind": "text", "text": redact_text(value.text, secrets)}
    if isinstance(value, MediaFile):
        name = os.path.basename(value.name or "file") or "file"
        return {"kind": "file", "file": _link_file(folder, f"{stem}-{name}", value.path), "name": value.name}
    raise MediaError(f"{type(value).__name__} values are not journaled")


def write_media(journal_path: Path, seq: int, values: Mapping[str, Media], secrets: Sequence[str],
                skipped: list[str]) -> dict[str, dict[str, Any]]:
    """Store event ``seq``'s media ``values`` beside the journal; their descriptions, by key. A value that was
    left out at ``log()`` (it has a ``problem``), or that cannot be stored, goes to ``skipped`` instead (a
    full disk is reported once by the caller through the exception it raises)."""
    folder = media_folder(journal_path)
    out: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if value.problem:
            skipped.append(key)
            continue
        stem = f"{seq}-{safe_name(key).replace('/', '__')}"
        try:
            out[key] = _describe(value, key, stem, folder, secrets)
        except OSError:
            raise
        except Exception as exc:  # the value could not be encoded: trackers report it live the same way
            logger.debug("tracklink: media value %r of event %d not journaled: %r", key, seq, exc)
            skipped.append(key)
    return out


def read_media(journal_path: Path, descriptions: Mapping[str, Any]) -> dict[str, Media]:
    """The media values an event's descriptions stand for, logged again (frozen snapshots). A file that is
    missing is reported with a warning naming it, and that value is left out."""
    folder = media_folder(journal_path)
    out: dict[str, Media] = {}
    for key, description in descriptions.items():
        try:
            out[key] = _restore(folder, description)
        except OSError as exc:
            logger.warning("tracklink: the journal's media file for %r cannot be read (%s); that value is left out "
                           "of the replay", key, exc)
    return out


def _restore(folder: Path, description: Mapping[str, Any]) -> Media:
    kind = description.get("kind")
    value: Media
    if kind == "image":
        value = Image.from_png((folder / description["file"]).read_bytes(), description.get("caption"))
    elif kind == "histogram":
        value = Histogram(counts=description["counts"], edges=description["edges"]).freeze()
        stats = description.get("stats")
        if stats and value._payload is not None:  # the statistics of the values it was binned from
            value._payload.cache["stats"] = dict(stats)
    elif kind == "table":
        rows = [[Image.from_png((folder / cell["image"]).read_bytes()) if isinstance(cell, dict) else cell
                 for cell in row] for row in description["rows"]]
        value = Table(columns=description["columns"], rows=rows).freeze()
    elif kind == "text":
        value = Text(description["text"]).freeze()
    elif kind == "file":
        path = folder / description["file"]
        if not path.is_file():
            raise FileNotFoundError(f"no file at {path}")
        value = MediaFile(path, description.get("name")).freeze()
    else:
        raise OSError(f"unknown media kind {kind!r}")
    if value.problem:
        raise OSError(value.problem)
    return value
