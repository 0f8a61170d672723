"""Tables rendered from tracklink's own declarations, without Sphinx: the environment-variable rows of
each tracker and the generated ``docs/environment.md``, and the matrix of media types x trackers in
``docs/media.md`` (between its ``media-matrix`` markers; ``tracklink plugins`` prints the same matrix).
The Sphinx directives in ``tracklink_docs`` and the docs drift tests both use these.

Regenerate both with ``python docs/_ext/tracklink_tables.py``.
"""

from __future__ import annotations

from typing import Any


def env_table_rows(name: str) -> list[list[str]]:
    """Rows (name, default, read by, secret, meaning) of a tracker's declared variables."""
    from tracklink.registry import discover

    spec = discover()[name]
    obj = spec.load()
    if spec.load_error:
        raise RuntimeError(f"tracker {name!r} failed to load: {spec.load_error}")
    return _rows(getattr(obj, "env_vars", ()))


def _rows(variables: Any) -> list[list[str]]:
    rows = []
    for var in variables:
        default = "—" if var.default is None else f"`{var.default}`"
        accepted = f" Accepted: {', '.join(f'`{c}`' for c in var.choices)}." if var.choices else ""
        kind = getattr(var, "kind", None)
        if kind:
            from tracklink.tracker import KINDS

            minimum = getattr(var, "minimum", None)
            accepted += f" Accepted: {KINDS[kind]}" + (f" >= {minimum:g}" if minimum is not None else "") + "."
        rows.append([f"`{var.name}`", default, var.read_by, "yes" if var.secret else "", var.help + accepted])
    return rows


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    def clean(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return lines


GENERATED = "environment.md"


def environment_page() -> str:
    """The page listing every built-in tracker's variables (committed as docs/environment.md; a test
    fails when it drifts from the declarations; regenerate with ``python docs/_ext/tracklink_tables.py``)."""
    from tracklink.registry import BUILTIN_ORDER

    lines = [
        "# Environment variables",
        "",
        "<!-- generated from the trackers' declarations by docs/_ext/tracklink_tables.py; do not edit -->",
        "",
        "Every variable the built-in trackers declare. *Read by* says whether the tracker reads it or its",
        "SDK does; secret ones are shown by `tracklink doctor` as set/unset only and are redacted",
        "wherever their value appears. tracklink's own variables are listed in [report_to](report_to.md); those of",
        "the run journal come first below.",
        "",
    ]
    from tracklink.journal import ENV_VARS

    lines += ["## tracklink's run journal", "",
              "Read by tracklink itself (see [the run journal](journal.md)); checked before training like the "
              "trackers' variables.", ""]
    lines += markdown_table(["Variable", "Default", "Read by", "Secret", "Meaning"], _rows(ENV_VARS))
    lines.append("")
    for name in sorted(BUILTIN_ORDER):
        lines += [f"## {name}", ""]
        rows = env_table_rows(name)
        lines += markdown_table(["Variable", "Default", "Read by", "Secret", "Meaning"], rows) if rows else \
            ["This tracker reads no environment variables of its own."]
        lines.append("")
    return "\n".join(lines)


MEDIA_PAGE = "media.md"
MEDIA_BEGIN = "<!-- media-matrix:begin (generated from the trackers' declarations by docs/_ext/tracklink_tables.py) -->"
MEDIA_END = "<!-- media-matrix:end -->"


def media_row(name: str) -> dict[str, str]:
    """What each media kind becomes at the built-in tracker ``name`` (``tracklink plugins``' matrix)."""
    from tracklink.cli import media_matrix
    from tracklink.registry import discover

    spec = discover()[name]
    obj = spec.load()
    if spec.load_error:
        raise RuntimeError(f"tracker {name!r} failed to load: {spec.load_error}")
    matrix = media_matrix(obj)
    assert matrix is not None
    return matrix


def _cell(result: str) -> str:
    return "**native**" if result == "native" else "—" if result == "dropped" else result


def media_matrix_lines() -> list[str]:
    """The matrix as a Markdown table: one row per built-in tracker, one column per kind."""
    from tracklink.media import KINDS
    from tracklink.registry import BUILTIN_ORDER

    rows = []
    for name in BUILTIN_ORDER:
        row = media_row(name)
        rows.append([f"[{name}](trackers/{name}.md)", *(_cell(row[kind]) for kind in KINDS)])
    return markdown_table(["tracker", *KINDS], rows)


def media_tracker_lines(name: str) -> list[str]:
    """One tracker's row of the matrix, as a two-column table (for its page)."""
    from tracklink.media import KINDS

    row = media_row(name)
    return markdown_table(["media value", "at this tracker"], [[f"`tracklink.{k.capitalize()}`", _cell(row[k])]
                                                                for k in KINDS])


def media_page(current: str) -> str:
    """``docs/media.md`` with its matrix regenerated between the markers."""
    head, rest = current.split(MEDIA_BEGIN, 1)
    _, tail = rest.split(MEDIA_END, 1)
    return head + MEDIA_BEGIN + "\n\n" + "\n".join(media_matrix_lines()) + "\n\n" + MEDIA_END + tail


if __name__ == "__main__":
    from pathlib import Path

    docs = Path(__file__).resolve().parent.parent
    target = docs / GENERATED
    target.write_text(environment_page())
    print(f"wrote {target}")
    page = docs / MEDIA_PAGE
    page.write_text(media_page(page.read_text()))
    print(f"wrote the media matrix in {page}")
