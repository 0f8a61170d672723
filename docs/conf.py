"""Sphinx configuration: MyST markdown pages, API pages from docstrings, and tracklink's own directives
(docs/_ext/tracklink_docs.py, tables from tracklink_tables.py) that render tables from the code's declarations."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "tracklink"
author = "tracklink developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "tracklink_docs"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "examples/**"]
html_theme = "furo"
html_title = "tracklink"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
suppress_warnings = ["myst.xref_missing"]
