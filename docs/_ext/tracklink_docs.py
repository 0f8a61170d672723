"""Sphinx directives that render documentation from tracklink's own declarations, so the docs cannot
drift from the code:

``tracklink-env-vars <name>``   the environment variables a tracker declares (name, default, meaning, secret)
``tracklink-events``            the hook contract: every event with its arguments and documentation
"""

from __future__ import annotations

import inspect
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


def env_table_rows(name: str) -> list[list[str]]:
    """Rows (name, default, read by, secret, meaning) of a tracker's declared variables."""
    from tracklink.registry import discover

    spec = discover()[name]
    obj = spec.load()
    if spec.load_error:
        raise RuntimeError(f"tracker {name!r} failed to load: {spec.load_error}")
    rows = []
    for var in getattr(obj, "env_vars", ()):
        default = "—" if var.default is None else f"`{var.default}`"
        accepted = f" Accepted: {', '.join(f'`{c}`' for c in var.choices)}." if var.choices else ""
        rows.append([f"`{var.name}`", default, var.read_by, "yes" if var.secret else "", var.help + accepted])
    return rows


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    def clean(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return lines


class _MarkdownDirective(SphinxDirective):
    def render(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.section() if False else nodes.container()
        self.state.nested_parse(StringList(lines, source=self.get_source_info()[0]), self.content_offset, container)
        return container.children


class EnvVarsDirective(_MarkdownDirective):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        rows = env_table_rows(self.arguments[0])
        if not rows:
            return self.render(["This tracker reads no environment variables of its own."])
        table = markdown_table(["Variable", "Default", "Read by", "Secret", "Meaning"], rows)
        return self.render(_rst_table(table))


def _rst_table(markdown: list[str]) -> list[str]:
    # nested_parse parses reStructuredText: build a list-table from the markdown rows
    header, _, *body = markdown
    def cells(line: str) -> list[str]:
        return [c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")]
    out = [".. list-table::", "   :header-rows: 1", ""]
    for row in [cells(header)] + [cells(b) for b in body]:
        out.append("   * - " + _rst_inline(row[0]))
        out += ["     - " + _rst_inline(c) for c in row[1:]]
    return out


def _rst_inline(text: str) -> str:
    return text.replace("`", "``") if text.count("`") % 2 == 0 else text


class EventsDirective(_MarkdownDirective):
    def run(self) -> list[nodes.Node]:
        from tracklink import hookspecs
        from tracklink.events import EVENTS, EXTRAS, RESETS

        lines = ["::", ""]
        doc = inspect.getdoc(hookspecs) or ""
        loop = doc.split("::", 1)[1].split("\n\n", 2)[1] if "::" in doc else ""
        lines += ["   " + line for line in inspect.cleandoc(loop).splitlines()]
        lines.append("")
        for event in EVENTS:
            spec = getattr(hookspecs, event)
            extras = ", ".join(f"``{e}``" for e in EXTRAS.get(event, ())) or "—"
            resets = ", ".join(f"``{r}``" for r in RESETS.get(event, ())) or "—"
            lines += [f".. rubric:: {event}", "", f"Extra arguments: {extras}. Flags cleared before plugins run: {resets}.", ""]
            lines += (inspect.getdoc(spec) or "").splitlines()
            lines.append("")
        return self.render(lines)


GENERATED = "environment.md"


def environment_page() -> str:
    """The page listing every built-in tracker's variables (committed as docs/environment.md; a test
    fails when it drifts from the declarations; regenerate with ``python docs/_ext/tracklink_docs.py``)."""
    from tracklink.registry import BUILTIN_ORDER

    lines = [
        "# Environment variables",
        "",
        "<!-- generated from the trackers' declarations by docs/_ext/tracklink_docs.py; do not edit -->",
        "",
        "Every variable the built-in trackers declare. *Read by* says whether the tracker reads it or its",
        "SDK does; secret ones are shown by `tracklink doctor` as set/unset only and are redacted",
        "wherever their value appears. tracklink's own variables are listed in [report_to](report_to.md).",
        "",
    ]
    for name in sorted(BUILTIN_ORDER):
        lines += [f"## {name}", ""]
        rows = env_table_rows(name)
        lines += markdown_table(["Variable", "Default", "Read by", "Secret", "Meaning"], rows) if rows else \
            ["This tracker reads no environment variables of its own."]
        lines.append("")
    return "\n".join(lines)


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("tracklink-env-vars", EnvVarsDirective)
    app.add_directive("tracklink-events", EventsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    from pathlib import Path

    target = Path(__file__).resolve().parent.parent / GENERATED
    target.write_text(environment_page())
    print(f"wrote {target}")
