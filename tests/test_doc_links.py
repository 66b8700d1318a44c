"""Every docs/ page the product names exists: in field descriptions (and so in the CRDs and `kubectl explain`),
messages, the chart and the docs themselves. A user following a pointer must not land on nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMED = re.compile(r"\bdocs/[A-Za-z0-9_./-]+\.md\b")
SOURCES = ["operator", "crds", "charts", "deploy", "docs", "examples", "README.md"]


def named_pages() -> dict[str, set[str]]:
    """docs/*.md paths named anywhere in the shipped text, by the file naming them."""
    found: dict[str, set[str]] = {}
    for source in SOURCES:
        path = ROOT / source
        files = (
            [path]
            if path.is_file()
            else [p for p in path.rglob("*") if p.suffix in {".py", ".yaml", ".md", ".txt", ".tpl"}]
        )
        for file in files:
            for page in NAMED.findall(file.read_text(errors="replace")):
                found.setdefault(page, set()).add(str(file.relative_to(ROOT)))
    return found


def test_every_docs_page_the_product_names_exists() -> None:
    pages = named_pages()
    assert "docs/obsdump.md" in pages  # the scan still finds the pointers
    missing = {page: sorted(where) for page, where in pages.items() if not (ROOT / page).is_file()}
    assert missing == {}


def test_relative_links_between_the_docs_resolve() -> None:
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:\s]+\.md)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).resolve().is_file():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
