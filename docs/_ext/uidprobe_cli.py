"""The ``uidprobe-help`` directive: the command's reference, from the parser itself.

Each section is ``uidprobe`` or ``uidprobe COMMAND`` and holds exactly what
``--help`` prints (``build_parser()`` formatted 80 columns wide), so the
HTML pages and the ``uidprobe(1)`` man page cannot drift from the program.
``help_texts()`` needs no Sphinx: tests/test_docs_build.py compares the
committed man page with it.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

WIDTH = 80


def help_texts() -> list[tuple[str, str]]:
    """(prog, help text) for the top-level parser, then each subcommand in order."""
    from uidprobe.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)  # argparse wraps to $COLUMNS - 2
    try:
        parser = build_parser()
        texts = [(parser.prog, parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                texts += [(sub.prog, sub.format_help()) for sub in action.choices.values()]
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return texts


def setup(app: Any) -> dict[str, Any]:
    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective

    class UidprobeHelp(SphinxDirective):
        def run(self) -> list[nodes.Node]:
            out: list[nodes.Node] = []
            for prog, text in help_texts():
                section = nodes.section(ids=[nodes.make_id("help " + prog)], names=[nodes.fully_normalize_name(prog)])
                section += nodes.title(text=prog)
                section += nodes.literal_block(text, text, language="none")
                self.state.document.note_implicit_target(section)
                out.append(section)
            return out

    app.add_directive("uidprobe-help", UidprobeHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
