"""Sphinx directives that render documentation from tracklink's own declarations, so the docs cannot
drift from the code:

``tracklink-env-vars <name>``   the environment variables a tracker declares (name, default, meaning, secret)
``tracklink-events``            the hook contract: every event with its arguments and documentation
``tracklink-media <name>``      what each media type becomes at a tracker (native, its fallback, or dropped)
"""

from __future__ import annotations

import inspect
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from tracklink_tables import env_table_rows, markdown_table, media_tracker_lines


class _MarkdownDirective(SphinxDirective):
    def render(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.container()
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


class MediaDirective(_MarkdownDirective):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        return self.render(_rst_table(media_tracker_lines(self.arguments[0])))


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


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("tracklink-env-vars", EnvVarsDirective)
    app.add_directive("tracklink-events", EventsDirective)
    app.add_directive("tracklink-media", MediaDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
