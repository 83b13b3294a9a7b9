"""Sphinx configuration for uidprobe's documentation.

Build (from the repository root, with the ``docs`` extra installed)::

    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

from uidprobe.names import VERSION  # noqa: E402  (the installed package documents itself)

project = "uidprobe"
author = "the uidprobe developers"
copyright = "the uidprobe developers"
version = release = VERSION

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
highlight_language = "none"
nitpicky = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"

html_theme = "alabaster"
html_title = f"uidprobe {VERSION}"
