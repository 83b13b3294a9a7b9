"""The documentation's generated parts are current without building them.

The ``uidprobe(1)`` man page is committed (docs/uidprobe.1) so that the sdist
ships it without Sphinx among the build requirements; .ci/run rebuilds it and
fails on any difference.  Here, without Sphinx: each of its COMMANDS
subsections must be exactly what ``--help`` prints today, so a parser change
that was not followed by a rebuild fails the ordinary test run."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from helpers import ROOT


def _help_texts() -> list[tuple[str, str]]:
    spec = importlib.util.spec_from_file_location("uidprobe_cli", ROOT / "docs" / "_ext" / "uidprobe_cli.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    texts: list[tuple[str, str]] = module.help_texts()
    return texts


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
    sections = man_help_sections(ROOT / "docs" / "uidprobe.1")
    texts = _help_texts()
    assert [prog for prog, _ in texts][:3] == ["uidprobe", "uidprobe probe", "uidprobe check"]
    for prog, text in texts:
        assert prog in sections, f"docs/uidprobe.1 has no section for {prog!r}: rebuild it (docs/development.md)"
        assert sections[prog].rstrip("\n") == text.rstrip("\n"), f"docs/uidprobe.1 is stale for {prog!r}"


def test_the_sdist_ships_the_docs_and_the_man_page() -> None:
    lines = (ROOT / "MANIFEST.in").read_text().splitlines()
    assert "graft docs" in lines and "prune docs/_build" in lines
    assert (ROOT / "docs" / "uidprobe.1").is_file()
