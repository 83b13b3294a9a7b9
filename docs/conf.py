"""Sphinx configuration for uidprobe's documentation.

Build (from the repository root, with the ``docs`` extra installed)::

    sphinx-build -W --keep-going -b html docs docs/_build/html
    sphinx-build -W --keep-going -b man docs docs/_build/man   # uidprobe.1
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

extensions = ["myst_parser", "sphinx.ext.autodoc", "uidprobe_cli"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]
highlight_language = "none"
nitpicky = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"

# The uidprobe(1) man page is the command-line page; the committed copy,
# docs/uidprobe.1, ships in the sdist (.ci/run checks that it is current).
man_pages = [("cli", "uidprobe", "probe how seteuid, setreuid and setuid really behave here", [author], 1)]
man_show_urls = False
today = f"uidprobe {VERSION}"  # not a date: the committed page must rebuild byte for byte

html_theme = "alabaster"
html_title = f"uidprobe {VERSION}"
