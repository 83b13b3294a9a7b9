"""The documentation's generated parts are current without building them.

The ``uidprobe(1)`` man page is committed (docs/uidprobe.1) so that the sdist
ships it without Sphinx among the build requirements; .ci/run rebuilds it and
fails on any difference.  Here, without Sphinx: each of its COMMANDS
subsections must be exactly what ``--help`` prints today, so a parser change
that was not followed by a rebuild fails the ordinary test run."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

from helpers import ROOT
from uidprobe import cli

#: the Python whose argparse laid out the committed page (.ci/run's venv)
BUILT_WITH = (3, 11)


def _help_texts() -> list[tuple[str, str]]:
    spec = importlib.util.spec_from_file_location("uidprobe_cli", ROOT / "docs" / "_ext" / "uidprobe_cli.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    texts: list[tuple[str, str]] = module.help_texts()
    return texts


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {parser.prog: parser, **{p.prog: p for p in sub.choices.values()}}


def _words(text: str) -> str:
    return " ".join(text.split())


def _unroff(text: str) -> str:
    for escape, plain in (("\\-", "-"), ("\\(aq", "'"), ("\\(dq", '"'), ("\\e", "\\"), ("\\&", "")):
        text = text.replace(escape, plain)
    return text


def man_help_sections(page: Path) -> dict[str, str]:
    """``.SS`` title -> the text of the ``.EX`` block that follows it."""
    roff = page.read_text()
    return {
        _unroff(title): _unroff(body)
        for title, body in re.findall(r"^\.SS ([^\n]+)\n(?:\.[a-zA-Z][^\n]*\n)*?\.EX\n(.*?)\.EE\n", roff, re.M | re.S)
    }


def test_the_man_page_holds_what_help_prints_today() -> None:
    # Exactly, where this Python's argparse lays help out as the one that
    # built the page did (headings and usage lines differ between versions);
    # everywhere, every option, description and help sentence of the parser.
    sections = man_help_sections(ROOT / "docs" / "uidprobe.1")
    parsers = _parsers()
    assert list(parsers)[:3] == ["uidprobe", "uidprobe probe", "uidprobe check"]
    stale = "docs/uidprobe.1 is stale for {!r}: rebuild it (docs/development.md)"
    for prog, parser in parsers.items():
        assert prog in sections, stale.format(prog)
        page = _words(sections[prog])
        assert parser.description is not None and _words(parser.description) in page, stale.format(prog)
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            assert all(flag in page for flag in action.option_strings), stale.format(prog)
            if action.help and "%" not in action.help:
                assert _words(action.help) in page, stale.format(prog)
    if sys.version_info[:2] == BUILT_WITH:
        for prog, text in _help_texts():
            assert sections[prog].rstrip("\n") == text.rstrip("\n"), stale.format(prog)


def test_the_sdist_ships_the_docs_and_the_man_page() -> None:
    lines = (ROOT / "MANIFEST.in").read_text().splitlines()
    assert "include docs/*.md docs/conf.py docs/_ext/*.py docs/uidprobe.1" in lines
    assert (ROOT / "docs" / "uidprobe.1").is_file()
